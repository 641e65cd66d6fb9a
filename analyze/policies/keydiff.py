from dataclasses import dataclass

import numba
import numpy as np

from analyze.policies._keys import per_head
from analyze.policies.base import DocLayer, Policy, Ranking


@numba.njit(cache=True)
def _neg_cosines(keys):
    kv, n, dim = keys.shape
    out = np.empty((kv, n))
    unit = np.empty((n, dim))
    anchor = np.empty(dim)
    for h in range(kv):
        anchor[:] = 0.0
        for j in range(n):
            acc = 0.0
            for t in range(dim):
                acc += np.float64(keys[h, j, t]) ** 2
            norm = max(np.sqrt(acc), 1e-12)
            for t in range(dim):
                unit[j, t] = keys[h, j, t] / norm
                anchor[t] += unit[j, t]
        a = 0.0
        for t in range(dim):
            anchor[t] /= n
            a += anchor[t] * anchor[t]
        a = max(np.sqrt(a), 1e-8)
        for j in range(n):
            dot = 0.0
            for t in range(dim):
                dot += unit[j, t] * anchor[t]
            out[h, j] = -dot / a
    return out


@dataclass(frozen=True)
class KeyDiff(Policy):
    """Keys least like the average key direction: the negative cosine similarity of each key to the
    mean of the normalised keys (Park et al. 2025, "KeyDiff: Key Similarity-Based KV Cache Eviction
    for Long-Context LLM Inference in Resource-Constrained Environments", arXiv:2504.15364;
    kvpress's KeyDiffPress). Reads the post-RoPE keys (dump --store stats,keys).
    """

    name = "keydiff"
    compare_with = ("h2o", "snapkv")  # Jaccard with accumulated attention and the window's votes
    reads = ("key_cache",)

    def rank(self, x: DocLayer, k: int) -> Ranking:
        return Ranking(primary=per_head(x, _neg_cosines(np.ascontiguousarray(x.key_cache))))

    def rank_reference(self, x: DocLayer, k: int) -> Ranking:
        keys = x.key_cache.astype(np.float64)
        unit = keys / np.maximum(np.linalg.norm(keys, axis=-1, keepdims=True), 1e-12)
        anchor = unit.mean(axis=1, keepdims=True)
        cos = (unit * anchor).sum(-1) / np.maximum(np.linalg.norm(anchor, axis=-1), 1e-8)
        return Ranking(primary=per_head(x, -cos))
