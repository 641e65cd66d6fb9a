"""`dump --store stats,kv` / `stats,keys`: the prompt's post-RoPE keys (and values) from the dump's
own forward; the answer pass reads them instead of a prefill, the key scorers (knorm, keydiff) rank
from them. Numba equals the numpy references; kept sets equal a brute-force recomputation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from analyze import answers, keptsets, policies
from analyze.policies import budget, keep
from core import schema
from core.lm import decode
from core.runstore import plan_store
from tests.conftest import answer_document, run_cli
from tests.test_policies import random_doclayer

SMOL = ["--lengths", "512", "--depths", "0.3,0.7", "--samples", "2", "--window", "16", "--no-progress"]


@pytest.fixture(scope="module")
def kv_store(tmp_path_factory) -> str:
    """The suite's SmolLM2 documents (those of `smol_store`) dumped with their keys and values."""
    out = str(tmp_path_factory.mktemp("kv_store") / "run.zarr")
    r = run_cli("dump", *SMOL, "--store", "stats,kv", "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def with_keys(seed: int):
    x, _ = random_doclayer(seed=seed)
    rng = np.random.default_rng(seed)
    keys = rng.normal(size=(x.kv_heads, x.n, 8)).astype(np.float32) * rng.random((x.kv_heads, x.n, 1)).astype(
        np.float32
    )
    import dataclasses

    return dataclasses.replace(x, key_cache=keys)


@pytest.mark.parametrize("spec", ["knorm", "keydiff", "adakv:base=knorm", "pyramidkv:base=keydiff"])
@pytest.mark.parametrize("gqa", ["kv", "head"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_key_scorers_numba_equals_reference(spec, gqa, sparsity):
    x = with_keys(len(spec))
    p = policies.parse_method(spec)
    k = budget(sparsity, x.n)
    if p.allocation.per_layer or p.name == "pyramidkv":
        from analyze import budgets

        doc = budgets.Document(x.n, 1, x.heads, x.kv_heads, (0,), lambda _: x)
        fast = [m for *_, m in keptsets.iter_kept(x, [p], [sparsity], gqa, False, doc, 0)][0]
        doc = budgets.Document(x.n, 1, x.heads, x.kv_heads, (0,), lambda _: x)
        ref = [m for *_, m in keptsets.iter_kept(x, [p], [sparsity], gqa, True, doc, 0)][0]
        assert fast.sum() == k * x.heads
    else:
        fast, ref = keep(p, x, k, gqa), keep(p, x, k, gqa, reference=True)
        assert (fast.sum(1) == k).all()
    np.testing.assert_array_equal(fast, ref)


def test_knorm_and_keydiff_from_their_definitions():
    x = with_keys(3)
    k = 40
    keys = x.key_cache.astype(np.float64)
    kept = keep(policies.parse_method("knorm"), x, k)
    for h in range(x.kv_heads):  # the k smallest norms of the kv head, shown to its 3 query heads
        want = np.zeros(x.n, bool)
        want[np.argsort(np.linalg.norm(keys[h], axis=-1), kind="stable")[:k]] = True
        for q in range(3 * h, 3 * h + 3):
            np.testing.assert_array_equal(kept[q], want)
    kept = keep(policies.parse_method("keydiff"), x, k)
    for h in range(x.kv_heads):
        unit = keys[h] / np.linalg.norm(keys[h], axis=-1, keepdims=True)
        mean = unit.mean(0)
        cos = unit @ mean / np.linalg.norm(mean)
        want = np.zeros(x.n, bool)
        want[np.argsort(cos, kind="stable")[:k]] = True
        np.testing.assert_array_equal(kept[3 * h], want)


@pytest.mark.slow
def test_stored_keys_equal_a_prefill_and_the_statistics_are_unchanged(kv_store, smol_store):
    g = zarr.open_group(kv_store, mode="r")["len_512"]
    plain = zarr.open_group(smol_store, mode="r")["len_512"]
    assert schema.run_group_differences(g, full=False, kv=True) == []
    assert "key_cache" not in plain
    np.testing.assert_array_equal(g["input_ids"][:], plain["input_ids"][:])
    for var in ("colsum", "window", "blocks", "colsum_ctx"):  # bit-identical statistics
        np.testing.assert_array_equal(g[var][0, 0], plain[var][0, 0])
    lm = answers.load_model("smollm2-135m")
    ids = np.asarray(g["input_ids"][0, 0])
    with torch.no_grad():
        cache = decode.prefill(lm.model, torch.as_tensor(ids[:-1])[None])[1]
    keys, values = np.asarray(g["key_cache"][0, 0]), np.asarray(g["value_cache"][0, 0])
    assert keys.shape == (30, 3, 512, 64)
    for layer, cached in enumerate(cache.layers):  # within float32 rounding: the capture's attention
        for got, want in ((keys[layer, :, :511], cached.keys[0]), (values[layer, :, :511], cached.values[0])):
            want = want.numpy()
            assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), layer


@pytest.mark.slow
def test_stored_cache_gives_the_answers_of_a_prefill(kv_store, smol_store):
    """The answer pass reads the stored cache instead of prefilling: every answer the same, both settings."""
    methods = ("full", "random", "streaming", "h2o", "snapkv", "tova", "cab")
    for setting in ("aware", "agnostic"):
        for d, s in ((0, 0), (1, 1)):
            a = answer_document(kv_store, 512, d, s, methods, [0.5, 0.9], setting=setting)
            b = answer_document(smol_store, 512, d, s, methods, [0.5, 0.9], setting=setting)
            np.testing.assert_array_equal(a["ids"], b["ids"])
            np.testing.assert_array_equal(a["answer"], b["answer"])


@pytest.mark.slow
def test_key_scorers_on_a_real_dump_equal_brute_force(kv_store, smol_store, tmp_path):
    plan = plan_store(kv_store)
    for setting in ("aware", "agnostic"):
        ds = keptsets.kept_sets(kv_store, 512, 1, 1, 20, ["knorm", "keydiff"], [0.9], setting=setting)
        keys = np.asarray(zarr.open_group(kv_store, mode="r")["len_512"]["key_cache"][1, 1, 20]).astype(
            np.float64
        )
        if setting == "agnostic":  # the context alone is pruned; the question's keys are kept on top
            c = int(np.flatnonzero(zarr.open_group(kv_store, mode="r")["len_512"]["question"][1, 1])[0])
            keys = keys[:, :c]
        n = keys.shape[1]
        k = budget(0.9, n)
        norms = np.linalg.norm(keys, axis=-1)
        unit = keys / norms[..., None]
        mean = unit.mean(1, keepdims=True)
        cos = (unit * mean).sum(-1) / np.linalg.norm(mean, axis=-1)
        for name, score in (("knorm", norms), ("keydiff", cos)):
            kept = ds.kept.sel(policy=name).values[0]
            for h in range(plan.kv_heads):
                want = np.ones(512, bool)
                want[:n] = False
                want[np.argsort(score[h], kind="stable")[:k]] = True
                for q in range(3 * h, 3 * h + 3):
                    np.testing.assert_array_equal(kept[q], want, err_msg=f"{name} {setting} head {q}")
    r = run_cli(
        "analyze", smol_store, "--methods", "knorm", "--out", str(tmp_path / "r.zarr"), "--workers", "1"
    )
    assert r.returncode == 2 and "--store stats,keys" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r.zarr").exists()


def test_store_parts_are_checked(tmp_path):
    r = run_cli("dump", *SMOL, "--store", "stats,keyz", "--out", str(tmp_path / "bad.zarr"))
    assert r.returncode == 2 and "keyz" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad.zarr").exists()
