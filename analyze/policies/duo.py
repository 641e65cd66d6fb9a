from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from analyze.budgets import Allocation, DocumentLayers, spread
from analyze.policies.base import DocLayer, Policy, Ranking, fold_of, param
from core import schema
from core.errors import UsageError
from core.optionkit import integer


@lru_cache(maxsize=16)
def fold_scores(path: str, fold: int, kv_heads: int) -> np.ndarray:
    """(layer, kv_head): the mean attention mass the answer position puts on the target's tokens
    (every copy), over the finished documents of `fold` at every length; each kv head's group of
    query heads averaged. The lab's retrieval-head criterion, on calibration documents."""
    from core.runstore import _open, plan_store

    plan = plan_store(path)
    root = _open(path)
    total, count = None, 0
    for n in plan.lengths:
        g = root[schema.group_name(n)]
        target = "target" if "target" in g else "needle"
        for d, s in zip(*np.nonzero(plan.done[n])):
            if fold_of(int(d), int(s)) != fold:
                continue
            rows = np.asarray(g["window"][d, s, :, :, -1, :], dtype=np.float64)  # (layer, head, key)
            mass = rows[..., np.asarray(g[target][d, s], dtype=bool)].sum(-1)  # (layer, head)
            mass = mass.reshape(mass.shape[0], kv_heads, -1).mean(-1)
            total = mass if total is None else total + mass
            count += 1
    if not count:
        raise UsageError(
            f"duo finds its retrieval heads on the documents of the other calibration fold, and {path!r} "
            f"has no finished document in fold {fold} ((depth index + sample) % 2): dump two depths or samples"
        )
    return total / count


@dataclass(frozen=True)
class Retrieval(Allocation):
    sinks: int
    recent: int
    name = "retrieval heads"

    def allocate(self, doc: DocumentLayers, k: int, policy) -> np.ndarray:
        if doc.where is None:
            raise ValueError("duo needs to know where the document lies in its store (its calibration fold)")
        path, _, d, s = doc.where
        layers = list(doc.prunable)
        g = doc.heads // doc.kv_heads
        units = len(layers) * doc.kv_heads  # budgets are per kv head: a group's query heads share one
        total = k * units
        floor = min(k, self.sinks + self.recent)  # what a streaming head keeps at least
        r = 0 if doc.n <= floor else max(0, min(units, (total - units * floor) // (doc.n - floor)))
        score = fold_scores(path, 1 - fold_of(d, s), doc.kv_heads)[layers].ravel()
        order = np.lexsort((np.arange(units), -score))  # best first; the earlier layer, head on ties
        per = np.zeros(units, dtype=np.int64)
        per[order[:r]] = doc.n  # retrieval heads keep every key
        rest = order[r:]
        if len(rest):
            per[rest] = spread(total - r * doc.n, np.full(len(rest), (total - r * doc.n) / len(rest)), doc.n)
        out = np.zeros((doc.layers, doc.heads), dtype=np.int64)
        out[layers] = np.repeat(per.reshape(len(layers), doc.kv_heads), g, axis=1)
        return out


@dataclass(frozen=True)
class Duo(Policy):
    """DuoAttention's split: retrieval heads keep the whole cache, streaming heads keep attention sinks
    and recent keys, as many retrieval heads as the fixed budget's total pays for (each streaming head
    keeping at least sinks + recent; the rest shared evenly) (Xiao et al. 2025, "DuoAttention:
    Efficient Long-Context LLM Inference with Retrieval and Streaming Heads", arXiv:2410.10819).
    Retrieval heads are kv heads ranked by the attention mass the answer position puts on the target,
    measured on the documents of the other calibration fold ((depth index + sample) % 2), never on the
    scored one; the paper learns its gates by optimisation instead.

    Parameters: sinks=4, recent=64 (a streaming head's least budget is sinks + recent).
    """

    name = "duo"
    calibrates_on_folds = True
    compare_with = ("h2o", "snapkv")  # Jaccard with accumulated attention and the window's votes
    sinks: int = param(4, integer(minimum=0), ">= 0")
    recent: int = param(64, integer(minimum=1), ">= 1")

    @property
    def allocation(self) -> Allocation:
        return Retrieval(self.sinks, self.recent)

    def minimum_keys(self, observed: int) -> int:
        return self.sinks + 1

    def rank(self, x: DocLayer, k: int) -> Ranking:
        forced = np.zeros((x.heads, x.n), bool)
        forced[:, : self.sinks] = True
        recency = np.broadcast_to(np.arange(x.n, dtype=np.float64), (x.heads, x.n))
        return Ranking(primary=recency, forced=forced)
