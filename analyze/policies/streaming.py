from dataclasses import dataclass

import numpy as np

from analyze.policies.base import DocLayer, Policy, Ranking, param, sink_mask
from core.optionkit import integer


@dataclass(frozen=True)
class Streaming(Policy):
    """Attention sinks + the most recent keys (StreamingLLM, Xiao et al. 2024, arXiv:2309.17453).

    Parameters: sinks=4 (first tokens always kept, inside the budget).
    """

    name = "streaming"
    sinks: int = param(4, integer(minimum=0), ">= 0")

    def minimum_keys(self, observed: int) -> int:
        return self.sinks + 1  # the sinks and at least the last key

    def rank(self, x: DocLayer, k: int) -> Ranking:
        forced = sink_mask(x.heads, x.n, min(self.sinks, k))
        recency = np.broadcast_to(np.arange(x.n, dtype=np.float64), (x.heads, x.n))
        return Ranking(primary=recency, forced=forced)
