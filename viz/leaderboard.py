"""The leaderboard: policies ranked by their score ×100 (RULER's string_match_all with answers, else
needle_hit), each sparsity a column with its 95% interval over documents, per task where there are
several; Spearman's ρ against kvpress's published order; and why each failed answer failed
(`cause`: the split per policy × sparsity, and its stacked bars).

`KVPRESS` maps kvpress's press names to the lab's policy labels; `KVPRESS_AT_HALF` is kvpress's
README figure at compression ratio 0.5 (Llama-3.1-8B-Instruct, RULER 4k, read off the plot, ±2)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from core import intervals, schema
from viz.select import per_document

# kvpress press -> lab policy label (`python -m analyze --list-policies`)
KVPRESS = {
    "no press": "full",
    "KVzip": "kvzip",
    "AdaKV+ExpectedAttention": "adakv:base=expected_attention",
    "KeyDiff": "keydiff",
    "TOVA": "tova",
    "ExpectedAttention": "expected_attention",
    "SnapKV": "snapkv",
    "PyramidKV": "pyramidkv",
    "StreamingLLM": "streaming",
    "ObservedAttention": "h2o",
    "KNorm": "knorm",
    "Random": "random",
}
KVPRESS_AT_HALF = {
    "no press": 95.5,
    "KVzip": 95.0,
    "AdaKV+ExpectedAttention": 91.5,
    "KeyDiff": 85.0,
    "TOVA": 75.5,
    "ExpectedAttention": 74.5,
    "SnapKV": 67.0,
    "PyramidKV": 67.0,
    "StreamingLLM": 60.0,
    "ObservedAttention": 50.5,
    "KNorm": 50.0,
    "Random": 7.5,
}


def metric_of(results: xr.Dataset) -> str:
    return "answer" if "answer" in results else "needle_hit"


def scores(results: dict[str, xr.Dataset], setting: str) -> pd.DataFrame:
    """Long table: task, policy, sparsity, score, lo, hi, n (×100, over every document of the task:
    lengths × depths × samples, each one unit of the interval)."""
    rows = []
    for task, ds in results.items():
        one = schema.in_setting(ds, setting) if schema.SETTING in ds.dims else ds
        metric = metric_of(one)
        docs = per_document(one, metric, "all").where(one.done.astype(bool))
        flat = docs.stack(document=("length", "depth", "sample")).transpose(
            schema.POLICY, "sparsity", "document"
        )
        mean, lo, hi, n = intervals.interval(flat.values, 2, schema.KINDS[metric])
        for i, pol in enumerate(map(str, flat[schema.POLICY].values)):
            for j, sp in enumerate(map(float, flat.sparsity.values)):
                rows.append((task, pol, sp, 100 * mean[i, j], 100 * lo[i, j], 100 * hi[i, j], int(n[i, j])))
    return pd.DataFrame(rows, columns=["task", "policy", "sparsity", "score", "lo", "hi", "n"])


def table(results: dict[str, xr.Dataset], setting: str) -> pd.DataFrame:
    """Policies ranked by their mean score over sparsities and tasks (best first): per sparsity the
    score over every task's documents with its interval, then each task's score; `full` first."""
    long = scores(results, setting)
    pooled = scores({"all": _pooled(results)}, setting) if len(results) > 1 else long
    out = pd.DataFrame(index=pd.Index(sorted(set(long.policy)), name="policy"))
    for sp, part in pooled.groupby("sparsity"):
        part = part.set_index("policy")
        out[f"{sp:g}"] = part.score
        out[f"{sp:g} lo"] = part.lo
        out[f"{sp:g} hi"] = part.hi
    if len(results) > 1:
        for (task, sp), part in long.groupby(["task", "sparsity"]):
            out[f"{task} {sp:g}"] = part.set_index("policy").score
    out["mean"] = pooled.groupby("policy").score.mean()
    out["documents"] = pooled.groupby("policy").n.max()
    full = out["mean"].get("full", np.nan)
    out = out.sort_values("mean", ascending=False, kind="stable")
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    out.attrs["full"] = full
    return out.reset_index()


def _pooled(results: dict[str, xr.Dataset]) -> xr.Dataset:
    """Every task's per-document scores side by side along `length`, as one study (each task's
    lengths relabelled so that none collide)."""
    parts = []
    for i, ds in enumerate(results.values()):
        metric = metric_of(ds)
        keep = [metric, "done"]
        part = ds[keep] if metric == "answer" else ds[[schema.heads_name(metric), "done"]]
        parts.append(part.assign_coords(length=ds.length.values + i * 10**9))
    return xr.concat(parts, dim="length", join="outer")


def spearman_vs_kvpress(ranked: pd.DataFrame, sparsity: float = 0.5) -> tuple[float, int, pd.DataFrame]:
    """(ρ, the number of policies both rank, the side-by-side table) at `sparsity` against
    `KVPRESS_AT_HALF` (kvpress's compression ratio 0.5 = sparsity 0.5)."""
    col = f"{sparsity:g}"
    lab = ranked.set_index("policy")[col] if col in ranked else pd.Series(dtype=float)
    rows = [
        (press, label, KVPRESS_AT_HALF[press], lab.get(label, np.nan)) for press, label in KVPRESS.items()
    ]
    side = pd.DataFrame(rows, columns=["kvpress press", "lab policy", "kvpress score", "lab score"]).dropna()
    if len(side) < 3:
        return float("nan"), len(side), side
    rho = float(side["kvpress score"].rank().corr(side["lab score"].rank()))
    return rho, len(side), side


def cause_split(ds: xr.Dataset) -> pd.DataFrame:
    """Counts of failed answers by cause, per setting, policy and sparsity (with answers only)."""
    rows = []
    for setting in map(str, ds[schema.SETTING].values):
        one = schema.in_setting(ds, setting)
        for pol in map(str, one[schema.POLICY].values):
            for sp in map(float, one.sparsity.values):
                code = one.cause.sel({schema.POLICY: pol, "sparsity": sp}).values
                counts = {c: int((code == i).sum()) for i, c in enumerate(schema.CAUSES)}
                rows.append(
                    {
                        "setting": setting,
                        "policy": pol,
                        "sparsity": sp,
                        **counts,
                        "failed": sum(counts.values()),
                    }
                )
    return pd.DataFrame(rows)


def cause_bars(split: pd.DataFrame):
    """Stacked bars per (policy, sparsity) of each setting: how many failed answers had each cause."""
    import holoviews as hv

    long = split.melt(
        id_vars=["setting", "policy", "sparsity"],
        value_vars=list(schema.CAUSES),
        var_name="why",
        value_name="answers",
    )
    long["cell"] = long.policy + " " + long.sparsity.map(lambda s: f"{s:g}")
    plots = []
    for setting, part in long.groupby("setting", sort=False):
        plots.append(
            hv.Bars(part, ["cell", "why"], "answers")
            .opts(stacked=True, width=900, height=320, xrotation=60, tools=["hover"], legend_position="right")
            .relabel(f"why answers failed ({setting}): full cache answers, pruned cache does not")
        )
    return hv.Layout(plots).cols(1)


def html_table(ranked: pd.DataFrame) -> str:
    """The ranked table with each sparsity's score as 'mean [lo, hi]'."""
    show = ranked.copy()
    for col in [c for c in ranked.columns if f"{c} lo" in ranked.columns]:
        show[col] = [
            f"{m:.1f} [{lo:.1f}, {hi:.1f}]" if np.isfinite(m) else "n/a"
            for m, lo, hi in zip(ranked[col], ranked[f"{col} lo"], ranked[f"{col} hi"])
        ]
        show = show.drop(columns=[f"{col} lo", f"{col} hi"])
    return show.to_html(index=False, float_format="%.1f", na_rep="n/a")
