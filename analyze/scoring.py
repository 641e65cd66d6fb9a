"""Scoring one job on a worker: every policy and sparsity on one document-layer (kept sets,
metrics, agreement, curvature), or the answers of a few documents."""

from __future__ import annotations

import numpy as np

from analyze import curvature, keptsets, metrics, policies
from analyze.jobs import AnswerJob, LayerJob
from analyze.keptsets import iter_kept, policy_view
from analyze.policies import budget
from analyze.spec import Spec
from core import schema, settings
from core.runstore import CorruptChunk, StorePlan


def skipped_doclayer(spec: Spec, heads: int) -> dict:
    """A layer that is not pruned (a sliding window shorter than the prompt): every metric NaN, so it
    is left out of head means and can never be a retrieval head."""
    nsp = len(spec.sparsities)
    return {
        "metrics": np.full((len(schema.METRICS), len(spec.policies), nsp, heads), np.nan),
        "needle_mass": np.full(heads, np.nan),
        "jaccard": np.full((len(spec.pairs), nsp, heads), np.nan),
        "curvature": np.full((len(spec.curvature_variants), heads), np.nan),
    }


def analyze_doclayer(path: str, plan: StorePlan, job: LayerJob, spec: Spec) -> dict:
    """All policies × sparsities on one document-layer -> small arrays (see `assemble`)."""
    length, d, s, layer = job
    kv_heads = plan.kv_heads
    x, masks = keptsets.load_layer(path, length, d, s, layer, kv_heads, spec.seed, spec.reads, spec.setting)
    load = keptsets.loader(path, length, d, s, kv_heads, spec.seed, spec.reads, spec.setting)
    doc = keptsets.document_of(plan, length, load, (d, s))
    final = masks["answer_row"].astype(np.float64)  # the answer position, whatever the policy saw
    nsp = len(spec.sparsities)
    out = np.zeros((len(schema.METRICS), len(spec.policies), nsp, x.heads))
    pairs = spec.pairs
    jac = np.zeros((len(pairs), nsp, x.heads))
    kept_by: dict[str, np.ndarray] = {}
    shown = settings.get(spec.setting)
    for j, i, kept in iter_kept(
        x, spec.policies, spec.sparsities, spec.gqa, spec.reference, doc, layer, spec.setting
    ):
        out[:, i, j] = metrics.kept_metrics(kept, masks, final)
        kept_by[spec.labels[i]] = kept
        if pairs and i == len(spec.policies) - 1:  # every policy of this sparsity is done
            k = budget(spec.sparsities[j], x.n)
            for p, (a, ref) in enumerate(pairs):
                if ref not in kept_by:
                    kept_by[ref] = keptsets.kept(
                        policies.default(ref), x, k, spec.gqa, spec.reference, setting=shown
                    )
                jac[p, j] = metrics.jaccard(kept_by[a], kept_by[ref])
            kept_by = {}
    corr = np.full((len(spec.curvature_variants), x.heads), np.nan)
    for v, lab in enumerate(spec.curvature_variants):
        policy = spec.policies[spec.labels.index(lab)]
        xv = policy_view(policy, x)
        scores = policy.scores(xv)  # (head, kblock)
        if policy.keeps_lowest:
            scores = -scores
        mass = xv.blocks[:, -1, :]
        corr[v] = [curvature.spearman(scores[h], mass[h]) for h in range(x.heads)]
    return {
        "metrics": out,
        "needle_mass": metrics.needle_mass(final, masks),
        "jaccard": jac,
        "curvature": corr,
    }


def run_job(path: str, plan: StorePlan, spec: Spec, job: LayerJob | AnswerJob) -> dict:
    """One job on a worker: the arrays `assemble` takes, or {"corrupt": why} under --skip-corrupt."""
    try:
        if isinstance(job, AnswerJob):
            return {"by_document": answer_job(path, plan, spec, job.documents)}
        if not schema.prunable(plan.windows[job.layer], job.length):
            return skipped_doclayer(spec, plan.heads)
        return analyze_doclayer(path, plan, job, spec)
    except CorruptChunk as err:
        if not spec.skip_corrupt:
            raise
        return {"corrupt": str(err)}


def answer_job(path: str, plan: StorePlan, spec: Spec, docs) -> dict:
    """{document: its answers, or {"corrupt": why} under --skip-corrupt}: the documents decoded in
    step, or one by one when one of them has a missing or corrupt chunk."""
    from analyze.answers import answer_documents

    try:
        return answer_documents(path, plan, list(docs), spec)
    except CorruptChunk as err:
        if not spec.skip_corrupt:
            raise
        if len(docs) == 1:
            return {docs[0]: {"corrupt": str(err)}}
    out = {}
    for doc in docs:
        out.update(answer_job(path, plan, spec, [doc]))
    return out
