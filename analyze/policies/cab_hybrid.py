from dataclasses import dataclass

import numpy as np

from analyze.policies._blockgraph import COMPARE_WITH, GRAPH_READS, last_row_additive, last_row_mass
from analyze.policies.base import DocLayer, Policy, Ranking, expand_blocks, param, select
from core.optionkit import choice, integer, number


@dataclass(frozen=True)
class CABHybrid(Policy):
    """The seed's "V4": α·⌊k/B⌋ blocks by magnitude (attention mass from the last query block), the
    rest by highest additive curvature F = A − λ·(A·A)/M.

    Parameters: alpha=0.5, lam=0.3, graph="blocks" ("qk"), block=0 (0 = stored B).
    """

    name = "cab_hybrid"
    alpha: float = param(0.5, number(0, 1), "0..1")
    lam: float = param(0.3, number(minimum=0), ">= 0")
    graph: str = param("blocks", choice("blocks", "qk"), "blocks/qk")
    block: int = param(0, integer(minimum=0), "0 = stored B, or a multiple of it")
    block_scores = True
    compare_with = COMPARE_WITH

    @property
    def reads(self) -> tuple[str, ...]:
        return ("colsum", "blocks", *GRAPH_READS[self.graph])  # blocks: the magnitude share

    def scores(self, x: DocLayer, reference: bool = False) -> np.ndarray:
        """(head, kblock) additive curvature of the last query block's edges."""
        return last_row_additive(x, self.graph, self.lam, reference)

    def _rank(self, x: DocLayer, k: int, reference: bool) -> Ranking:
        f = self.scores(x, reference)
        mass = last_row_mass(x)
        n_mag = int(self.alpha * (k // x.block))
        by_mass = select(mass, n_mag)  # whole blocks, exactly n_mag of them
        forced = expand_blocks(by_mass, x.block, x.n)
        return Ranking(primary=expand_blocks(f, x.block, x.n), secondary=x.colsum, forced=forced)

    def rank(self, x: DocLayer, k: int) -> Ranking:
        return self._rank(x, k, False)

    def rank_reference(self, x: DocLayer, k: int) -> Ranking:
        return self._rank(x, k, True)
