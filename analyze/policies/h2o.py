from dataclasses import dataclass

import numpy as np

from analyze.policies.base import DocLayer, Policy, Ranking, param, recent_mask
from core.optionkit import boolean, number


@dataclass(frozen=True)
class H2O(Policy):
    """Heavy hitters by accumulated attention + a recent window, per head (Zhang et al. 2023,
    "H2O", arXiv:2306.14048).

    Parameters: recent_ratio=0.5 (share of the budget for the most recent keys, the paper's half /
    half); normalize=False (True divides the column sum by the number of queries that see each key,
    kvpress's "observed attention"). The raw sum includes the question's rows: it is an offline
    upper bound of H2O's sequential eviction.
    """

    name = "h2o"
    reads = ("colsum",)
    recent_ratio: float = param(0.5, number(0, 1), "0..1")
    normalize: bool = param(False, boolean, "true/false")

    def rank(self, x: DocLayer, k: int) -> Ranking:
        score = x.colsum.astype(np.float64)
        if self.normalize:
            score = score / (x.n - np.arange(x.n))  # key j is seen by the N - j queries j..N-1
        return Ranking(primary=score, forced=recent_mask(x.heads, x.n, int(round(self.recent_ratio * k))))
