"""`dump --store stats,kv` / `stats,keys` / `queries`: the prompt's post-RoPE keys (and values, and the query moments) from the dump's
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
from tests import conftest
from tests.conftest import answer_document, run_cli
from tests.test_policies import random_doclayer

SMOL = [*conftest.SMOL, "--no-progress"]


@pytest.fixture(scope="module")
def kv_store(tmp_path_factory) -> str:
    """The suite's SmolLM2 documents (those of `smol_store`) dumped with their keys and values."""
    out = str(tmp_path_factory.mktemp("kv_store") / "run.zarr")
    r = run_cli("dump", *SMOL, "--store", "stats,kv,queries", "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def with_keys(seed: int):
    x, _ = random_doclayer(seed=seed)
    rng = np.random.default_rng(seed)
    keys = rng.normal(size=(x.kv_heads, x.n, 8)).astype(np.float32) * rng.random((x.kv_heads, x.n, 1)).astype(
        np.float32
    )
    import dataclasses

    mean = rng.normal(size=(x.heads, 8)).astype(np.float32)
    a = rng.normal(size=(x.heads, 8, 8))
    cov = (a @ a.transpose(0, 2, 1) / 8).astype(np.float32)
    vnorm = rng.random((x.kv_heads, x.n)).astype(np.float32) + 0.5
    return dataclasses.replace(x, key_cache=keys, query_mean=mean, query_cov=cov, value_norm=vnorm)


@pytest.mark.parametrize(
    "spec",
    [
        "knorm",
        "keydiff",
        "adakv:base=knorm",
        "pyramidkv:base=keydiff",
        "expected_attention",
        "expected_attention:covariance=false:vnorm=false",
        "adakv:base=expected_attention",
    ],
)
@pytest.mark.parametrize("gqa", ["kv", "head"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_key_scorers_numba_equals_reference(spec, gqa, sparsity):
    x = with_keys(len(spec))
    p = policies.parse_policy(spec)
    k = budget(sparsity, x.n)
    if p.allocation.per_layer or p.name == "pyramidkv":
        from analyze import budgets

        doc = budgets.DocumentLayers(x.n, 1, x.heads, x.kv_heads, (0,), lambda _: x)
        fast = [m for *_, m in keptsets.iter_kept(x, [p], [sparsity], gqa, False, doc, 0)][0]
        doc = budgets.DocumentLayers(x.n, 1, x.heads, x.kv_heads, (0,), lambda _: x)
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
    kept = keep(policies.parse_policy("knorm"), x, k)
    for h in range(x.kv_heads):  # the k smallest norms of the kv head, shown to its 3 query heads
        want = np.zeros(x.n, bool)
        want[np.argsort(np.linalg.norm(keys[h], axis=-1), kind="stable")[:k]] = True
        for q in range(3 * h, 3 * h + 3):
            np.testing.assert_array_equal(kept[q], want)
    kept = keep(policies.parse_policy("keydiff"), x, k)
    for h in range(x.kv_heads):
        unit = keys[h] / np.linalg.norm(keys[h], axis=-1, keepdims=True)
        mean = unit.mean(0)
        cos = unit @ mean / np.linalg.norm(mean)
        want = np.zeros(x.n, bool)
        want[np.argsort(cos, kind="stable")[:k]] = True
        np.testing.assert_array_equal(kept[3 * h], want)


def test_expected_attention_from_its_definition():
    """kvpress's formula written out per head: softmax over keys [4, n) of k·μ/√d + kᵀΣk/2d, the mean
    over a kv head's 3 query heads, times ||v||; the 4 sinks always kept."""
    x = with_keys(5)
    k = 30
    kept = keep(policies.parse_policy("expected_attention"), x, k)
    keys = x.key_cache.astype(np.float64)
    for h in range(x.kv_heads):
        probs = []
        for q in range(3 * h, 3 * h + 3):
            z = np.array(
                [
                    keys[h, j] @ x.query_mean[q] / np.sqrt(8) + keys[h, j] @ x.query_cov[q] @ keys[h, j] / 16
                    for j in range(4, x.n)
                ]
            )
            probs.append(np.exp(z - z.max()) / np.exp(z - z.max()).sum())
        score = np.mean(probs, axis=0) * x.value_norm[h, 4:]
        want = np.zeros(x.n, bool)
        want[:4] = True
        want[4 + np.argsort(-score, kind="stable")[: k - 4]] = True
        for q in range(3 * h, 3 * h + 3):
            np.testing.assert_array_equal(kept[q], want)


@pytest.mark.slow
def test_stored_query_moments_equal_eager_queries(kv_store):
    """The query moments from the capture's post-RoPE queries, rotated back, equal those of the
    pre-RoPE queries eager attention projects (q_proj hooks), with RoPE's average over the next 512
    positions built from the model's inverse frequencies in float64: both settings' prefills."""
    g = zarr.open_group(kv_store, mode="r")["len_512"]
    lm = answers.load_model("smollm2-135m")
    ids = torch.as_tensor(np.asarray(g["input_ids"][1, 0]))[None]
    c = int(np.flatnonzero(g["question"][1, 0])[0])
    seen = {}
    hooks = [
        layer.self_attn.q_proj.register_forward_hook(
            lambda m, i, o, i_=i: seen.__setitem__(i_, o[0].double())
        )
        for i, layer in enumerate(lm.model.model.layers)
    ]
    try:
        with torch.no_grad():
            lm.model(ids)
    finally:
        for h in hooks:
            h.remove()
    inv = lm.model.model.rotary_emb.inv_freq.double()
    for layer in (0, 20, 29):
        pre = seen[layer].view(512, 9, 64).transpose(0, 1)  # (head, N, dim)
        for suffix, end in (("", 512), ("_ctx", c)):
            rows = pre[:, 4:end]
            mean = rows.mean(1)
            cov = torch.einsum("hsi,hsj->hij", rows - mean[:, None], rows - mean[:, None]) / rows.shape[1]
            angles = torch.arange(end, end + 512, dtype=torch.float64)[:, None] * inv[None]  # (512, 32)
            c_, s_ = angles.cos().mean(0), angles.sin().mean(0)
            r = torch.zeros(64, 64, dtype=torch.float64)
            for i in range(32):  # each pair (i, i + 32) rotated by its angle, averaged
                r[i, i], r[i, i + 32], r[i + 32, i], r[i + 32, i + 32] = c_[i], -s_[i], s_[i], c_[i]
            want_mean, want_cov = mean @ r.T, r @ cov @ r.T
            got_mean = torch.as_tensor(np.asarray(g["query_mean" + suffix][1, 0, layer])).double()
            got_cov = torch.as_tensor(np.asarray(g["query_cov" + suffix][1, 0, layer])).double()
            assert (got_mean - want_mean).abs().max() <= 1e-4 * want_mean.abs().max(), (layer, suffix)
            assert (got_cov - want_cov).abs().max() <= 1e-4 * want_cov.abs().max(), (layer, suffix)
    norms = np.asarray(g["value_norm"][1, 0])
    np.testing.assert_allclose(norms, np.linalg.norm(np.asarray(g["value_cache"][1, 0]), axis=-1), rtol=1e-6)


@pytest.mark.slow
def test_stored_keys_equal_a_prefill_and_the_statistics_are_unchanged(kv_store, smol_store):
    g = zarr.open_group(kv_store, mode="r")["len_512"]
    plain = zarr.open_group(smol_store, mode="r")["len_512"]
    assert schema.run_group_differences(g, full=False, kv=True, queries=True) == []
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
        names = ["knorm", "keydiff", "expected_attention"]
        ds = keptsets.kept_sets(kv_store, 512, 1, 1, 20, names, [0.9], setting=setting)
        g = zarr.open_group(kv_store, mode="r")["len_512"]
        keys = np.asarray(g["key_cache"][1, 1, 20]).astype(np.float64)
        vnorm = np.asarray(g["value_norm"][1, 1, 20]).astype(np.float64)
        suffix = ""
        if setting == "agnostic":  # the context alone is pruned; the question's keys are kept on top
            c = int(np.flatnonzero(g["question"][1, 1])[0])
            keys, vnorm, suffix = keys[:, :c], vnorm[:, :c], "_ctx"
        mu = np.asarray(g["query_mean" + suffix][1, 1, 20]).astype(np.float64)
        sigma = np.asarray(g["query_cov" + suffix][1, 1, 20]).astype(np.float64)
        n = keys.shape[1]
        k = budget(0.9, n)
        norms = np.linalg.norm(keys, axis=-1)
        unit = keys / norms[..., None]
        mean = unit.mean(1, keepdims=True)
        cos = (unit * mean).sum(-1) / np.linalg.norm(mean, axis=-1)
        expected = np.zeros((3, n))  # lower is evicted first: its negative, sinks at -inf
        expected[:, :4] = -np.inf
        for h in range(3):
            z = [
                keys[h, 4:] @ mu[q] / 8 + np.einsum("jd,de,je->j", keys[h, 4:], sigma[q], keys[h, 4:]) / 128
                for q in range(3 * h, 3 * h + 3)
            ]
            p = [np.exp(x - x.max()) / np.exp(x - x.max()).sum() for x in z]
            expected[h, 4:] = -np.mean(p, axis=0) * vnorm[h, 4:]
        for name, score in (("knorm", norms), ("keydiff", cos), ("expected_attention", expected)):
            kept = ds.kept.sel(policy=name).values[0]
            for h in range(plan.kv_heads):
                want = np.ones(512, bool)
                want[:n] = False
                want[np.argsort(score[h], kind="stable")[:k]] = True
                for q in range(3 * h, 3 * h + 3):
                    np.testing.assert_array_equal(kept[q], want, err_msg=f"{name} {setting} head {q}")
    r = run_cli(
        "analyze", smol_store, "--policies", "knorm", "--out", str(tmp_path / "r.zarr"), "--workers", "1"
    )
    assert r.returncode == 2 and "--store stats,keys" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r.zarr").exists()


def test_store_parts_are_checked(tmp_path):
    r = run_cli("dump", *SMOL, "--store", "stats,keyz", "--out", str(tmp_path / "bad.zarr"))
    assert r.returncode == 2 and "keyz" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad.zarr").exists()


def test_half_precision_keys_are_stored_bytes_shuffled_and_read_back_exactly(tiny_llama_dir, tmp_path):
    """A bfloat16 dump's float32 keys and values end in 16 zero bits: stored bytes shuffled, they take
    well under their raw size, and read back bit for bit what a raw store of the same dump holds."""
    from dump import store as run_store

    args = [
        "dump",
        "--model",
        tiny_llama_dir,
        *conftest.dump_args("256", depths="0.5"),
        "--dtype",
        "bfloat16",
    ]
    args += ["--store", "stats,kv", "--device", "cpu", "--no-progress"]
    assert run_cli(*args, "--out", str(tmp_path / "shuffled.zarr")).returncode == 0
    default, run_store.SHUFFLE_HALF_KEYS = run_store.SHUFFLE_HALF_KEYS, False
    try:  # in this process: the raw layout
        from dump.cli import main

        assert main([*args[1:], "--out", str(tmp_path / "raw.zarr")]) == 0
    finally:
        run_store.SHUFFLE_HALF_KEYS = default
    shuffled = zarr.open_group(str(tmp_path / "shuffled.zarr"), mode="r")["len_256"]
    raw = zarr.open_group(str(tmp_path / "raw.zarr"), mode="r")["len_256"]
    for var in ("key_cache", "value_cache"):
        a, b = np.asarray(shuffled[var][:]), np.asarray(raw[var][:])
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
        assert not (a.view(np.uint32) & 0xFFFF).any()  # bfloat16 values: the low 16 bits are zero
        assert [type(c).__name__ for c in shuffled[var].compressors] == ["BloscCodec", "Crc32cCodec"]
        assert shuffled[var].nbytes_stored() < 0.6 * raw[var].nbytes_stored(), var


def test_queries_are_a_part_of_their_own(tiny_llama_dir, tmp_path):
    """`--store stats,keys` writes the keys alone; Expected Attention, which also reads the queries'
    moments and the values' norms, is then refused in one sentence naming `queries`. Stores before
    RUN 2.5 wrote them with the keys, and read as holding both."""
    from core import schema

    out = tmp_path / "keys.zarr"
    args = ["dump", "--model", tiny_llama_dir, *conftest.dump_args("256", depths="0.5")]
    assert run_cli(*args, "--store", "stats,keys", "--no-progress", "--out", str(out)).returncode == 0
    g = zarr.open_group(str(out), mode="r")["len_256"]
    assert "key_cache" in g and not {"value_norm", "query_mean", "query_cov", "query_cov_ctx"} & set(g)
    r = run_cli(
        "analyze",
        str(out),
        "--policies",
        "expected_attention",
        "--out",
        str(tmp_path / "r.zarr"),
        "--workers",
        "1",
    )
    assert r.returncode == 2 and "--store stats,keys,queries" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r.zarr").exists()
    assert schema.store_parts("stats,queries") == {"stats", "keys", "queries"}
    assert schema.store_label(schema.store_parts("queries,stats")) == "stats,keys,queries"
    assert "queries" in schema.stored_parts("stats,keys", "2.4")
    assert "queries" not in schema.stored_parts("stats,keys", schema.RUN_VERSION)
