"""Accuracy curves with confidence bands, and the head-to-head difference heatmap."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import xarray as xr

from core import intervals
from core.schema import POLICY
from viz.select import DIVERGING_CMAP, length_label, mean_interval, per_document


def _band(x, mean, lo, hi, n, label, xdim, ydim):
    """A curve (n in its hover text) over its 95% band; no band where n < FEWEST."""
    curve = hv.Curve((x, mean, n), xdim, [ydim, "n"], label=label)
    thin = n < intervals.FEWEST
    lo, hi = np.where(thin, mean, lo), np.where(thin, mean, hi)
    spread = hv.Area(
        (x, np.nan_to_num(lo, nan=mean), np.nan_to_num(hi, nan=mean)), xdim, [ydim, f"{ydim}_hi"], label=label
    )
    return spread.opts(alpha=0.2) * curve


def _curves(
    docs: xr.DataArray, over: list[str], xdim: str, metric: str, title: str, logx: bool
) -> hv.Overlay:
    """One band per policy of docs averaged over `over`, against the coordinate `xdim`."""
    mean, lo, hi, n = mean_interval(docs, over, metric)
    x = np.asarray(docs[xdim].values, dtype=float)
    layers = [
        _band(x, *(a.sel({POLICY: m}).values for a in (mean, lo, hi, n)), str(m), xdim, metric)
        for m in docs[POLICY].values
    ]
    few = int(n.min()) if n.size else 0
    if few < intervals.FEWEST:
        title += f" (n = {few} documents in a point: no band below {intervals.FEWEST})"
    return hv.Overlay(layers).opts(
        hv.opts.Curve(logx=logx, ylim=(-0.02, 1.02), width=520, height=320, tools=["hover"], backend="bokeh"),
        hv.opts.Overlay(title=title, legend_position="right", backend="bokeh"),
    )


def vs_length(
    results: xr.Dataset, sparsity: float, metric: str = "needle_hit", subset: str = "all"
) -> hv.Overlay:
    docs = per_document(results, metric, subset).sel(sparsity=sparsity)
    title = f"{metric} vs context length (sparsity {sparsity:g}, {subset} heads)"
    return _curves(docs, ["depth"], "length", metric, title, logx=True)


def vs_sparsity(results: xr.Dataset, metric: str = "needle_hit", subset: str = "all") -> hv.Overlay:
    docs = per_document(results, metric, subset)
    return _curves(
        docs, ["length", "depth"], "sparsity", metric, f"{metric} vs sparsity ({subset} heads)", logx=False
    )


def difference(
    results: xr.Dataset,
    a: str,
    b: str,
    sparsity: float,
    metric: str = "needle_hit",
    subset: str = "all",
    backend: str = "bokeh",
) -> hv.Element:
    """Heatmap of policy a minus policy b (length x depth), diverging colours centred at 0, with a
    paired bootstrap 95% interval over each cell's documents (`core.intervals.paired_difference`)
    in the hover text; a value is starred where its interval excludes 0."""
    docs = per_document(results, metric, subset).sel(sparsity=sparsity)
    docs = docs.transpose(..., "sample")
    mean, lo, hi, n = intervals.paired_difference(
        docs.sel({POLICY: a}).values, docs.sel({POLICY: b}).values, docs.sel({POLICY: a}).ndim - 1
    )
    lengths, depths = docs.length.values, docs.depth.values
    cells = []
    for i, length in enumerate(lengths):
        for j, depth in enumerate(depths):
            sure = bool(lo[i, j] > 0 or hi[i, j] < 0)
            cells.append(
                (
                    length_label(int(length)),
                    f"{float(depth):.2f}",
                    round(float(mean[i, j]), 2),
                    round(float(lo[i, j]), 2),
                    round(float(hi[i, j]), 2),
                    int(n[i, j]),
                    f"{mean[i, j]:.2f}{'*' if sure else ''}",
                )
            )
    vdims = [hv.Dimension("diff", range=(-1, 1)), "diff_lo", "diff_hi", "n", "label"]
    hm = hv.HeatMap(cells, kdims=["length", "depth"], vdims=vdims)
    title = f"{a} − {b}: {metric} at sparsity {sparsity:g} (* its paired 95% interval excludes 0)"
    if backend == "matplotlib":
        return hm.opts(
            cmap=DIVERGING_CMAP,
            clim=(-1, 1),
            invert_yaxis=True,
            title=f"{a} − {b}, {metric}, sparsity {sparsity:g}",  # short: PNGs set variants side by side
            show_values=True,
            colorbar=True,
            backend="matplotlib",
        )
    hm = hm.opts(
        cmap=DIVERGING_CMAP,
        clim=(-1, 1),
        invert_yaxis=True,
        title=title,
        colorbar=True,
        width=360,
        height=260,
        tools=["hover"],
        backend="bokeh",
    )
    labels = hv.Labels(cells, kdims=["length", "depth"], vdims=["label"])
    return hm * labels.opts(text_font_size="9pt", backend="bokeh")
