from dataclasses import dataclass

import numpy as np

from analyze.policies._blockgraph import COMPARE_WITH, GRAPH_READS, last_row_additive
from analyze.policies.base import DocLayer, Policy, Ranking, expand_blocks, param
from core.optionkit import choice, integer, number


@dataclass(frozen=True)
class CABHigh(Policy):
    """The seed's "V3": keep the key blocks with the HIGHEST additive curvature F = A − λ·(A·A)/M
    for the last query block, on the min-max normalised causal block graph.

    Known flaw (docs/cab.md): with causal row-stochastic attention the redundancy term is tiny, so this
    ranks like plain block magnitude; the results' Jaccard / rank-correlation diagnostics show it.
    Parameters: lam=0.5, graph="blocks" ("qk"), block=0 (0 = stored B).
    """

    name = "cab_high"
    lam: float = param(0.5, number(minimum=0), ">= 0")
    graph: str = param("blocks", choice("blocks", "qk"), "blocks/qk")
    block: int = param(0, integer(minimum=0), "0 = stored B, or a multiple of it")
    block_scores = True
    compare_with = COMPARE_WITH

    @property
    def reads(self) -> tuple[str, ...]:
        return ("colsum", *GRAPH_READS[self.graph])

    def scores(self, x: DocLayer, reference: bool = False) -> np.ndarray:
        """(head, kblock) additive curvature of the last query block's edges."""
        return last_row_additive(x, self.graph, self.lam, reference)

    def rank(self, x: DocLayer, k: int) -> Ranking:
        return Ranking(primary=expand_blocks(self.scores(x), x.block, x.n), secondary=x.colsum)

    def rank_reference(self, x: DocLayer, k: int) -> Ranking:
        return Ranking(primary=expand_blocks(self.scores(x, True), x.block, x.n), secondary=x.colsum)
