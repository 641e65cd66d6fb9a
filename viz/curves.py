"""Accuracy curves with confidence bands, and the head-to-head difference heatmap."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import xarray as xr

from core.schema import POLICY
from viz.select import DIVERGING_CMAP, length_label, per_document


def _band(x, mean, lo, hi, label, xdim, ydim):
    curve = hv.Curve((x, mean), xdim, ydim, label=label)
    spread = hv.Area(
        (x, np.nan_to_num(lo, nan=mean), np.nan_to_num(hi, nan=mean)), xdim, [ydim, f"{ydim}_hi"], label=label
    )
    return spread.opts(alpha=0.2) * curve


def _mean_ci(docs: xr.DataArray, over: list[str]):
    """Mean over `over` + samples, with a normal 95% interval across samples."""
    per_sample = docs.mean([d for d in over if d != "sample"])
    mean = per_sample.mean("sample")
    n = per_sample.count("sample")
    half = 1.96 * per_sample.std("sample", ddof=1) / np.sqrt(n.where(n > 1))
    return mean, mean - half, mean + half


def _curves(
    docs: xr.DataArray, over: list[str], xdim: str, metric: str, title: str, logx: bool
) -> hv.Overlay:
    """One band per method of docs averaged over `over`, against the coordinate `xdim`."""
    mean, lo, hi = _mean_ci(docs, over)
    x = np.asarray(docs[xdim].values, dtype=float)
    layers = [
        _band(x, *(a.sel({POLICY: m}).values for a in (mean, lo, hi)), str(m), xdim, metric)
        for m in docs[POLICY].values
    ]
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
    """Heatmap of method a minus method b (length x depth), diverging colours centred at 0."""
    docs = per_document(results, metric, subset).sel(sparsity=sparsity).mean("sample")
    diff = docs.sel({POLICY: a}) - docs.sel({POLICY: b})
    cells = [
        (length_label(int(n)), f"{float(d):.2f}", round(float(diff.sel(length=n, depth=d)), 2))
        for n in diff.length.values
        for d in diff.depth.values
    ]
    hm = hv.HeatMap(cells, kdims=["length", "depth"], vdims=[hv.Dimension("diff", range=(-1, 1))])
    title = f"{a} − {b}: {metric} at sparsity {sparsity:g}"
    if backend == "matplotlib":
        return hm.opts(
            cmap=DIVERGING_CMAP,
            clim=(-1, 1),
            invert_yaxis=True,
            title=title,
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
    return hm * hv.Labels(hm).opts(text_font_size="9pt", backend="bokeh")
