from dataclasses import dataclass

import numpy as np

from analyze import curvature
from analyze.policies._blockgraph import COMPARE_WITH, GRAPH_READS, graphs
from analyze.policies.base import DocLayer, Policy, Ranking, expand_blocks, param
from core.optionkit import choice, integer


@dataclass(frozen=True)
class CAB(Policy):
    """Curvature-aware blocks, the seed's first hypothesis: keep the key blocks with the LOWEST
    augmented block curvature F(i, j) = 4A[i, j] − S_i − S_j + 3(A·A)[i, j] for the last query block
    i ("bridges"), on the min-max normalised causal block graph; ⌊k/B⌋ whole blocks, the rest of the
    budget filled from the next block by accumulated attention. See analyze/curvature.py and docs/cab.md.

    Parameters: graph="blocks" ("qk": pooled Q/K affinity), block=0 (0 = the stored B; else a
    multiple of it).
    """

    name = "cab"
    graph: str = param("blocks", choice("blocks", "qk"), "blocks/qk")
    block: int = param(0, integer(minimum=0), "0 = stored B, or a multiple of it")
    block_scores = True
    keeps_lowest = True
    compare_with = COMPARE_WITH

    @property
    def reads(self) -> tuple[str, ...]:
        return ("colsum", *GRAPH_READS[self.graph])

    def scores(self, x: DocLayer, reference: bool = False) -> np.ndarray:
        """(head, kblock) curvature of the last query block's edges."""
        a = graphs(x, self.graph, reference=reference)
        i = a.shape[1] - 1
        if reference:
            return np.stack([curvature.seed_forman(a[h])[i] for h in range(x.heads)])
        return np.stack([curvature.seed_forman_row(a[h], i) for h in range(x.heads)])

    def _rank(self, x, reference):
        f = self.scores(x, reference)
        return Ranking(primary=expand_blocks(-f, x.block, x.n), secondary=x.colsum)

    def rank(self, x: DocLayer, k: int) -> Ranking:
        return self._rank(x, False)

    def rank_reference(self, x: DocLayer, k: int) -> Ranking:
        return self._rank(x, True)
