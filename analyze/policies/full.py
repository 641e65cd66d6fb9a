from dataclasses import dataclass

import numpy as np

from analyze.policies.base import DocLayer, Policy, Ranking


@dataclass(frozen=True)
class Full(Policy):
    """Keeps every key (k = N): the upper bound every other policy is measured against."""

    name = "full"
    sets = "head"

    def budget_for(self, k: int, n: int) -> int:
        return n

    def rank(self, x: DocLayer, k: int) -> Ranking:
        return Ranking(primary=np.zeros((x.heads, x.n)), forced=np.ones((x.heads, x.n), bool))
