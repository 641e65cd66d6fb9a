"""What the key scorers (KNorm, KeyDiff) share: per kv head scores from the post-RoPE keys, shown
to every query head of the group (a query-head view) or to each kv head (the group-mean view)."""

from __future__ import annotations

import numpy as np

from core.runstore import DocLayer


def per_head(x: DocLayer, scores: np.ndarray) -> np.ndarray:
    """(kv_head, key) scores -> one row per head of `x` (its query heads, or its kv heads)."""
    g = x.heads // scores.shape[0]
    return np.repeat(scores, g, axis=0) if g > 1 else scores
