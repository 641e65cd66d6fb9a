from dataclasses import dataclass

import numpy as np

from analyze.budgets import Allocation, DocumentLayers, spread
from analyze.policies._over_base import OverBase, base_name
from analyze.policies.base import param
from core.optionkit import integer


def pyramid_shares(k: int, n: int, layers: int, beta: int, window: int) -> np.ndarray:
    """PyramidKV's per-layer budgets (real numbers, lowest layer first): linear from `hi` down to
    `lo` = k / beta with mean k, `hi` capped at n - window (then `lo` = 2k - hi); the uniform k
    where that is impossible (kvpress's `PyramidKVPress.get_layer_budget`, which follows the
    authors' KVCache-Factory)."""
    lo = k / beta
    hi = 2 * k - lo
    if hi >= n - window:
        hi = n - window
        lo = 2 * k - hi
    if layers < 2 or not (n >= hi >= lo >= window):
        return np.full(layers, float(k))
    return hi - np.arange(layers) * (hi - lo) / (layers - 1)


@dataclass(frozen=True)
class Pyramid(Allocation):
    beta: int
    window: int
    name = "pyramid"

    def allocate(self, doc: DocumentLayers, k: int, policy) -> np.ndarray:
        layers = list(doc.prunable)
        shares = pyramid_shares(k, doc.n, len(layers), self.beta, self.window)
        per_layer = spread(k * len(layers), shares, doc.n)  # the exact total: kvpress rounds each alone
        out = np.zeros((doc.layers, doc.heads), dtype=np.int64)
        out[layers] = per_layer[:, None]
        return out


@dataclass(frozen=True)
class PyramidKV(OverBase):
    """A base scorer (SnapKV by default) with PyramidKV's per-layer budgets: more keys in the lower
    layers, fewer in the upper ones, linear in the layer, the document's total unchanged (Cai et al.
    2024, "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling",
    arXiv:2406.02069; the schedule of kvpress's PyramidKVPress).

    Parameters: beta=20 (the top layer keeps k / beta), window=64 (the schedule's observation
    window: the largest budget leaves it out), base=snapkv (the scorer whose ranking is kept).
    """

    name = "pyramidkv"
    beta: int = param(20, integer(minimum=1), ">= 1")
    window: int = param(64, integer(minimum=0), ">= 0")
    base: str = param("snapkv", base_name, "a registered key scorer")

    @property
    def allocation(self) -> Allocation:
        return Pyramid(self.beta, self.window)
