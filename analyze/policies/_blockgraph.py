"""The block graph a CAB policy reads at the answer position (shared by the cab variants)."""

from __future__ import annotations

import numpy as np

from analyze import curvature
from analyze.policies.base import DocLayer

GRAPH_READS = {"blocks": ("blocks",), "qk": ("qpool", "kpool")}  # what each graph source is built from
COMPARE_WITH = ("h2o", "block_mass")  # the cab family is compared to accumulated attention and magnitude


def graphs(x: DocLayer, source: str, normalize: bool = True, reference: bool = False) -> np.ndarray:
    """(head, qblock, kblock) causal graphs from `blocks` or pooled Q/K affinity, min-max normalised."""
    if source == "blocks" and normalize and not reference:
        return curvature.minmax_causal(x.blocks)
    if source == "blocks":
        raw = curvature.causal(x.blocks.astype(np.float64))
    elif source == "qk":
        raw = np.stack([curvature.qk_affinity(x.qpool[h], x.kpool[h]) for h in range(x.heads)])
    else:
        raise ValueError(f"graph={source!r}: use blocks or qk")
    if not normalize:
        return raw
    return np.stack([curvature.minmax(a) for a in raw])


def last_row_mass(x: DocLayer) -> np.ndarray:
    """(head, kblock): attention mass from the last query block (which holds the question)."""
    return x.blocks[:, -1, :].astype(np.float64)


def last_row_additive(x: DocLayer, source: str, lam: float, reference: bool = False) -> np.ndarray:
    """(head, kblock) additive curvature A − λ·(A·A)/M of the last query block's edges."""
    a = graphs(x, source, reference=reference)
    i = a.shape[1] - 1
    if reference:
        return np.stack([curvature.seed_additive(a[h], lam)[i] for h in range(x.heads)])
    return np.stack([curvature.seed_additive_row(a[h], i, lam) for h in range(x.heads)])
