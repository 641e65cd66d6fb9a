"""Scoring one job on a worker: every policy and sparsity on one document-layer (kept sets,
metrics, agreement, curvature), or the answers of a few documents."""

from __future__ import annotations

import numpy as np

from analyze import curvature, keptsets, metrics, policies
from analyze.jobs import AnswerJob, LayerJob
from analyze.keptsets import iter_kept, policy_view
from analyze.policies import budget
from analyze.spec import Spec
from core import runstore, schema, settings
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


def analyze_doclayer(
    path: str,
    plan: StorePlan,
    job: LayerJob,
    spec: Spec,
    doc=None,
    document: tuple | None = None,
    kept_into: np.ndarray | None = None,
) -> dict:
    """All policies × sparsities on one document-layer -> small arrays (see `assemble`). `doc` and
    `document`: the document's allocation view (`keptsets.document_of`) and opened group
    (`runstore.open_document`), shared by its layers; `kept_into` (policy, sparsity, head, key) receives
    the kept sets the metrics were scored on."""
    length, d, s, layer = job
    kv_heads = plan.kv_heads
    x, masks = keptsets.load_layer(
        path, length, d, s, layer, kv_heads, spec.seed, spec.reads, spec.setting, document
    )
    if doc is None:
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
        if kept_into is not None:
            kept_into[i, j] = kept
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


def analyze_document(path: str, plan: StorePlan, spec: Spec, key: tuple) -> tuple[dict, np.ndarray]:
    """Every layer of one document (n, d, s): ({LayerJob: its arrays}, the kept sets (policy,
    sparsity, layer, head, key) they were scored on). The answer pass decodes under these same
    masks, so that a document's kept sets are chosen once for its metrics and its answers."""
    n, d, s = key
    document = runstore.open_document(path, n, d, s)  # read once for every layer and allocation
    load = keptsets.loader(path, n, d, s, plan.kv_heads, spec.seed, spec.reads, spec.setting, document)
    doc = keptsets.document_of(plan, n, load, (d, s))  # one allocation view for every layer
    kept = np.zeros((len(spec.policies), len(spec.sparsities), plan.layers, plan.heads, n), dtype=bool)
    layers = {}
    for layer in range(plan.layers):
        job = LayerJob(n, d, s, layer)
        if layer in doc.prunable:
            layers[job] = analyze_doclayer(path, plan, job, spec, doc, document, kept[:, :, layer])
        else:
            layers[job] = skipped_doclayer(spec, plan.heads)
    return layers, kept


def run_job(path: str, plan: StorePlan, spec: Spec, job: LayerJob | AnswerJob) -> dict:
    """One job on a worker: the arrays `assemble` takes, or {"corrupt": why} under --skip-corrupt.
    An answer job also scores every layer of its documents ("layers")."""
    try:
        if isinstance(job, AnswerJob):
            seconds: dict = {}
            answers, layers = answer_job(path, plan, spec, job.documents, job.layers, seconds)
            return {"by_document": answers, "layers": layers, "seconds": seconds}
        if not schema.prunable(plan.windows[job.layer], job.length):
            return skipped_doclayer(spec, plan.heads)
        return analyze_doclayer(path, plan, job, spec)
    except CorruptChunk as err:
        if not spec.skip_corrupt:
            raise
        return {"corrupt": str(err)}


def answer_job(
    path: str, plan: StorePlan, spec: Spec, docs, layers: bool = False, seconds: dict | None = None
) -> tuple[dict, dict]:
    """({document: its answers, or {"corrupt": why} under --skip-corrupt}, {LayerJob: its arrays}):
    with `layers`, every layer of the documents scored first (`analyze_document`); then the documents
    decoded in step under those kept sets (else under kept sets chosen here); one by one when one of
    them has a missing or corrupt chunk. `seconds` receives the wall time of each part ("layers":
    scoring the layers, "answers": the kept sets left to choose, the prefill and the decode)."""
    import time

    from analyze.answers import answer_documents

    seconds = {} if seconds is None else seconds
    try:
        scored, kept = {}, {}
        t = time.perf_counter()
        for doc in docs if layers else ():
            got, kept[doc] = analyze_document(path, plan, spec, doc)
            scored.update(got)
        seconds["layers"] = seconds.get("layers", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        out = answer_documents(path, plan, list(docs), spec, kept or None)
        seconds["answers"] = seconds.get("answers", 0.0) + time.perf_counter() - t
        return out, scored
    except CorruptChunk as err:
        if not spec.skip_corrupt:
            raise
        if len(docs) == 1:
            return {docs[0]: {"corrupt": str(err)}}, {}
    out, scored = {}, {}
    for doc in docs:
        got, more = answer_job(path, plan, spec, [doc], layers, seconds)
        out.update(got)
        scored.update(more)
    return out, scored
