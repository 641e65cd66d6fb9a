from dataclasses import dataclass

import numba
import numpy as np

from analyze.policies._keys import per_head
from analyze.policies.base import DocLayer, Policy, Ranking, param, sink_mask
from core.optionkit import boolean, integer


@numba.njit(cache=True)
def _expected(keys, mean, quad, vnorm, sinks, use_vnorm):
    """(kv_head, key) expected attention: per query head the softmax over keys [sinks, n) of
    k·mean/sqrt(d) + quad/2d (quad[h, j] = k_jᵀ cov_h k_j), averaged over the kv head's group,
    times the value's norm."""
    kv, n, dim = keys.shape
    heads = mean.shape[0]
    g = heads // kv
    out = np.zeros((kv, n))
    logits = np.empty(n)
    scale = 1.0 / np.sqrt(dim)
    for h in range(heads):
        kh = h // g
        top = -np.inf
        for j in range(sinks, n):
            acc = 0.0
            for t in range(dim):
                acc += np.float64(keys[kh, j, t]) * mean[h, t]
            z = acc * scale + quad[h, j] / dim / 2.0
            logits[j] = z
            if z > top:
                top = z
        total = 0.0
        for j in range(sinks, n):
            logits[j] = np.exp(logits[j] - top)
            total += logits[j]
        for j in range(sinks, n):
            out[kh, j] += logits[j] / total / g
    if use_vnorm:
        for kh in range(kv):
            for j in range(sinks, n):
                out[kh, j] *= vnorm[kh, j]
    return out


@dataclass(frozen=True)
class ExpectedAttention(Policy):
    """The attention future queries are expected to pay each key, from the statistics of the queries
    seen so far (Devoto et al. 2025, "Expected Attention: KV Cache Compression by Estimating
    Attention from Future Queries Distribution", arXiv:2510.00636; kvpress's
    ExpectedAttentionPress). With the prefill's pre-RoPE queries modelled as a Gaussian (mean μ,
    covariance Σ, its first `sinks` rows left out) and RoPE averaged over the next 512 positions,
    E[exp(q·k/√d)] ∝ exp(μ·k/√d + kᵀΣk/2d); its softmax over the keys, averaged over a kv head's
    query heads, times the value's L2 norm, is the score. The `sinks` first keys are always kept.
    Reads the keys, the values' norms and the query moments of the setting's own prefill (dump
    --store stats,keys): in `agnostic` the context's, before the question.

    Parameters: sinks=4, covariance=true (false: the mean alone), vnorm=true (false: no value norm).
    """

    name = "expected_attention"
    compare_with = ("h2o", "snapkv")
    reads = ("key_cache", "value_norm", "query_mean", "query_cov")
    sinks: int = param(4, integer(minimum=0), ">= 0")
    covariance: bool = param(True, boolean, "true or false")
    vnorm: bool = param(True, boolean, "true or false")

    def minimum_keys(self, observed: int) -> int:
        return self.sinks + 1

    def _quad(self, x: DocLayer, keys: np.ndarray) -> np.ndarray:
        """(head, key) kᵀ Σ_h k for each query head's kv head (BLAS: d² per key)."""
        heads, kv = x.query_mean.shape[0], keys.shape[0]
        g = heads // kv
        if not self.covariance:
            return np.zeros((heads, keys.shape[1]))
        cov = x.query_cov.astype(np.float64)
        return np.stack([((keys[h // g] @ cov[h]) * keys[h // g]).sum(-1) for h in range(heads)])

    def _forced(self, x: DocLayer, k: int) -> np.ndarray:
        return sink_mask(x.heads, x.n, min(self.sinks, k))

    def rank(self, x: DocLayer, k: int) -> Ranking:
        def scores():
            keys = np.ascontiguousarray(x.key_cache, dtype=np.float64)
            return _expected(
                keys,
                np.ascontiguousarray(x.query_mean, dtype=np.float64),
                self._quad(x, keys),
                np.ascontiguousarray(x.value_norm, dtype=np.float64),
                min(self.sinks, x.n - 1),
                self.vnorm,
            )

        # no budget changes the scores: computed once per document-layer (Ada-KV over them reuses them)
        return Ranking(primary=per_head(x, x.memo(self, scores)), forced=self._forced(x, k))

    def rank_reference(self, x: DocLayer, k: int) -> Ranking:
        keys = x.key_cache.astype(np.float64)
        kv, n, dim = keys.shape
        heads = x.query_mean.shape[0]
        g = heads // kv
        s = min(self.sinks, n - 1)
        ks = np.repeat(keys, g, axis=0)[:, s:]  # (head, key, dim): each query head's kv head
        logits = np.einsum("hjd,hd->hj", ks, x.query_mean.astype(np.float64)) / np.sqrt(dim)
        if self.covariance:
            logits += np.einsum("hjd,hde,hje->hj", ks, x.query_cov.astype(np.float64), ks) / dim / 2
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        scores = np.zeros((kv, n))
        scores[:, s:] = probs.reshape(kv, g, -1).mean(axis=1)
        if self.vnorm:
            scores *= x.value_norm.astype(np.float64)
        return Ranking(primary=per_head(x, scores), forced=self._forced(x, k))
