"""The jobs' small arrays assembled into the RESULTS dataset, then its summaries: head means,
intervals by metric kind, answer accuracy and failure causes."""

from __future__ import annotations

import numpy as np
import xarray as xr

from analyze import causes
from analyze.policies import budget
from analyze.spec import RETRIEVAL_HEADS, Spec
from core import intervals, schema
from core.runstore import StorePlan


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


# RESULTS attributes that differ between settings: kept per setting in `by_setting` (schema.in_setting)
PER_SETTING_ATTRS = (
    "calibration_best_rule",
    "full_answer_agrees_with_dump",
    "answer_peak_gpu_gb",
    "answer_task_seconds",
    "budget_warnings",
)


def fill_of(var: xr.DataArray):
    """What a policy not scored in a setting reads: the schema's fill value (-1 token ids, no cause,
    NaN metrics), 0 documents counted."""
    known = {**schema.RESULT_VARS, **schema.ANSWER_VARS}.get(str(var.name))
    if known is not None:
        return known.fill
    return 0 if np.issubdtype(var.dtype, np.integer) else np.nan
