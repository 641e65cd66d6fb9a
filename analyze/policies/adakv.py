from dataclasses import dataclass

import numba
import numpy as np

from analyze.budgets import Allocation, DocumentLayers
from analyze.policies._over_base import OverBase, base_name
from analyze.policies.base import param
from core.optionkit import number


def _priority(r, rows: int, n: int):
    """A ranking's (primary, secondary, forced) as arrays: forced keys first, as `select` orders."""
    primary = np.ascontiguousarray(r.primary, dtype=np.float64)
    secondary = np.zeros((rows, n)) if r.secondary is None else np.asarray(r.secondary, dtype=np.float64)
    forced = np.zeros((rows, n), bool) if r.forced is None else np.asarray(r.forced, dtype=bool)
    return primary, np.ascontiguousarray(secondary), np.ascontiguousarray(forced)


def head_budgets_reference(primary, secondary, forced, total: int, safe: int) -> np.ndarray:
    """Obviously-correct numpy: every row keeps its first `safe` keys (its own order: forced, then
    primary, secondary, earlier key); the rest of `total` goes to the highest keys of all rows
    together (forced first, then primary, secondary, lower row, earlier key). Returns each row's
    count."""
    rows, n = primary.shape
    ranks = np.zeros((rows, n), dtype=np.int64)  # each key's place in its row's own order
    for r in range(rows):
        keys = np.arange(n)
        ordered = keys[np.lexsort((keys, -secondary[r], -primary[r], ~forced[r]))]
        ranks[r, ordered] = np.arange(n)
    budgets = np.minimum(safe, n) * np.ones(rows, dtype=np.int64)
    rest = [
        (not forced[r, j], -primary[r, j], -secondary[r, j], r, j)
        for r in range(rows)
        for j in range(n)
        if ranks[r, j] >= safe
    ]
    for _, _, _, r, _ in sorted(rest)[: total - int(budgets.sum())]:
        budgets[r] += 1
    return budgets


@numba.njit(cache=True)
def _head_budgets(primary, secondary, forced, total, safe):
    """Same contract as `head_budgets_reference`: one sort of all (row, key) priorities."""
    rows, n = primary.shape
    m = rows * n
    tier = np.empty(m)
    p = np.empty(m)
    q = np.empty(m)
    for r in range(rows):
        for j in range(n):
            i = r * n + j
            tier[i] = 0.0 if forced[r, j] else 1.0
            p[i] = -primary[r, j]
            q[i] = -secondary[r, j]
    # each row's own order: (tier, -primary, -secondary, key); the flat index orders rows then keys
    order = np.argsort(q, kind="mergesort")  # stable sorts, least significant key first

    order = order[np.argsort(p[order], kind="mergesort")]
    order = order[np.argsort(tier[order], kind="mergesort")]
    taken = np.zeros(rows, dtype=np.int64)
    budgets = np.zeros(rows, dtype=np.int64)
    cap = min(safe, n)
    # the first `safe` of every row in its own order (the joint order restricted to a row is its order)
    for t in range(m):
        r = order[t] // n
        if taken[r] < cap:
            taken[r] += 1
            budgets[r] += 1
    left = total - budgets.sum()
    seen = np.zeros(rows, dtype=np.int64)
    for t in range(m):
        if left <= 0:
            break
        r = order[t] // n
        seen[r] += 1
        if seen[r] > cap:
            budgets[r] += 1
            left -= 1
    return budgets


def head_budgets(primary, secondary, forced, total: int, safe: int) -> np.ndarray:
    """Numba twin of `head_budgets_reference` (same counts)."""
    return _head_budgets(primary, secondary, forced, int(total), int(safe))


@dataclass(frozen=True)
class AdaptiveHeads(Allocation):
    alpha: float
    name = "adaptive heads"
    per_layer = True  # budget moves between the heads of a layer only

    def allocate_layer(
        self, doc: DocumentLayers, layer: int, k: int, policy, reference: bool = False
    ) -> np.ndarray:
        g = doc.heads // doc.kv_heads
        scorer = policy.scorer
        x = doc.shown(layer)
        xg = x.group_mean() if g > 1 else x  # one budget per kv head: a real cache's granularity
        r = (scorer.rank_reference if reference else scorer.rank)(xg, k)
        primary, secondary, forced = _priority(r, xg.heads, xg.n)
        count = head_budgets_reference if reference else head_budgets
        return np.repeat(count(primary, secondary, forced, k * xg.heads, int(k * self.alpha)), g)


@dataclass(frozen=True)
class AdaKV(OverBase):
    """A base scorer with Ada-KV's per-head budgets: inside each layer the budget of all its heads
    goes to the highest-scoring keys of any head, each head first keeping its own top alpha · k
    (Feng et al. 2024, "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation",
    arXiv:2407.11550; kvpress's AdaKVPress with its safeguard). Budgets are per kv head (a group's
    query heads share one, as a real cache stores them); each layer's total is unchanged.

    Parameters: base=snapkv (any registered key scorer; its scores are compared across heads, so a
    scorer whose scale differs per head favours the larger ones, as in kvpress), alpha=0.2.
    """

    name = "adakv"
    base: str = param("snapkv", base_name, "a registered key scorer")
    alpha: float = param(0.2, number(minimum=0, maximum=1), "in [0, 1]")

    def check(self) -> str | None:
        if self.scorer.sets != "kv":
            return f"its base {self.base!r} keeps one set per layer or per query head: Ada-KV needs per-head scores"
        return None

    @property
    def allocation(self) -> Allocation:
        return AdaptiveHeads(self.alpha)
