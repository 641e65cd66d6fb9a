"""Several tasks side by side: one RESULTS.zarr per task (a task x setting sweep).

`page` writes one self-contained HTML page of heatmaps with a task selector and a setting selector;
`answer_table` is the answer accuracy per policy, one column per (task, setting), with the documents
per column, the full cache's own accuracy and each column's policy ranking.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import xarray as xr

from core import outputs, schema

CEILINGS = ("full", "oracle")  # left out of a ranking: the reference and the ceiling


def page(results: dict[str, xr.Dataset], out: str | Path) -> Path:
    """The heatmap page at `out`, written whole, then renamed (never a half page there); `out` is
    checked first by `core.outputs.check_file`."""
    import holoviews as hv

    from viz import heatmaps
    from viz.report import save_bokeh

    hv.extension("bokeh", logo=False)
    with outputs.file_output(out) as tmp:
        save_bokeh(heatmaps.by_task(results), tmp, "NIAH heatmaps by task")
    return Path(out)


def answer_table(results: dict[str, xr.Dataset], sparsity: float, metric: str = "answer") -> pd.DataFrame:
    """Policies x "TASK SETTING" columns: the mean of `metric` over the documents at `sparsity`. A
    per-head proxy is read as its mean over the retrieval heads. `.attrs["documents"]` holds each
    column's (documents, full-cache accuracy)."""
    cols, docs = {}, {}
    for task, ds in results.items():
        if not (abs(ds.sparsity.values - sparsity) < 1e-9).any():
            raise ValueError(
                f"{task}: sparsity {sparsity:g} was not analyzed (has {list(ds.sparsity.values)})"
            )
        for setting in map(str, ds[schema.SETTING].values) if schema.SETTING in ds.dims else ["aware"]:
            one = schema.in_setting(ds, setting).sel(sparsity=sparsity, method="nearest")
            values = one[metric]
            if "layer" in values.dims:
                values = one[schema.heads_name(metric)].sel({schema.SUBSET_DIM: "retrieval"})
            key = f"{task} {setting}"
            cols[key] = values.mean(["length", "depth", "sample"]).to_pandas()
            docs[key] = (int(one.done.sum()), float(one.retrieved.where(one.done).mean()))
    table = pd.DataFrame(cols)
    table.attrs["documents"] = docs
    return table


def ranking(column: pd.Series) -> list[tuple[str, float]]:
    """A column's policies best first (stable), without the reference and the ceiling."""
    order = column.drop(list(CEILINGS), errors="ignore").dropna().sort_values(ascending=False, kind="stable")
    return list(order.items())


def render(table: pd.DataFrame, sparsity: float, metric: str = "answer") -> str:
    """The table as text: values, documents per column, and each column's ranking."""
    lines = [f"{metric} at sparsity {sparsity:g} (mean over documents)"]
    lines.append(table.to_string(float_format=lambda v: f"{v:.2f}", na_rep="n/a"))
    docs = table.attrs.get("documents", {})
    lines.append(
        "documents / full-cache accuracy: " + "; ".join(f"{k}: {n} / {a:.2f}" for k, (n, a) in docs.items())
    )
    for col in table:
        lines.append(f"ranking {col}: " + " > ".join(f"{k} {v:.2f}" for k, v in ranking(table[col])))
    return "\n".join(lines)


def long_table(results: dict[str, xr.Dataset], metric: str = "answer") -> pd.DataFrame:
    """Every (task, setting, policy, sparsity) with the mean of `metric` and its documents: the
    sweep's CSV."""
    rows = []
    for task, ds in results.items():
        for s in ds.sparsity.values:
            table = answer_table({task: ds}, float(s), metric)
            for col in table:
                setting = col.rsplit(" ", 1)[1]
                n, full = table.attrs["documents"][col]
                for policy, v in table[col].items():
                    rows.append(
                        dict(
                            task=task,
                            setting=setting,
                            policy=policy,
                            sparsity=float(s),
                            **{metric: v},
                            documents=n,
                            full_cache=full,
                        )
                    )
    return pd.DataFrame(rows)
