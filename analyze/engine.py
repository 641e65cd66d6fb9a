"""Map every policy × sparsity over the document-layers of a RUN.zarr, on Dask, into RESULTS.

One task = one (length, depth, sample, layer): it reads that chunk of the store itself (so no
process ever holds a whole store), keeps masks only in memory, and returns small metric arrays.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from analyze import curvature, keptsets, metrics, policies
from analyze.errors import UsageError
from analyze.keptsets import doclayer_seed, iter_kept, policy_view
from analyze.policies import Policy, budget, label
from analyze.runstore import CorruptChunk, StorePlan, load_doclayer, plan_store
from dump import schema

RETRIEVAL_HEADS = 10


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
    answer_device: str = "cpu"  # where the answer pass runs (in the dump's dtype)
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
        tuple(policies.parse_method(m) for m in opt.methods),
        tuple(opt.sparsity),
        gqa=opt.gqa,
        seed=opt.seed,
        reference=opt.reference,
        skip_corrupt=opt.skip_corrupt,
        answers=opt.answers,
        answer_device=opt.answer_device,
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


def analyze_doclayer(path: str, length: int, d: int, s: int, layer: int, kv_heads: int, spec: Spec) -> dict:
    """All policies × sparsities on one document-layer -> small arrays (see `assemble`)."""
    seed = doclayer_seed(spec.seed, d, s, layer)
    x, needle = load_doclayer(path, length, d, s, layer, kv_heads, seed, spec.reads)
    final = x.final_row.astype(np.float64)
    nsp = len(spec.sparsities)
    out = np.zeros((len(schema.METRICS), len(spec.policies), nsp, x.heads))
    pairs = spec.pairs
    jac = np.zeros((len(pairs), nsp, x.heads))
    kept_by: dict[str, np.ndarray] = {}
    for j, i, kept in iter_kept(x, spec.policies, spec.sparsities, spec.gqa, spec.reference):
        out[:, i, j] = metrics.kept_metrics(kept, needle, final)
        kept_by[spec.labels[i]] = kept
        if pairs and i == len(spec.policies) - 1:  # every policy of this sparsity is done
            k = budget(spec.sparsities[j], x.n)
            for p, (a, ref) in enumerate(pairs):
                if ref not in kept_by:
                    kept_by[ref] = keptsets.kept(policies.default(ref), x, k, spec.gqa, spec.reference)
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
        "needle_mass": metrics.needle_mass(final, needle),
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
    """Per-task arrays -> the RESULTS Dataset (dims and names from `dump.schema`) with its summaries."""
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
        ids = np.full((nm, nsp, nl, D, S, schema.ANSWER_TOKENS), -1, dtype=np.int32)
        for (n, d, s), r in answers.items():
            li = plan.lengths.index(n)
            ans[:, :, li, d, s] = r["answer"]
            dig[:, :, li, d, s] = r["digits"]
            ids[:, :, li, d, s] = r["ids"]
        data["answer"] = (dims[:5], ans)
        data["answer_digits"] = (dims[:5], dig)
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
        mean, lo, hi = metrics.mean_ci(per_doc.values, axis=per_doc.dims.index("sample"))
        sdims = tuple(dim for dim in per_doc.dims if dim != "sample")
        for stat, values, meaning in (
            ("mean", mean, f"{name} averaged over heads of the subset, then samples"),
            ("lo", lo, "95% interval across samples (normal), lower"),
            ("hi", hi, "95% interval across samples (normal), upper"),
        ):
            ds[schema.summary_name(name, stat)] = (sdims, values.astype(np.float32))
            ds[schema.summary_name(name, stat)].attrs["long_name"] = meaning
    if "answer" in ds:
        summarize_answers(ds)
    return ds


def summarize_answers(ds: xr.Dataset) -> None:
    """answer / answer_digits means with 95% intervals across samples, accuracy among documents the
    full cache answers, and the calibration of every proxy rule against the answer."""
    from analyze import calibration

    for name in schema.ANSWER_METRICS:
        a = ds[name]
        mean, lo, hi = metrics.mean_ci(a.values, axis=a.dims.index("sample"))
        sdims = tuple(dim for dim in a.dims if dim != "sample")
        for stat, values in (("mean", mean), ("lo", lo), ("hi", hi)):
            ds[schema.summary_name(name, stat)] = (sdims, values.astype(np.float32))
    answered = ds.retrieved.astype(bool)
    ds["answer_given_full"] = ds.answer.where(answered).mean("sample").astype(np.float32)
    ds["answer_given_full"].attrs["long_name"] = (
        "answer accuracy among the documents the model answers with its full cache (`retrieved`)"
    )
    if "full" in ds[schema.POLICY].values:  # the answer pass's own full cache against the dump's answer
        full = ds.answer.sel({schema.POLICY: "full"}).isel(sparsity=0)
        done = ds.done.astype(bool)
        same = (full.astype(bool) == ds.retrieved.astype(bool)).where(done)
        ds.attrs["full_answer_agrees_with_dump"] = float(same.mean())
    table, attrs = calibration.calibrate(ds)
    ds["calibration"] = table
    ds["calibration"].attrs.update({k: v for k, v in attrs.items()})
    ds.attrs["calibration_best_rule"] = attrs.get("best_rule", "")


def tasks_of(plan: StorePlan) -> list[tuple[int, int, int, int]]:
    return [
        (n, int(d), int(s), layer)
        for n in plan.lengths
        for d, s in zip(*np.nonzero(plan.done[n]))
        for layer in range(plan.layers)
    ]


def run(path: str, spec: Spec, client, progress: bool = True, retrieval_heads: int = RETRIEVAL_HEADS):
    """Analyze a store with a Dask client; returns (Dataset, number of unfinished documents)."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    plan = plan_store(path)
    unfinished = plan.unfinished
    tasks = tasks_of(plan)
    if not tasks:
        raise UsageError(f"store {path!r} has no finished documents to analyze")

    def task(t):
        try:
            if t[0] == "answer":
                from analyze.answers import answer_document

                _, n, d, s = t
                return answer_document(
                    path,
                    n,
                    d,
                    s,
                    spec.policies,
                    spec.sparsities,
                    spec.gqa,
                    spec.seed,
                    plan.kv_heads,
                    plan.windows,
                    spec.answer_device,
                )
            if not schema.prunable(plan.windows[t[3]], t[0]):
                return skipped_doclayer(spec, plan.heads)
            return analyze_doclayer(path, t[0], t[1], t[2], t[3], plan.kv_heads, spec)
        except CorruptChunk as err:
            if not spec.skip_corrupt:
                raise
            return {"corrupt": str(err)}

    check_rows(spec, plan)
    jobs = list(tasks)
    if spec.answers:
        import torch

        from analyze.answers import check_model

        check_model(path)  # refused here, before any work, if the dump's model cannot be used
        if spec.answer_device != "cpu" and not torch.cuda.is_available():
            raise UsageError(f"--answer-device {spec.answer_device}: no CUDA device is visible here; use cpu")
        jobs += [
            ("answer", n, int(d), int(s)) for n in plan.lengths for d, s in zip(*np.nonzero(plan.done[n]))
        ]
    futures = client.map(task, jobs, pure=False)
    index = {f.key: t for f, t in zip(futures, jobs)}
    results, answers, corrupt = {}, {}, {}
    with tqdm(total=len(jobs), desc="analyze", unit="task", disable=not progress) as bar:
        for fut in as_completed(futures):
            t, r = index[fut.key], fut.result()
            doc = t[1:] if t[0] == "answer" else t[:3]
            if "corrupt" in r:
                corrupt.setdefault(doc, r["corrupt"])
            elif t[0] == "answer":
                answers[doc] = r
            else:
                results[t] = r
            bar.update(1)
    for n, d, s in corrupt:  # a document is scored whole or not at all
        plan.done[n][d, s] = False
        results = {t: r for t, r in results.items() if t[:3] != (n, d, s)}
        answers.pop((n, d, s), None)
    if corrupt and not results:
        raise UsageError(f"every finished document of {path!r} has a missing or corrupt chunk")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices for unfinished documents
        ds = assemble(plan, spec, results, retrieval_heads, answers if spec.answers else None)
    ds.attrs.update(
        {
            schema.KIND_ATTR: schema.RESULTS_KIND,
            "schema_version": schema.RESULTS_VERSION,
            "source_store": path,
            "model": str(plan.attrs.get("model", {}).get("name", "")),
            "gqa": spec.gqa,
            "seed": spec.seed,
            "budget_rule": "k = round((1 - sparsity) * N) keys per head of every prunable layer",
            "prunable_rule": "a sliding-window layer whose window W is shorter than the prompt is not pruned "
            "(its cache stays whole, its metrics are NaN, it is left out of head means and retrieval heads)",
            "policies": list(spec.labels),
            "unfinished_documents": unfinished,
            "skipped_corrupt": [corrupt[key] for key in sorted(corrupt)],
        }
    )
    return ds, unfinished
