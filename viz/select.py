"""Named selections of RESULTS shared by every figure: which heads, which metric, averaged how."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.colors import LinearSegmentedColormap, to_hex

from dump import schema

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


def per_document(results: xr.Dataset, metric: str, subset: str) -> xr.DataArray:
    """(policy, sparsity, length, depth, sample): the metric averaged over the subset's heads."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: use one of {', '.join(METRICS)}")
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
