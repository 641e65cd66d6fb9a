"""The kept sets of (policy, sparsity) on one document-layer, exactly as analyze scores them.

This is the one place where a policy meets a budget: rank -> allocate (`analyze.budgets`, over every
prunable layer of the document) -> select. The engine's metrics, viz's kept-set pictures and the
answer pass all take their masks from here, with the same seed rule, GQA granularity, budget rule
and setting (`core.settings`), so a picture or an answer is never of a different set than the one
that was scored.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import xarray as xr

from analyze import budgets, policies
from analyze.policies import DocLayer, Policy, budget, keep
from core import runstore, schema, settings
from core.runstore import READABLE


def doclayer_seed(seed: int, depth: int, sample: int, layer: int) -> int:
    """The seed a seeded policy (random) sees on one document-layer."""
    return int(np.random.SeedSequence([seed, depth, sample, layer]).generate_state(1)[0])


def policy_view(policy: Policy, x: DocLayer) -> DocLayer:
    """A block policy asking for larger blocks sees the stored blocks coarsened."""
    if not policy.block or policy.block == x.block:
        return x
    return x.coarsen(policy.block)


def kept(
    policy: Policy,
    x: DocLayer,
    k: int,
    gqa: str = "kv",
    reference: bool = False,
    heads_budget=None,
    setting=None,
) -> np.ndarray:
    """(head, key) bool: the keys `policy` keeps under the fixed budget k (`heads_budget`: the
    allocated budget of each head of this layer; None: k each). On a context-only view (the agnostic
    setting) the question's keys, appended after pruning, are kept on top: the mask covers the prompt."""
    out = keep(policy, policy_view(policy, x), k, gqa, reference, heads_budget, setting)
    if x.full_n > x.n:
        out = np.pad(out, ((0, 0), (0, x.full_n - x.n)), constant_values=True)
    return out


def document_of(plan, n: int, load=None, doc: tuple[int, int] | None = None) -> budgets.DocumentLayers:
    """The document an allocation sees: its prunable layers, `load(layer)` for their statistics, and
    where it lies in the store (`doc` = (depth index, sample)) for allocations calibrated on others."""
    windows = plan.windows
    return budgets.DocumentLayers(
        n,
        plan.layers,
        plan.heads,
        plan.kv_heads,
        tuple(layer for layer in range(plan.layers) if schema.prunable(windows[layer], n)),
        load,
        where=None if doc is None else (plan.path, n, *doc),
    )


def load_layer(
    path: str,
    n: int,
    d: int,
    s: int,
    layer: int,
    kv_heads: int,
    seed: int,
    reads,
    setting="aware",
    document: tuple | None = None,
):
    """(statistics, token masks) of one document-layer, as `setting` reads them, with the layer's seed
    (`document`: `runstore.open_document`'s, shared by the document's layers)."""
    shown = settings.get(setting)
    return runstore.load_doclayer(
        path,
        n,
        d,
        s,
        layer,
        kv_heads,
        doclayer_seed(seed, d, s, layer),
        reads,
        shown.stored,
        shown.context_only,
        document,
    )


def loader(
    path: str,
    n: int,
    d: int,
    s: int,
    kv_heads: int,
    seed: int,
    reads,
    setting: str = "aware",
    opened: tuple | None = None,
):
    """layer -> that layer's statistics of one document (what `document_of` hands an allocation); the
    store's group and the document's token masks are read once for all its layers (`opened`: already
    read, `runstore.open_document`)."""
    document: list = [] if opened is None else [opened]

    def load(layer: int) -> DocLayer:
        if not document:
            document.append(runstore.open_document(path, n, d, s))
        return load_layer(path, n, d, s, layer, kv_heads, seed, reads, setting, document[0])[0]

    return load


def iter_kept(
    x: DocLayer,
    pols: Sequence[Policy],
    sparsities: Sequence[float],
    gqa: str = "kv",
    reference: bool = False,
    doc: budgets.DocumentLayers | None = None,
    layer: int | None = None,
    setting: str = "aware",
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(sparsity index, policy index, (head, key) mask) for every pair, sparsity-major, on `layer`
    of `doc` (a document-layer given alone is one layer with every head at the fixed budget)."""
    if doc is None:
        doc, layer = budgets.DocumentLayers(x.n, 1, x.heads, x.kv_heads, (0,), lambda _: x), 0
        doc._cache[0] = x
    shown = settings.get(setting)
    doc.n = x.n  # the cache being pruned: the context alone in the agnostic setting
    doc.setting = shown
    if layer in doc.prunable:
        doc._cache.setdefault(layer, x)  # an allocation reading this layer reuses what is loaded
    for j, sp in enumerate(sparsities):
        k = budget(sp, x.n)
        for i, p in enumerate(pols):
            key = ("budgets", policies.label(p), k, reference)
            if getattr(p, "allocation", budgets.UNIFORM).per_layer:  # reads this layer alone
                key += (layer,)
                if key not in doc._cache:
                    doc._cache[key] = budgets.allocate_layer(p, doc, k, layer, reference)
                yield j, i, kept(p, x, k, gqa, reference, doc._cache[key], shown)
                continue
            if key not in doc._cache:
                doc._cache[key] = budgets.allocate(p, doc, k, reference)
            yield j, i, kept(p, x, k, gqa, reference, doc._cache[key][layer], shown)


def reads_of(pols: Sequence[Policy]) -> tuple[str, ...]:
    """The statistics a set of policies reads (with what their comparisons read)."""
    need = set()
    for p in pols:
        need.update(p.reads)
        for ref in p.compare_with:
            need.update(policies.default(ref).reads)
    return tuple(s for s in READABLE if s in need)


def _parse(pols) -> list[Policy]:
    return [policies.parse_policy(p) if isinstance(p, str) else p for p in pols]


def kept_sets(
    store: str,
    length: int,
    depth: int,
    sample: int,
    layer: int,
    pols,
    sparsities: Sequence[float],
    gqa: str = "kv",
    seed: int = 0,
    setting: str = "aware",
) -> xr.Dataset:
    """`kept` (policy, sparsity, head, key) of one document-layer of a RUN.zarr, with `needle` and
    `question` (key,). `depth` and `sample` are indices; `pols` are policies or their labels."""
    pols = _parse(pols)
    plan = runstore.plan_store(store)
    reads = reads_of(pols)
    x, token_masks = load_layer(store, length, depth, sample, layer, plan.kv_heads, seed, reads, setting)
    masks = np.zeros((len(pols), len(sparsities), x.heads, x.full_n or x.n), dtype=bool)
    load = loader(store, length, depth, sample, plan.kv_heads, seed, reads, setting)
    doc = document_of(plan, length, load, (depth, sample))
    for j, i, m in iter_kept(x, pols, sparsities, gqa, doc=doc, layer=layer, setting=setting):
        masks[i, j] = m
    return xr.Dataset(
        {
            "kept": ((schema.POLICY, "sparsity", "head", "key"), masks),
            **{
                name: (("key",), mask)
                for name, mask in token_masks.items()
                if name in schema.document_masks()
            },
        },
        coords={
            schema.POLICY: [policies.label(p) for p in pols],
            "sparsity": list(sparsities),
            "head": np.arange(x.heads),
            "key": np.arange(x.full_n or x.n),
        },
        attrs={
            "length": length,
            "depth": depth,
            "sample": sample,
            "layer": layer,
            "gqa": gqa,
            "seed": seed,
            "setting": setting,
            "budgets": [budget(sp, x.n) for sp in sparsities],  # of the context alone, agnostic
        },
    )


def kept_sets_scored(
    results: xr.Dataset,
    store: str,
    length: int,
    depth: int,
    sample: int,
    layer: int,
    pols=None,
    sparsities=None,
) -> xr.Dataset:
    """The kept sets behind a RESULTS dataset's numbers: its policies, gqa and seed (from its attrs)."""
    pols = list(results[schema.POLICY].values) if pols is None else pols
    sparsities = [float(s) for s in results.sparsity.values] if sparsities is None else sparsities
    return kept_sets(
        store,
        length,
        depth,
        sample,
        layer,
        [str(p) for p in pols],
        sparsities,
        gqa=str(results.attrs.get("gqa", "kv")),
        seed=int(results.attrs.get("seed", 0)),
        setting=str(results.attrs.get("setting", "aware")),
    )
