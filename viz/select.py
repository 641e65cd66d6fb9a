"""Named selections of RESULTS shared by every figure: which heads, which metric, averaged how."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.colors import LinearSegmentedColormap, to_hex

from core import schema

METRICS = schema.HEAD_METRICS
# the classic NIAH map, red -> amber -> green, as 256 colours so both backends interpolate alike
NIAH_CMAP = [
    to_hex(c)
    for c in LinearSegmentedColormap.from_list("niah", ["#d73027", "#fdae61", "#1a9850"])(
        np.linspace(0, 1, 256)
    )
]
DIVERGING_CMAP = "RdBu"


def subsets(results: xr.Dataset, max_layers: int = 4) -> list[str]:
    """Head subsets offered by figures: all heads, retrieval heads, and the layers holding the most
    retrieval heads (one layer each)."""
    per_layer = results.retrieval_head.sum("head").values
    layers = [
        int(results.layer.values[i])
        for i in np.argsort(-per_layer, kind="stable")[:max_layers]
        if per_layer[i] > 0
    ]
    return ["all", "retrieval"] + [f"layer {layer}" for layer in sorted(layers)]


def metrics_of(results: xr.Dataset) -> tuple[str, ...]:
    """The metrics a figure offers, the default first: the model's real answer when the results have
    it (`analyze --answers`), then the needle-in-kept-set proxies."""
    if "answer" in results:
        return (*schema.ANSWER_METRICS, *METRICS)
    return METRICS


def default_metric(results: xr.Dataset) -> str:
    return metrics_of(results)[0]


def full_cache_note(results: xr.Dataset) -> str:
    """The model's own accuracy with its whole cache, for figure titles."""
    done = int(results.done.sum())
    return f"full cache answers {int((results.retrieved & results.done).sum())}/{done}"


def per_document(results: xr.Dataset, metric: str, subset: str) -> xr.DataArray:
    """(policy, sparsity, length, depth, sample): the metric averaged over the subset's heads (the
    answer metrics are per document already: the subset does not apply)."""
    if metric in schema.ANSWER_METRICS and metric in results:
        return results[metric]
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: use one of {', '.join(metrics_of(results))}")
    if subset in schema.SUBSETS:
        return results[schema.heads_name(metric)].sel({schema.SUBSET_DIM: subset})
    if subset.startswith("layer "):
        return results[metric].sel(layer=int(subset.split()[1])).mean("head")
    raise ValueError(f"subset {subset!r}: use all, retrieval or 'layer N'")


def cell_mean(results: xr.Dataset, metric: str, subset: str) -> xr.DataArray:
    """(policy, sparsity, length, depth): mean over samples."""
    return per_document(results, metric, subset).mean("sample", skipna=True)


def length_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def mean_interval(docs: xr.DataArray, over: list[str], metric: str):
    """Mean over the documents of `over` × samples, its 95% interval by the metric's kind
    (`core.intervals`, each document one unit) and n, as four DataArrays."""
    from core import intervals

    units = [d for d in (*over, "sample") if d in docs.dims]
    stacked = docs.stack(document=units).transpose(..., "document")
    out = intervals.interval(stacked.values, stacked.ndim - 1, schema.KINDS.get(metric, "fraction"))
    dims = stacked.dims[:-1]
    coords = {d: stacked[d].values for d in dims}
    return tuple(xr.DataArray(a, dims=dims, coords=coords) for a in out)
