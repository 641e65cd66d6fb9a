"""Budgets: how many keys each (layer, head) of a document keeps.

Keep-set selection is rank -> allocate -> select. A policy's `allocation` spreads the document's
budget over its prunable layers and their heads; it sees every prunable layer of the document
(`Document.layer(l)` loads one's statistics) and returns a (layer, head) array. The total is
asserted equal to the fixed-budget total: budget_for(k, N) keys for every head of every prunable
layer, so every policy at one sparsity spends the same number of keys on a document.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from core.runstore import DocLayer


@dataclass
class Document:
    """The layers of one document an allocation may look at."""

    n: int
    layers: int
    heads: int
    kv_heads: int
    prunable: tuple[int, ...]
    load: Callable[[int], DocLayer] | None = None  # layer -> its statistics (all a policy reads)
    _cache: dict = field(default_factory=dict, repr=False)

    def layer(self, layer: int) -> DocLayer:
        if layer not in self.prunable:
            raise ValueError(f"layer {layer} is not pruned in this document")
        if self.load is None:
            raise ValueError(
                "this document was given without its statistics: the allocation cannot read them"
            )
        if layer not in self._cache:
            self._cache[layer] = self.load(layer)
        return self._cache[layer]


class Allocation:
    """Spreads a document's budget: `allocate(doc, k) -> (layer, head)` int keys, where k is the
    fixed per-head budget; layers that are not pruned get 0."""

    name = "allocation"

    def allocate(self, doc: Document, k: int, policy) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class Uniform(Allocation):
    """The same k for every head of every prunable layer (every policy so far)."""

    name = "uniform"

    def allocate(self, doc: Document, k: int, policy) -> np.ndarray:
        out = np.zeros((doc.layers, doc.heads), dtype=np.int64)
        out[list(doc.prunable)] = k
        return out


UNIFORM = Uniform()


def allocate(policy, doc: Document, k: int) -> np.ndarray:
    """(layer, head) budgets of `policy` on `doc` under the fixed budget k = round((1 - s) N); the
    total is checked against the fixed-budget total (an allocation that spends more or less than the
    others at the same sparsity is a bug, never a result)."""
    fixed = policy.budget_for(k, doc.n)
    budgets = np.asarray(getattr(policy, "allocation", UNIFORM).allocate(doc, fixed, policy), dtype=np.int64)
    if budgets.shape != (doc.layers, doc.heads):
        raise ValueError(
            f"{policy.name}: allocation gave shape {budgets.shape}, not {(doc.layers, doc.heads)}"
        )
    want = fixed * doc.heads * len(doc.prunable)
    if int(budgets.sum()) != want or (budgets < 0).any() or (budgets > doc.n).any():
        raise AssertionError(
            f"{policy.name}: its allocation keeps {int(budgets.sum())} keys on the document, not the "
            f"fixed-budget total {want} (k = {fixed} for {doc.heads} heads x {len(doc.prunable)} layers), "
            f"or a head's budget lies outside 0..{doc.n}"
        )
    return budgets
