from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from analyze.budgets import Allocation, DocumentLayers
from analyze.policies._keys import per_head
from analyze.policies.adakv import head_budgets, head_budgets_reference
from analyze.policies.base import DocLayer, Policy, Ranking, param, sink_mask
from core import schema
from core.optionkit import integer


@lru_cache(maxsize=8)
def document_scores(path: str, length: int, d: int, s: int, var: str) -> np.ndarray:
    """(layer, kv_head, key) KVzip scores of one document, every layer in one read per layer chunk."""
    from core.runstore import _open, read_floats

    return read_floats(_open(path)[schema.group_name(length)], var, (d, s), path, length)


@dataclass(frozen=True)
class AcrossLayers(Allocation):
    """kvpress's KVzip budget: the document's whole budget goes to the highest-scoring (layer, kv
    head, key) entries of all prunable layers together, the `sinks` first keys of every head first."""

    sinks: int
    name = "across layers"
    has_reference = True

    def scores(self, doc: DocumentLayers, layers: list[int]) -> np.ndarray:
        if doc.where is None:  # a document given with its layers' statistics alone
            return np.stack([doc.shown(layer).kvzip for layer in layers])
        path, n, d, s = doc.where
        var = (doc.setting.stored if doc.setting is not None else {}).get("kvzip", "kvzip")
        return document_scores(path, n, d, s, var)[layers][..., : doc.n]

    def allocate(self, doc: DocumentLayers, k: int, policy, reference: bool = False) -> np.ndarray:
        layers = list(doc.prunable)
        g = doc.heads // doc.kv_heads
        primary = self.scores(doc, layers).reshape(len(layers) * doc.kv_heads, -1).astype(np.float64)
        forced = sink_mask(*primary.shape, min(self.sinks, k))
        count = head_budgets_reference if reference else head_budgets
        per = count(primary, np.zeros_like(primary), forced, k * primary.shape[0], 0)
        out = np.zeros((doc.layers, doc.heads), dtype=np.int64)
        out[layers] = np.repeat(per.reshape(len(layers), doc.kv_heads), g, axis=1)
        return out


@dataclass(frozen=True)
class KVzip(Policy):
    """The keys the model attends to most while it reconstructs the context from its own cache (Kim
    et al. 2025, "KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction",
    arXiv:2505.23416; kvpress's KVzipPress, its default `layerwise=False`). A key's score is its
    largest attention weight over a reconstruction's rows and its kv head's query heads
    (`core.lm.kvzip`, recorded by `dump --store stats,kvzip`); the document's budget goes to the
    highest scores of all layers and kv heads together, so layers and heads keep different numbers of
    keys (the total is every fixed-budget policy's). The `sinks` first keys of every head are kept.
    In `agnostic` the scores are the context's own reconstruction, from its cache before the question.

    Parameters: sinks=4.
    """

    name = "kvzip"
    compare_with = ("h2o", "snapkv")
    reads = ("kvzip",)
    sinks: int = param(4, integer(minimum=0), ">= 0")

    @property
    def allocation(self) -> Allocation:
        return AcrossLayers(self.sinks)

    def minimum_keys(self, observed: int) -> int:
        return self.sinks + 1

    def rank(self, x: DocLayer, k: int) -> Ranking:
        forced = sink_mask(x.heads, x.n, self.sinks)
        return Ranking(primary=per_head(x, np.asarray(x.kvzip, dtype=np.float64)), forced=forced)
