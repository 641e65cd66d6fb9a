"""Budget allocations (PyramidKV, Ada-KV): the document's total is the fixed budget's, the numba
path equals its numpy reference, and on a real dump the kept sets equal a brute-force recomputation."""

from __future__ import annotations

import numpy as np
import pytest

from analyze import budgets, keptsets, policies
from analyze.policies import budget, select_reference
from analyze.policies.adakv import head_budgets, head_budgets_reference
from analyze.policies.pyramidkv import pyramid_shares
from core.runstore import plan_store
from tests.test_policies import random_doclayer


def kvpress_pyramid(k, n, layers, beta, window):
    """kvpress's PyramidKVPress.get_layer_budget, layer by layer, as it is written there."""
    out = []
    for layer in range(layers):
        cap = window + n * (k / n)  # max_capacity_prompt with q_len * (1 - ratio) = k
        lo = (cap - window) / beta
        hi = (cap - window) * 2 - lo
        if hi >= n - window:
            hi = n - window
            lo = (cap - window) * 2 - hi
        if not (n >= hi >= lo >= window):
            out.append(float(k))
            continue
        steps = (hi - lo) / (layers - 1)
        out.append(hi - layer * steps)
    return np.array(out)


@pytest.mark.parametrize("n", [512, 2048, 4096])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95])
@pytest.mark.parametrize("beta", [1, 5, 20])
def test_pyramid_schedule_is_kvpress_with_an_exact_total(n, sparsity, beta):
    k, layers = budget(sparsity, n), 30
    shares = pyramid_shares(k, n, layers, beta, 64)
    np.testing.assert_allclose(shares, kvpress_pyramid(k, n, layers, beta, 64))
    doc = budgets.DocumentLayers(n, layers, 9, 3, tuple(range(layers)))
    got = budgets.allocate(policies.parse_policy(f"pyramidkv:beta={beta}"), doc, k)
    assert got.sum() == k * 9 * layers  # the fixed budget's total, exactly (asserted in code too)
    per_layer = got[:, 0]
    assert (got == per_layer[:, None]).all() and (np.diff(per_layer) <= 0).all()
    assert np.abs(per_layer - shares).max() < 1  # kvpress rounds each layer alone; we keep the total


def test_pyramid_only_spreads_over_prunable_layers():
    doc = budgets.DocumentLayers(1000, 6, 4, 1, (0, 2, 5))  # Gemma-like: sliding layers are not pruned
    got = budgets.allocate(policies.parse_policy("pyramidkv:beta=4:window=8"), doc, 300)
    assert got[[1, 3, 4]].sum() == 0 and got.sum() == 300 * 4 * 3
    assert got[0, 0] > got[2, 0] > got[5, 0]


@pytest.mark.parametrize("seed", range(4))
def test_adakv_head_budgets_numba_equals_reference(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        rows, n = int(rng.integers(1, 6)), int(rng.integers(1, 50))
        primary = np.round(rng.random((rows, n)), 1)  # many ties
        secondary = np.round(rng.random((rows, n)), 1) * int(rng.integers(0, 2))
        forced = rng.random((rows, n)) < 0.1
        k = int(rng.integers(0, n + 1))
        safe = int(k * rng.choice([0.0, 0.2, 0.5, 1.0]))
        fast = head_budgets(primary, secondary, forced, k * rows, safe)
        ref = head_budgets_reference(primary, secondary, forced, k * rows, safe)
        np.testing.assert_array_equal(fast, ref)
        assert fast.sum() == k * rows and (fast >= min(safe, n)).all() and (fast <= n).all()


@pytest.mark.parametrize(
    "spec", ["pyramidkv", "pyramidkv:base=h2o:beta=4:window=16", "adakv", "adakv:base=h2o:alpha=0.5"]
)
@pytest.mark.parametrize("gqa", ["kv", "head"])
def test_allocations_numba_equals_reference_over_a_document(spec, gqa):
    layers = [random_doclayer(seed=s)[0] for s in range(4)]
    p = policies.parse_policy(spec)
    for sparsity in (0.5, 0.9):
        k = budget(sparsity, 300)
        masks = {}
        for reference in (False, True):
            doc = budgets.DocumentLayers(300, 4, 6, 2, (0, 1, 2, 3), lambda layer: layers[layer])
            masks[reference] = [
                m
                for layer in range(4)
                for _, _, m in keptsets.iter_kept(layers[layer], [p], [sparsity], gqa, reference, doc, layer)
            ]
        for fast, ref in zip(masks[False], masks[True]):
            np.testing.assert_array_equal(fast, ref)
        kept = np.stack(masks[False])
        assert kept.sum() == k * 6 * 4  # the document keeps what a fixed budget keeps
        assert (kept.reshape(4, 2, 3, 300).sum(-1) == kept.reshape(4, 2, 3, 300).sum(-1)[..., :1]).all()


def brute_adakv(x, scorer, k, alpha):
    """Ada-KV from its definition, as kept masks: per kv head (group-mean statistics) the base's own
    order; each head's first alpha*k, then the highest of all heads together until the layer's
    budget; no budgets in between."""
    xg = x.group_mean()
    r = scorer.rank_reference(xg, k)
    rows, n = r.primary.shape
    forced = np.zeros((rows, n), bool) if r.forced is None else r.forced
    secondary = np.zeros((rows, n)) if r.secondary is None else r.secondary
    entries = sorted(
        (not forced[h, j], -float(r.primary[h, j]), -float(secondary[h, j]), h, j)
        for h in range(rows)
        for j in range(n)
    )
    kept = np.zeros((rows, n), bool)
    safe = int(k * alpha)
    for h in range(rows):
        for e in [e for e in entries if e[3] == h][:safe]:
            kept[h, e[4]] = True
    left = k * rows - kept.sum()
    for e in entries:
        if left == 0:
            break
        if not kept[e[3], e[4]]:
            kept[e[3], e[4]] = True
            left -= 1
    return np.repeat(kept, x.heads // x.kv_heads, axis=0)


@pytest.mark.slow
def test_kept_sets_on_a_real_dump_equal_brute_force(smol_store):
    plan = plan_store(smol_store)
    sparsity = 0.9
    ds = keptsets.kept_sets(smol_store, 512, 1, 0, 20, ["adakv", "pyramidkv"], [sparsity])
    x, _ = keptsets.load_layer(smol_store, 512, 1, 0, 20, plan.kv_heads, 0, ("window_sum", "window"))
    k = budget(sparsity, 512)
    scorer = policies.default("snapkv")
    np.testing.assert_array_equal(ds.kept.sel(policy="adakv").values[0], brute_adakv(x, scorer, k, 0.2))
    # PyramidKV: SnapKV's reference order with layer 20's share of kvpress's schedule
    shares = pyramid_shares(k, 512, plan.layers, 20, 64)
    per_layer = budgets.spread(k * plan.layers, shares, 512)
    r = scorer.rank_reference(x.group_mean(), k)
    want = np.repeat(select_reference(r.primary, per_layer[20], r.forced, r.secondary), 3, axis=0)
    np.testing.assert_array_equal(ds.kept.sel(policy="pyramidkv").values[0], want)
    assert ds.kept.sel(policy="pyramidkv").values[0].sum() == per_layer[20] * 9


@pytest.mark.slow
def test_cab_forman_on_a_real_dump_equals_the_textbook_matrices(smol_store):
    """cab_forman's kept sets on the real SmolLM2 dump equal those from the full textbook curvature
    matrices (`forman_weighted` / `forman_augmented` over every edge, numpy) and `select_reference`."""
    from analyze.policies import keep

    plan = plan_store(smol_store)
    specs = ["cab_forman", "cab_forman:form=augmented"]
    ds = keptsets.kept_sets(smol_store, 512, 0, 1, 21, specs, [0.5, 0.9])
    x, _ = keptsets.load_layer(smol_store, 512, 0, 1, 21, plan.kv_heads, 0, ("colsum", "blocks"))
    for spec in specs:
        p = policies.parse_policy(spec)
        for j, sp in enumerate((0.5, 0.9)):
            want = keep(p, x, budget(sp, 512), reference=True)
            np.testing.assert_array_equal(ds.kept.sel(policy=spec).values[j], want)


@pytest.mark.slow
def test_duo_retrieval_heads_come_from_the_other_fold_and_keep_everything(smol_store):
    """duo: as many retrieval kv heads as the fixed total pays for, chosen by the answer row's mass on
    the target measured on the other fold's documents only; they keep every key, the streaming heads
    keep sinks + recent, and the document's total is the fixed budget's."""
    import zarr

    from analyze.policies.duo import fold_scores

    plan = plan_store(smol_store)
    g = zarr.open_group(smol_store, mode="r")["len_512"]
    d, s = 0, 1  # fold 1: its heads come from documents (0, 0) and (1, 1)
    brute = np.zeros((plan.layers, plan.kv_heads))
    for dd, ss in ((0, 0), (1, 1)):
        for layer in range(plan.layers):
            row = np.asarray(g["window"][dd, ss, layer, :, -1, :], dtype=np.float64)
            mass = row[:, np.asarray(g["target"][dd, ss], bool)].sum(-1)
            brute[layer] += mass.reshape(plan.kv_heads, -1).mean(-1) / 2
    np.testing.assert_allclose(fold_scores(smol_store, 0, plan.kv_heads), brute)
    sparsity = 0.5
    k = budget(sparsity, 512)
    units = plan.layers * plan.kv_heads
    r = (k * units - units * 68) // (512 - 68)
    best = set(np.lexsort((np.arange(units), -brute.ravel()))[:r])
    doc = keptsets.document_of(
        plan, 512, keptsets.loader(smol_store, 512, d, s, plan.kv_heads, 0, ()), (d, s)
    )
    got = budgets.allocate(policies.parse_policy("duo"), doc, k)
    assert got.sum() == k * plan.heads * plan.layers
    for layer in range(plan.layers):
        for h in range(plan.kv_heads):
            heads = got[layer, 3 * h : 3 * h + 3]
            assert (heads == heads[0]).all()
            assert (heads[0] == 512) == (layer * plan.kv_heads + h in best)
            assert heads[0] >= 68
    ds = keptsets.kept_sets(smol_store, 512, d, s, 20, ["duo"], [sparsity])
    kept = ds.kept.values[0, 0]
    for q in range(plan.heads):
        n_kept = got[20, q]
        want = np.zeros(512, bool)
        want[:4] = True
        want[512 - (n_kept - 4) :] = True
        np.testing.assert_array_equal(kept[q], want if n_kept < 512 else np.ones(512, bool))


def test_duo_needs_both_folds(tiny_store, tmp_path):
    from tests.conftest import run_cli

    r = run_cli(
        "analyze", tiny_store, "--policies", "duo", "--out", str(tmp_path / "r.zarr"), "--workers", "1"
    )
    assert r.returncode == 0, r.stderr  # the tiny store has both folds
    one = tmp_path / "one.zarr"
    r = run_cli("dump", "--model", str(plan_store(tiny_store).attrs["model"]["name"]), "--lengths", "200",
                "--depths", "0.5", "--window", "8", "--block", "32", "--out", str(one), "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = run_cli(
        "analyze", str(one), "--policies", "duo", "--out", str(tmp_path / "r2.zarr"), "--workers", "1"
    )
    assert r.returncode == 2 and "calibration fold" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r2.zarr").exists()
