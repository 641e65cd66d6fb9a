from dataclasses import dataclass

import numpy as np

from analyze import curvature
from analyze.policies._blockgraph import COMPARE_WITH, GRAPH_READS, graphs
from analyze.policies.base import DocLayer, Policy, Ranking, expand_blocks, param, recent_mask, select
from core.optionkit import choice, integer, number


@dataclass(frozen=True)
class CAB3C(Policy):
    """The seed's final cache ("V5"), three components of the budget: local (most recent keys),
    bridges, importance (accumulated attention, H2O-style).

    Bridges: bridge="median" keeps the keys whose accumulated attention is closest to the median (the
    seed's last rule); bridge="node" keeps the blocks of lowest node curvature (mean augmented Forman
    curvature of the block's edges, Samal et al. 2018). The seed's first rule, 4w − 2S + 3T on a
    row-normalised graph, is constant (every token scores 5) and is not offered.
    Parameters: local=0.3, bridges=0.2 (importance gets the rest), bridge="median", graph="blocks".
    """

    name = "cab_3c"
    local: float = param(0.3, number(0, 1), "0..1")
    bridges: float = param(0.2, number(0, 1), "0..1, local + bridges <= 1")
    bridge: str = param("median", choice("median", "node"), "median/node")
    graph: str = param("blocks", choice("blocks", "qk"), "blocks/qk")
    block: int = param(0, integer(minimum=0), "0 = stored B, or a multiple of it")

    def check(self) -> str | None:
        if self.local + self.bridges > 1:
            return f"local + bridges = {self.local + self.bridges:g} leaves no budget for importance: keep it <= 1"
        return None

    compare_with = COMPARE_WITH

    @property
    def reads(self) -> tuple[str, ...]:
        return ("colsum", *(GRAPH_READS[self.graph] if self.bridge == "node" else ()))

    def rank(self, x: DocLayer, k: int) -> Ranking:
        n_local, n_bridge = int(round(self.local * k)), int(round(self.bridges * k))
        forced = recent_mask(x.heads, x.n, n_local)
        importance = x.colsum.astype(np.float64)
        if self.bridge == "median":
            closeness = -np.abs(importance - np.median(importance, axis=1, keepdims=True))
            bridge_score = closeness
        elif self.bridge == "node":
            a = graphs(x, self.graph)
            node = np.stack([curvature.node_curvature(curvature.symmetric(a[h])) for h in range(x.heads)])
            bridge_score = expand_blocks(-node, x.block, x.n) + 1e-12 * importance
        else:  # pragma: no cover - refused by its parameter declaration
            raise ValueError(f"bridge={self.bridge!r}: use median or node")
        bridge_score = np.where(forced, -np.inf, bridge_score)
        forced = forced | select(bridge_score, n_bridge)
        return Ranking(primary=importance, forced=forced)
