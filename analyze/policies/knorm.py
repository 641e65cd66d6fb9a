from dataclasses import dataclass

import numba
import numpy as np

from analyze.policies._keys import per_head
from analyze.policies.base import DocLayer, Policy, Ranking


@numba.njit(cache=True)
def _neg_norms(keys):
    kv, n, dim = keys.shape
    out = np.empty((kv, n))
    for h in range(kv):
        for j in range(n):
            acc = 0.0
            for t in range(dim):
                v = np.float64(keys[h, j, t])
                acc += v * v
            out[h, j] = -np.sqrt(acc)
    return out


@dataclass(frozen=True)
class KNorm(Policy):
    """Keys of the smallest L2 norm: a low-norm key draws high attention (Devoto et al. 2024, "A
    Simple and Effective L2 Norm-Based Strategy for KV Cache Compression", arXiv:2406.11430;
    kvpress's KnormPress). Reads the post-RoPE keys (dump --store stats,keys); sees no query, so
    both settings score it alike.
    """

    name = "knorm"
    compare_with = ("h2o", "snapkv")  # Jaccard with accumulated attention and the window's votes
    reads = ("key_cache",)

    def rank(self, x: DocLayer, k: int) -> Ranking:
        return Ranking(primary=per_head(x, _neg_norms(np.ascontiguousarray(x.key_cache))))

    def rank_reference(self, x: DocLayer, k: int) -> Ranking:
        norms = np.sqrt((x.key_cache.astype(np.float64) ** 2).sum(-1))
        return Ranking(primary=per_head(x, -norms))
