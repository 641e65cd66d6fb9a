"""Budgets: how many keys each (layer, head) of a document keeps.

Keep-set selection is rank -> allocate -> select. A policy's `allocation` spreads the document's
budget over its prunable layers and their heads; it sees every prunable layer of the document
(`DocumentLayers.layer(l)` loads one's statistics) and returns a (layer, head) array. The total is
asserted equal to the fixed-budget total: budget_for(k, N) keys for every head of every prunable
layer, so every policy at one sparsity spends the same number of keys on a document.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from core.runstore import DocLayer


@dataclass
class DocumentLayers:
    """The layers of one document an allocation may look at."""

    n: int
    layers: int
    heads: int
    kv_heads: int
    prunable: tuple[int, ...]
    load: Callable[[int], DocLayer] | None = None  # layer -> its statistics (all a policy reads)
    setting: object = None  # the `core.settings.Setting` the policies see the layers under
    where: tuple | None = (
        None  # (store path, length, depth index, sample): what a calibrated allocation reads
    )
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

    def shown(self, layer: int) -> DocLayer:
        """Layer `layer`'s statistics as the document's setting lets a policy see them."""
        x = self.layer(layer)
        return x if self.setting is None else x.visible(self.setting)


def spread(total: int, shares: np.ndarray, cap: int) -> np.ndarray:
    """Integers in 0..cap, one per share, summing to exactly `total`: each share's floor, then one
    more for the largest fractional parts (the earlier index first on ties). `shares` are real
    budgets whose sum is `total`, each within 0..cap."""
    shares = np.clip(np.asarray(shares, dtype=np.float64), 0, cap)
    out = np.floor(shares + 1e-9).astype(np.int64)
    left = int(total - out.sum())
    if left < 0 or left > len(out):
        raise ValueError(f"shares sum to {shares.sum():g}, not {total}")
    frac = shares - out
    order = np.lexsort((np.arange(len(out)), -frac))  # largest fraction first, earlier on ties
    room = order[out[order] < cap][:left]
    out[room] += 1
    return out


class Allocation:
    """Spreads a document's budget: `allocate(doc, k) -> (layer, head)` int keys, where k is the
    fixed per-head budget; layers that are not pruned get 0. An allocation that moves budget only
    between the heads of a layer sets `per_layer` and has `allocate_layer(doc, layer, k) -> (head,)`
    instead (it then reads that layer alone)."""

    name = "allocation"
    per_layer = False
    has_reference = False  # `allocate` takes reference=True for its plain numpy twin

    def allocate(self, doc: DocumentLayers, k: int, policy) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class Uniform(Allocation):
    """The same k for every head of every prunable layer (every policy so far)."""

    name = "uniform"

    def allocate(self, doc: DocumentLayers, k: int, policy) -> np.ndarray:
        out = np.zeros((doc.layers, doc.heads), dtype=np.int64)
        out[list(doc.prunable)] = k
        return out


UNIFORM = Uniform()


def allocate_layer(policy, doc: DocumentLayers, k: int, layer: int, reference: bool = False) -> np.ndarray:
    """(head,) budgets of `policy` on one layer of `doc`: a `per_layer` allocation's, checked to
    keep the layer's fixed-budget total, else the layer's row of `allocate`."""
    alloc = getattr(policy, "allocation", UNIFORM)
    if not alloc.per_layer:
        return allocate(policy, doc, k, reference)[layer]
    fixed = policy.budget_for(k, doc.n)
    row = np.asarray(alloc.allocate_layer(doc, layer, fixed, policy, reference=reference), dtype=np.int64)
    if (
        row.shape != (doc.heads,)
        or int(row.sum()) != fixed * doc.heads
        or (row < 0).any()
        or (row > doc.n).any()
    ):
        raise AssertionError(
            f"{policy.name}: its allocation keeps {int(row.sum())} keys on layer {layer}, not the fixed-budget "
            f"total {fixed * doc.heads} (k = {fixed} for {doc.heads} heads), or a head's budget lies outside 0..{doc.n}"
        )
    return row


def allocate(policy, doc: DocumentLayers, k: int, reference: bool = False) -> np.ndarray:
    """(layer, head) budgets of `policy` on `doc` under the fixed budget k = round((1 - s) N); the
    total is checked against the fixed-budget total (an allocation that spends more or less than the
    others at the same sparsity is a bug, never a result)."""
    fixed = policy.budget_for(k, doc.n)
    alloc = getattr(policy, "allocation", UNIFORM)
    if alloc.per_layer:
        budgets = np.zeros((doc.layers, doc.heads), dtype=np.int64)
        for layer in doc.prunable:
            budgets[layer] = allocate_layer(policy, doc, k, layer, reference)
        return budgets
    if alloc.has_reference:
        budgets = alloc.allocate(doc, fixed, policy, reference=reference)
    else:
        budgets = alloc.allocate(doc, fixed, policy)
    budgets = np.asarray(budgets, dtype=np.int64)
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
