from dataclasses import dataclass

import numpy as np

from analyze.policies.base import DocLayer, Policy, Ranking, param
from core.optionkit import integer


@dataclass(frozen=True)
class RandomKeys(Policy):
    """k keys chosen uniformly at random (seeded per document-layer): the floor.

    Parameters: seed=0 (mixed with the document-layer's own seed).
    """

    name = "random"
    seed: int = param(0, integer(minimum=0), ">= 0")

    def rank(self, x: DocLayer, k: int) -> Ranking:
        rng = np.random.default_rng([self.seed, x.seed])
        return Ranking(primary=rng.random((x.heads, x.n)))
