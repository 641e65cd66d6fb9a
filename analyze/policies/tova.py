from dataclasses import dataclass

import numpy as np

from analyze.policies.base import DocLayer, Policy, Ranking


@dataclass(frozen=True)
class TOVA(Policy):
    """Keys with the highest final-query attention averaged over all heads of the layer; one set for
    the whole layer (Oren et al. 2024, "Transformers are Multi-State RNNs", arXiv:2401.06104)."""

    name = "tova"
    sets = "layer"  # one set for every head of the layer, from their mean final row

    def rank(self, x: DocLayer, k: int) -> Ranking:
        mean = x.final_row.astype(np.float64).mean(axis=0, keepdims=True)
        return Ranking(primary=np.repeat(mean, x.heads, axis=0))
