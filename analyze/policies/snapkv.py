from dataclasses import dataclass

import numba
import numpy as np

from analyze.policies.base import DocLayer, Policy, Ranking, param, recent_mask
from core.optionkit import integer


def odd_width(text: str) -> int:
    value = integer(minimum=1)(text)
    if value % 2 == 0:
        raise ValueError("must be odd (a centred pooling window)")
    return value


@dataclass(frozen=True)
class SnapKV(Policy):
    """Keys voted for by the observation window (the last W queries): their attention rows summed,
    smoothed by 1-D average pooling, top-k; the window itself is always kept (Li et al. 2024,
    "SnapKV", arXiv:2404.14469).

    Parameters: kernel=5 (pooling width, odd), window=0 (queries voting; 0 = the dump's W, read
    from its stored sum `window_sum`; another value needs that many rows stored whole, dump
    --window-rows).
    """

    name = "snapkv"
    reads = ("window_sum", "window")
    kernel: int = param(5, odd_width, "odd, >= 1")
    window: int = param(0, integer(minimum=0), ">= 0")

    def rows_needed(self, observed: int) -> int:
        """Rows this policy must find stored whole when the dump summed `observed` (0: none)."""
        return 0 if self.window <= 0 or self.window == observed else self.window

    def minimum_keys(self, observed: int) -> int:
        return self.window or observed  # the voting window itself is kept

    def _rows(self, x: DocLayer) -> tuple[np.ndarray, int]:
        """(head, r, key) rows whose sum are the votes, and how many queries voted."""
        if not self.rows_needed(x.observed):
            return x.window_sum[:, None, :], x.observed
        return x.window[:, -self.window :], self.window

    def rank(self, x: DocLayer, k: int) -> Ranking:
        rows, voters = self._rows(x)
        votes = _pooled_votes(np.ascontiguousarray(rows, dtype=np.float32), self.kernel)
        return Ranking(primary=votes, forced=recent_mask(x.heads, x.n, min(voters, k)))

    def rank_reference(self, x: DocLayer, k: int) -> Ranking:
        rows, voters = self._rows(x)
        votes = rows.astype(np.float64).sum(axis=1)
        half = self.kernel // 2
        padded = np.pad(votes, ((0, 0), (half, half)))  # zero padding, count_include_pad like torch
        pooled = np.lib.stride_tricks.sliding_window_view(padded, self.kernel, axis=1).mean(axis=-1)
        return Ranking(primary=pooled, forced=recent_mask(x.heads, x.n, min(voters, k)))


@numba.njit(cache=True)
def _pooled_votes(rows, kernel):
    h, w, n = rows.shape
    half = kernel // 2
    out = np.zeros((h, n))
    chunk = 512  # column strips whose sums stay in L1 while the window rows stream past
    acc = np.zeros(chunk)
    for r in range(h):
        votes = np.zeros(n + 2 * half)
        for j0 in range(0, n, chunk):
            j1 = min(n, j0 + chunk)
            acc[:] = 0.0
            for q in range(w):
                for j in range(j0, j1):
                    acc[j - j0] += rows[r, q, j]
            for j in range(j0, j1):
                votes[half + j] = acc[j - j0]
        total = 0.0
        for j in range(kernel - 1):
            total += votes[j]
        for j in range(n):
            total += votes[j + kernel - 1]
            out[r, j] = total / kernel
            total -= votes[j]
    return out
