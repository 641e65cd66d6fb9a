"""Which keys each policy keeps for one document, per head, with the needle and question marked;
and the block map of attention for one layer/head.

Key axes are rasterized (binned to at most `max_columns` columns, colour = fraction kept) so a
128k-token document stays a small picture.
"""

from __future__ import annotations

import holoviews as hv
import numpy as np
import xarray as xr

from core import schema


def binned(mask: np.ndarray, max_columns: int) -> tuple[np.ndarray, int]:
    """(rows, key) -> (rows, columns) fraction per bin, and the bin width in keys."""
    n = mask.shape[-1]
    width = max(1, -(-n // max_columns))
    cols = -(-n // width)
    pad = np.zeros(mask.shape[:-1] + (cols * width,), dtype=np.float32)
    pad[..., :n] = mask
    return pad.reshape(*mask.shape[:-1], cols, width).mean(-1), width


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts = np.r_[idx[0], idx[breaks + 1]]
    ends = np.r_[idx[breaks], idx[-1]]
    return list(zip(starts.tolist(), (ends + 1).tolist()))


def picture(sets: xr.Dataset, sparsity: float | None = None, max_columns: int = 2048) -> hv.Overlay:
    """Rows = (policy, head), first policy at the top; columns = keys; the needle in red, the question
    in blue. `sets` comes from `analyze.keptsets.kept_sets` (one sparsity is drawn: the first unless given)."""
    j = 0 if sparsity is None else [float(s) for s in sets.sparsity.values].index(float(sparsity))
    kept = sets.kept.isel(sparsity=j)
    masks = kept.values.reshape(-1, sets.sizes["key"])
    frac, width = binned(masks, max_columns)
    rows = frac.shape[0]
    img = hv.Image(
        frac,  # hv.Image draws the array's first row at the top
        bounds=(0, 0, sets.sizes["key"], rows),
        kdims=["key", "policy × head"],
        vdims=[hv.Dimension("kept", range=(0, 1))],
    )
    img = img.opts(
        cmap="Greys",
        clim=(0, 1),
        width=900,
        height=max(200, 14 * rows),
        colorbar=True,
        title=f"kept keys, layer {sets.attrs['layer']}, sparsity {float(sets.sparsity[j]):g} "
        f"(k = {sets.attrs['budgets'][j]}, {width} key(s) per pixel, kept sets per {sets.attrs['gqa']} head)",
        backend="bokeh",
    )
    heads = sets.sizes["head"]
    ticks = [(rows - (i * heads + heads / 2), str(m)) for i, m in enumerate(sets[schema.POLICY].values)]
    img = img.opts(yticks=ticks, backend="bokeh")
    marks = [hv.VSpan(a, b).opts(color="red", alpha=0.35) for a, b in _spans(sets.needle.values)]
    marks += [hv.VSpan(a, b).opts(color="royalblue", alpha=0.2) for a, b in _spans(sets.question.values)]
    return hv.Overlay([img, *marks])


def block_map(store: str, length: int, depth: int, sample: int, layer: int, head: int) -> hv.Image:
    """log10 of the attention mass of each B×B block (query block down, key block across)."""
    g = xr.open_zarr(store, group=schema.group_name(length))
    b = g.blocks.isel(depth=depth, sample=sample).sel(layer=layer, head=head).values.astype(np.float64)
    m = b.shape[0]
    img = hv.Image(
        np.log10(np.maximum(b, 1e-6))[::-1],
        bounds=(0, 0, m, m),
        kdims=["key block", "query block"],
        vdims=["log10 mass"],
    )
    return img.opts(
        cmap="viridis",
        width=420,
        height=400,
        colorbar=True,
        clim=(-6, float(np.log10(max(b.max(), 1e-6)))),
        title=f"block map, layer {layer} head {head} (B = {int(g.attrs['block'])})",
        backend="bokeh",
    )
