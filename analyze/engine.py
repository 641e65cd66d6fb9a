"""Map every policy × sparsity over the document-layers of a RUN.zarr, on Dask, into RESULTS.

One task = one (length, depth, sample, layer): it reads that chunk of the store itself (so no
process ever holds a whole store), keeps masks only in memory, and returns small metric arrays.
"""

from __future__ import annotations

import dataclasses
import datetime
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import xarray as xr

from analyze import causes, curvature, keptsets, metrics, policies
from analyze.keptsets import iter_kept, policy_view
from analyze.options import AnalyzeOptions
from analyze.policies import Policy, budget, label
from core import intervals, schema, settings
from core.errors import UsageError
from core.provenance import source_path
from core.runstore import CorruptChunk, StorePlan, plan_store

RETRIEVAL_HEADS = AnalyzeOptions.retrieval_heads  # the option's default


class LayerJob(NamedTuple):
    """Score every policy and sparsity on one document-layer."""

    length: int
    depth: int
    sample: int
    layer: int

    @property
    def document(self) -> tuple[int, int, int]:
        return self[:3]


class AnswerJob(NamedTuple):
    """Decode the model's answer under every pruned cache of a few documents of one length, in step
    (`answers.answer_documents`)."""

    documents: tuple[tuple[int, int, int], ...]


# prompt tokens per answer task: documents of one length are decoded together up to this many (on the
# CPU a decoding step reads every weight once however many rows it serves: 4 documents of 2k decode
# in about the time of 2), and a longer document alone
ANSWER_TOKENS = 8192


def answer_jobs(docs: list[tuple[int, int, int]]) -> list[AnswerJob]:
    """The documents' answer tasks, longest documents first, each length's documents split evenly
    into tasks of at most ANSWER_TOKENS prompt tokens."""
    jobs = []
    for n in sorted({doc[0] for doc in docs}, reverse=True):
        mine = [doc for doc in docs if doc[0] == n]
        tasks = -(-len(mine) // max(1, ANSWER_TOKENS // n))
        jobs += [
            AnswerJob(tuple(mine[i] for i in part)) for part in np.array_split(np.arange(len(mine)), tasks)
        ]
    return jobs


@dataclass(frozen=True)
class Spec:
    """What to compute for every document-layer."""

    policies: tuple[Policy, ...]
    sparsities: tuple[float, ...]
    gqa: str = "kv"
    seed: int = 0
    reference: bool = False  # numpy references instead of numba kernels (tests, benchmark)
    skip_corrupt: bool = False  # a document with a missing or corrupt chunk is left out and listed
    answers: bool = False  # also decode the model's answer under every pruned cache (analyze/answers.py)
    answer_device: str = "cpu"  # where the answer pass runs (in the dump's dtype): cpu, cuda, cuda:N or auto
    setting: str = "aware"  # which query rows a policy may see (core.settings): the one being scored
    settings: tuple[str, ...] = ()  # every setting of the run (RESULTS' `setting` dimension); () = (setting,)
    labels: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "labels", tuple(label(m) for m in self.policies))

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """Agreement pairs (label, reference name), as each policy declares in `compare_with`."""
        return [(lab, ref) for lab, m in zip(self.labels, self.policies) for ref in m.compare_with]

    @property
    def curvature_variants(self) -> list[str]:
        """Policies with block scores, whose rank correlation with block mass is reported."""
        return [lab for lab, m in zip(self.labels, self.policies) if m.block_scores]

    @property
    def reads(self) -> tuple[str, ...]:
        return keptsets.reads_of(self.policies)


def spec_from(opt) -> Spec:
    """The Spec of an `analyze.options.AnalyzeOptions` (the CLI and a study config both build it here)."""
    return Spec(
        tuple(policies.parse_policy(m) for m in opt.policies),
        tuple(opt.sparsity),
        gqa=opt.gqa,
        seed=opt.seed,
        reference=opt.reference,
        skip_corrupt=opt.skip_corrupt,
        answers=opt.answers,
        answer_device=opt.answer_device,
        setting=opt.setting[0],
        settings=tuple(opt.setting),
    )


def check_rows(spec: Spec, plan: StorePlan) -> None:
    """A policy that needs more attention rows stored whole than the dump kept is refused up front."""
    for m, lab in zip(spec.policies, spec.labels):
        for n in plan.lengths:
            observed, stored = plan.rows[n]
            need = m.rows_needed(observed)
            if need > stored:
                raise UsageError(
                    f"{lab} needs the last {need} attention rows stored whole, but length {n} of "
                    f"{plan.path!r} stores {stored} of its W = {observed}: use window=0 (their stored sum), "
                    f"window={stored} or fewer, or re-dump with --window-rows {need}"
                )


def check_keys(spec: Spec, plan: StorePlan) -> None:
    """A key scorer on a store dumped without its keys is refused up front."""
    from core.runstore import PART_OF, _open

    stored = schema.store_parts(dict(plan.attrs.get("settings", {})).get("store", "stats"))
    for m, lab in zip(spec.policies, spec.labels):
        parts = sorted({PART_OF[v] for v in m.reads if v in PART_OF})
        for part in parts:
            if part not in stored:
                what = "keys from the keys themselves" if part == "keys" else "keys by KVzip's reconstruction"
                raise UsageError(
                    f"{lab} scores {what}, but {plan.path!r} was dumped without them: "
                    f"re-dump with --store stats,{part}"
                )
        if parts and plan.lengths:  # stores with keys from before the query moments existed
            g = _open(plan.path)[schema.group_name(plan.lengths[0])]
            missing = [v for v in PART_OF if v in m.reads and v not in g]
            if missing:
                raise UsageError(
                    f"{lab} reads {missing[0]}, which {plan.path!r} predates: "
                    f"re-dump it with --store stats,{PART_OF[missing[0]]}"
                )


def check_folds(spec: Spec, plan: StorePlan) -> None:
    """duo finds retrieval heads on the other calibration fold: both folds need finished documents."""
    from analyze.policies.duo import Duo, fold_of

    if not any(isinstance(m, Duo) for m in spec.policies):
        return
    folds = {fold_of(int(d), int(s)) for n in plan.lengths for d, s in zip(*np.nonzero(plan.done[n]))}
    if folds != {0, 1}:
        raise UsageError(
            f"duo finds its retrieval heads on the documents of the other calibration fold ((depth index + "
            f"sample) % 2), and {plan.path!r} has finished documents in fold {sorted(folds)} only: dump two "
            "depths or samples"
        )


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


# -- the whole store ---------------------------------------------------------------------------
def assemble(
    plan: StorePlan,
    spec: Spec,
    results: dict,
    retrieval_heads: int = RETRIEVAL_HEADS,
    answers: dict | None = None,
) -> xr.Dataset:
    """Per-task arrays -> the RESULTS Dataset (dims and names from `core.schema`) with its summaries."""
    L, H, S, D = plan.layers, plan.heads, plan.samples, len(plan.depths)
    nm, nsp, nl = len(spec.policies), len(spec.sparsities), len(plan.lengths)
    m = np.full((len(schema.METRICS), nm, nsp, nl, D, S, L, H), np.nan, dtype=np.float32)
    mass = np.full((nl, D, S, L, H), np.nan, dtype=np.float32)
    jac = np.full((len(spec.pairs), nsp, nl, D, S, L, H), np.nan, dtype=np.float32)
    corr = np.full((len(spec.curvature_variants), nl, D, S, L, H), np.nan, dtype=np.float32)
    for (n, d, s, layer), r in results.items():
        li = plan.lengths.index(n)
        m[:, :, :, li, d, s, layer] = r["metrics"]
        mass[li, d, s, layer] = r["needle_mass"]
        jac[:, :, li, d, s, layer] = r["jaccard"]
        corr[:, li, d, s, layer] = r["curvature"]
    dims = schema.RESULT_DIMS
    coords = {
        schema.POLICY: list(spec.labels),
        "sparsity": list(spec.sparsities),
        "length": plan.lengths,
        "depth": plan.depths,
        "sample": np.arange(S),
        "layer": np.arange(L),
        "head": np.arange(H),
        "pair": [f"{a}|{b}" for a, b in spec.pairs],
        "variant": list(spec.curvature_variants),
    }
    data = {name: (dims, m[i]) for i, name in enumerate(schema.METRICS)}
    data["needle_mass"] = (dims[2:], mass)
    data["jaccard"] = (("pair",) + dims[1:], jac)
    data["curvature_mass_spearman"] = (("variant",) + dims[2:], corr)
    data["budget"] = (
        ("sparsity", "length"),
        np.array([[budget(sp, n) for n in plan.lengths] for sp in spec.sparsities], dtype=np.int64),
    )
    data["done"] = (("length", "depth", "sample"), np.stack([plan.done[n] for n in plan.lengths]))
    data["retrieved"] = (("length", "depth", "sample"), np.stack([plan.retrieved[n] for n in plan.lengths]))
    if answers is not None:
        ans = np.full((nm, nsp, nl, D, S), np.nan, dtype=np.float32)
        dig = np.full((nm, nsp, nl, D, S), np.nan, dtype=np.float32)
        width = next(iter(answers.values()))["ids"].shape[-1] if answers else schema.ANSWER_TOKENS
        ids = np.full((nm, nsp, nl, D, S, width), -1, dtype=np.int32)
        distracted = np.zeros((nm, nsp, nl, D, S), dtype=bool)
        for (n, d, s), r in answers.items():
            li = plan.lengths.index(n)
            ans[:, :, li, d, s] = r["answer"]
            dig[:, :, li, d, s] = r["digits"]
            ids[:, :, li, d, s] = r["ids"]
            distracted[:, :, li, d, s] = r["distracted"]
        data["answer"] = (dims[:5], ans)
        data["answer_digits"] = (dims[:5], dig)
        data["answer_distracted"] = (dims[:5], distracted)
        data["answer_ids"] = ((*dims[:5], "answer_token"), ids)
    ds = xr.Dataset(data, coords=coords)
    for name, var in {**schema.RESULT_VARS, **schema.ANSWER_VARS}.items():
        if name in ds:
            ds[name].attrs["long_name"] = var.long_name
    return summarize(ds, retrieval_heads)


def summarize(ds: xr.Dataset, retrieval_heads: int = RETRIEVAL_HEADS) -> xr.Dataset:
    """Retrieval heads, means over head subsets, and mean ± 95% CI across samples."""
    score = ds.needle_mass.mean(["length", "depth", "sample"], skipna=True)
    flat = score.stack(lh=("layer", "head"))
    visible = np.isfinite(flat.values)  # heads of layers that are not pruned (a sliding window is NaN)
    r = min(retrieval_heads, int(visible.sum()))
    top = np.argsort(-np.where(visible, flat.values, -np.inf), kind="stable")[:r]
    mask = np.zeros(flat.size, dtype=bool)
    mask[top] = True
    ds["retrieval_head"] = (("layer", "head"), mask.reshape(score.shape))
    ds["retrieval_head"].attrs["rule"] = (
        f"the {r} (layer, head) pairs with the highest mean final-row attention on the passkey tokens "
        f"under full attention, averaged over all documents, among the heads of layers that are pruned"
    )
    masks = {"all": xr.ones_like(ds.retrieval_head), "retrieval": ds.retrieval_head}
    subsets = {name: masks[name] for name in schema.SUBSETS}
    for name in schema.HEAD_METRICS:
        per_doc = xr.concat(
            [ds[name].where(sel).mean(["layer", "head"]) for sel in subsets.values()],
            dim=xr.DataArray(list(subsets), dims=schema.SUBSET_DIM, name=schema.SUBSET_DIM),
        )
        ds[schema.heads_name(name)] = per_doc.astype(np.float32)
        put_summary(ds, name, per_doc, f"{name} averaged over heads of the subset, then samples")
    if "answer" in ds:
        summarize_answers(ds)
    return ds


def put_summary(ds: xr.Dataset, name: str, per_doc: xr.DataArray, meaning: str) -> None:
    """`{name}_mean/_lo/_hi/_n` across samples of per_doc, the interval by the metric's kind."""
    kind = schema.KINDS[name]
    mean, lo, hi, n = intervals.interval(per_doc.values, per_doc.dims.index("sample"), kind)
    sdims = tuple(dim for dim in per_doc.dims if dim != "sample")
    rule = intervals.rule_of(kind)
    for stat, values, text in (
        ("mean", mean, meaning),
        ("lo", lo, f"95% interval across samples, lower: {rule}"),
        ("hi", hi, f"95% interval across samples, upper: {rule}"),
        ("n", n, "documents the mean counts"),
    ):
        ds[schema.summary_name(name, stat)] = (sdims, values.astype(schema.summary_dtype(stat)))
        ds[schema.summary_name(name, stat)].attrs["long_name"] = text
        if stat in ("lo", "hi") and kind != "real":
            ds[schema.summary_name(name, stat)].attrs["range"] = list(schema.RANGES[kind])


def summarize_answers(ds: xr.Dataset) -> None:
    """answer / answer_digits means with 95% intervals across samples, accuracy among documents the
    full cache answers, and the calibration of every proxy rule against the answer."""
    from analyze import calibration

    for name in schema.ANSWER_METRICS:
        put_summary(ds, name, ds[name], f"{name} averaged over samples")
    answered = ds.retrieved.astype(bool)
    ds["cause"] = causes.of_results(ds)
    ds["cause"].attrs.update(causes.attrs())
    ds["answer_given_full"] = ds.answer.where(answered).mean("sample").astype(np.float32)
    ds["answer_given_full"].attrs["long_name"] = (
        "answer accuracy among the documents the model answers with its full cache (`retrieved`)"
    )
    if "full" in ds[schema.POLICY].values:  # the answer pass's own full cache against the dump's answer
        full = ds.answer.sel({schema.POLICY: "full"}).isel(sparsity=0)
        done = ds.done.astype(bool)
        same = ((full == 1.0) == ds.retrieved.astype(bool)).where(done)  # every value given, as `retrieved`
        ds.attrs["full_answer_agrees_with_dump"] = float(same.mean())
    table, attrs = calibration.calibrate(ds)
    ds["calibration"] = table
    ds["calibration"].attrs.update({k: v for k, v in attrs.items()})
    ds.attrs["calibration_best_rule"] = attrs.get("best_rule", "")


def documents_of(plan: StorePlan) -> list[tuple[int, int, int]]:
    return [(n, int(d), int(s)) for n in plan.lengths for d, s in zip(*np.nonzero(plan.done[n]))]


def jobs_of(plan: StorePlan, spec: Spec) -> list[LayerJob | AnswerJob]:
    """With --answers the answer tasks first (`answer_jobs`), longest documents first (the longest
    tasks: started first, they overlap the many short ones and leave no long tail), then one LayerJob
    per finished document-layer."""
    docs = documents_of(plan)
    jobs: list = answer_jobs(docs) if spec.answers else []
    return jobs + [LayerJob(*doc, layer) for doc in docs for layer in range(plan.layers)]


def check_blocks(spec: Spec, plan: StorePlan) -> None:
    """A block policy's block must be a multiple of every stored block size."""
    for m in spec.policies:
        for stored in sorted(set(plan.blocks.values())):
            if m.block and m.block % stored:
                raise UsageError(
                    f"{m.name}:block={m.block} must be a multiple of the stored block size {stored}"
                )


def check_budgets(spec: Spec, plan: StorePlan) -> list[str]:
    """A sparsity that leaves 0 keys per head at some length is refused; a budget below a policy's own
    minimum (`Policy.minimum_keys`) is returned as a warning (printed, and recorded in RESULTS)."""
    warnings_ = []
    for sp in spec.sparsities:
        for n in plan.lengths:
            k = budget(sp, n)
            if k == 0:
                raise UsageError(
                    f"--sparsity {sp:g} keeps round((1 - {sp:g}) x {n}) = 0 keys per head at length {n}: "
                    f"every policy would keep nothing; use sparsities below {1 - 0.5 / n:.6g} at this length"
                )
            for m, lab in zip(spec.policies, spec.labels):
                need = m.minimum_keys(plan.rows[n][0])
                if m.budget_for(k, n) < need:
                    warnings_.append(
                        f"{lab} at sparsity {sp:g}, length {n}: a budget of {k} keys is below its minimum {need}"
                    )
    return warnings_


def check_setting(spec: Spec, plan: StorePlan | None = None) -> None:
    """A policy that reads what its setting hides is refused up front (reading it raises anyway); the
    agnostic setting needs a store with the context's own statistics (RUN schema 2.3)."""
    from core.runstore import has_context

    for name in setting_names(spec):
        if settings.get(name).context_only and plan is not None and not has_context(plan.path):
            raise UsageError(
                f"store {plan.path!r} has no context-only statistics (dumped before RUN schema 2.3): the "
                f"{name} setting needs them; re-dump it with `python -m dump` into a new --out"
            )
        if not defined_in(spec.policies, name):
            raise UsageError(
                f"none of the policies {', '.join(spec.labels)} can be scored in the {name} setting"
            )
        hidden = set(settings.get(name).hides)
        for m in defined_in(spec.policies, name):
            seen = hidden & set(m.reads)
            if seen:
                raise UsageError(
                    f"{policies.label(m)} reads {', '.join(sorted(seen))}, which the {name} setting hides: "
                    f"choose policies that do not read it, or another --setting"
                )


def preflight(path: str, spec: Spec, plan: StorePlan) -> Spec:
    """Every check of a run before any work, for every caller of `run` (the CLI, a study, a script):
    blocks, stored rows, the setting, and for --answers the model and the device. Returns the spec
    with its answer device resolved."""
    from core.outputs import check_not_being_written

    check_not_being_written(path)
    check_blocks(spec, plan)
    check_rows(spec, plan)
    check_keys(spec, plan)
    check_folds(spec, plan)
    check_budgets(spec, plan)
    check_setting(spec, plan)
    if not documents_of(plan):
        raise UsageError(f"store {path!r} has no finished documents to analyze")
    if spec.answers:
        from analyze.answers import check_filler, check_model
        from core.lm.models import resolve_device

        check_model(path)  # refused here, before any work, if the dump's model cannot be used
        check_filler(dict(plan.attrs.get("settings", {})), path)  # the documents rebuild from it
        spec = dataclasses.replace(spec, answer_device=resolve_device(spec.answer_device, "--answer-device"))
    return spec


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


def provenance(path: str, spec: Spec, retrieval_heads: int = RETRIEVAL_HEADS) -> str:
    """What RESULTS are made from (JSON, in their `provenance` attribute): the RUN store's identity
    (`core.provenance.run_identity`: its documents' state included) and every analysis setting that
    changes a number. The pipeline reruns analyze when it differs; viz checks `--store` against it."""
    import json

    from core.provenance import run_identity

    analysis = {
        "policies": list(spec.labels),
        "sparsities": list(spec.sparsities),
        "gqa": spec.gqa,
        "seed": spec.seed,
        "setting": list(setting_names(spec)),
        "answers": spec.answers,
        "retrieval_heads": retrieval_heads,
    }
    return json.dumps({"run": run_identity(path), "analysis": analysis}, sort_keys=True)


# RESULTS attributes that differ between settings: kept per setting in `by_setting` (schema.in_setting)
PER_SETTING_ATTRS = (
    "calibration_best_rule",
    "full_answer_agrees_with_dump",
    "answer_peak_gpu_gb",
    "budget_warnings",
)


def defined_in(pols, setting: str) -> tuple:
    """The policies that can be scored in `setting`."""
    alone = settings.get(setting).context_only
    return tuple(p for p in pols if not (alone and p.reads_answer_row))


def fill_of(var: xr.DataArray):
    """What a policy not scored in a setting reads: the schema's fill value (-1 token ids, no cause,
    NaN metrics), 0 documents counted."""
    known = {**schema.RESULT_VARS, **schema.ANSWER_VARS}.get(str(var.name))
    if known is not None:
        return known.fill
    return 0 if np.issubdtype(var.dtype, np.integer) else np.nan


def setting_names(spec: Spec) -> tuple[str, ...]:
    return spec.settings or (spec.setting,)


def run(path: str, spec: Spec, client, progress: bool = True, retrieval_heads: int = RETRIEVAL_HEADS):
    """Analyze a store with a Dask client in every setting of `spec`; returns (Dataset with a
    `setting` dimension, number of unfinished documents). A policy that reads the answer position's
    row (`Policy.reads_answer_row`: the oracle) is NaN in a setting whose policies see the context
    alone."""
    import pandas as pd

    names = setting_names(spec)
    spec = preflight(path, spec, plan_store(path))  # every setting checked before any work
    heads = plan_store(path)
    if retrieval_heads > heads.layers * heads.heads:
        raise UsageError(
            f"--retrieval-heads {retrieval_heads} is more than the model's {heads.layers * heads.heads} heads "
            f"({heads.layers} layers x {heads.heads}): give at most {heads.layers * heads.heads}"
        )
    made_from = provenance(path, spec, retrieval_heads)  # before any work: what the results will be of
    parts, by_setting, unfinished = [], {}, 0
    for name in names:
        sub = dataclasses.replace(
            spec, setting=name, settings=(name,), policies=defined_in(spec.policies, name)
        )
        ds, unfinished = _run_setting(path, sub, client, progress, retrieval_heads)
        ds = ds.reindex(
            {
                schema.POLICY: list(spec.labels),
                "pair": [f"{a}|{b}" for a, b in spec.pairs],
                "variant": spec.curvature_variants,
            },
            fill_value={v: fill_of(ds[v]) for v in ds.data_vars},
        )
        by_setting[name] = {k: ds.attrs.pop(k) for k in PER_SETTING_ATTRS if k in ds.attrs}
        if "calibration" in ds:
            by_setting[name]["calibration_attrs"] = dict(ds.calibration.attrs)
        parts.append(ds)
    varying = [v for v in parts[0].data_vars if v not in schema.SETTING_FREE]
    out = xr.concat(
        parts,
        dim=pd.Index(list(names), name=schema.SETTING),
        data_vars=varying,
        coords="minimal",
        compat="override",
        combine_attrs="override",
    )
    for v in schema.SETTING_FREE:  # keep their attributes (the retrieval-head rule)
        if v in parts[0]:
            out[v] = parts[0][v]
    out.attrs.pop("setting", None)
    out.attrs.update(
        {
            "settings": list(names),
            "by_setting": by_setting,
            "provenance": made_from,
            "budget_warnings": sorted({w for b in by_setting.values() for w in b.get("budget_warnings", [])}),
            "budget_rule": "k = round((1 - sparsity) * N) keys per head of every prunable layer (aware); agnostic: "
            "k = round((1 - sparsity) * C) of the C context keys, the question's tokens kept on top",
        }
    )
    return out, unfinished


def _run_setting(
    path: str, spec: Spec, client, progress: bool = True, retrieval_heads: int = RETRIEVAL_HEADS
):
    """Analyze a store with a Dask client in one setting (`spec.setting`), its spec checked by `run`."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    plan = plan_store(path)  # its own: a corrupt document is marked unfinished in it
    unfinished = plan.unfinished
    jobs = jobs_of(plan, spec)
    futures = client.map(
        run_job, [path] * len(jobs), [plan] * len(jobs), [spec] * len(jobs), jobs, pure=False
    )
    index = {f.key: job for f, job in zip(futures, jobs)}
    results, answers, corrupt = {}, {}, {}
    with tqdm(total=len(jobs), desc="analyze", unit="task", disable=not progress) as bar:
        for fut in as_completed(futures):
            job, r = index[fut.key], fut.result()
            if isinstance(job, AnswerJob):
                for doc, a in r["by_document"].items():
                    if "corrupt" in a:
                        corrupt.setdefault(doc, a["corrupt"])
                    else:
                        answers[doc] = a
            elif "corrupt" in r:
                corrupt.setdefault(job.document, r["corrupt"])
            else:
                results[tuple(job)] = r
            bar.update(1)
    for doc in corrupt:  # a document is scored whole or not at all
        n, d, s = doc
        plan.done[n][d, s] = False
        results = {t: r for t, r in results.items() if t[:3] != doc}
        answers.pop(doc, None)
    if corrupt and not results:
        raise UsageError(f"every finished document of {path!r} has a missing or corrupt chunk")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices for unfinished documents
        ds = assemble(plan, spec, results, retrieval_heads, answers if spec.answers else None)
    ds.attrs.update(
        {
            schema.KIND_ATTR: schema.RESULTS_KIND,
            "schema_version": schema.RESULTS_VERSION,
            "source_store": source_path(path),
            "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
            "model": str(plan.attrs.get("model", {}).get("name", "")),
            "gqa": spec.gqa,
            "seed": spec.seed,
            "setting": spec.setting,
            "budget_rule": "k = round((1 - sparsity) * N) keys per head of every prunable layer",
            "prunable_rule": "a sliding-window layer whose window W is shorter than the prompt is not pruned "
            "(its cache stays whole, its metrics are NaN, it is left out of head means and retrieval heads)",
            "policies": list(spec.labels),
            "unfinished_documents": unfinished,
            "skipped_corrupt": [corrupt[key] for key in sorted(corrupt)],
            "budget_warnings": check_budgets(spec, plan),
        }
    )
    peaks = [r["peak_gpu_bytes"] for r in answers.values() if "peak_gpu_bytes" in r]
    if peaks:  # the largest GPU memory one answer task held (its worker's model included)
        ds.attrs["answer_peak_gpu_gb"] = round(max(peaks) / 1e9, 3)
    return ds, unfinished
