"""KVzip (`dump --store stats,kvzip`, the `kvzip` policy): its scores equal a brute-force
recomputation from eager attention weights, the dump's statistics and answers are unchanged by the
reconstruction forwards, and the policy's budgets go to the document's top scores of all layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from analyze import budgets, keptsets, policies
from core.lm import capture, decode, kvzip, models
from tests import conftest
from tests.conftest import run_cli
from tests.test_policies import random_doclayer

SMOL = [*conftest.SMOL, "--no-progress"]


@pytest.fixture(scope="module")
def kvzip_store(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("kvzip_store") / "run.zarr")
    r = run_cli("dump", *SMOL, "--kvzip", "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def eager_scores(ids: list[int], end: int, chunk: int) -> np.ndarray:
    """KVzip from its definition, with no cache: for each chunk, one eager float32 forward over the
    context and the chunk's reconstruction prompt; the softmax restricted to (sinks, chunk, the
    reconstruction's own keys) is the full softmax renormalised over them."""
    lm = models.load("smollm2-135m", torch.float32, "cpu", "eager")
    tok = lm.tokenizer
    suffix = kvzip.suffix_ids(tok)
    first = tok.encode(kvzip.FIRST, add_special_tokens=False)
    nxt = tok.encode(kvzip.NEXT, add_special_tokens=False)
    out = np.zeros((30, 3, end))
    for start in range(0, end, chunk):
        stop = min(start + chunk, end)
        prompt = first if start == 0 else nxt + ids[start - 8 : start]
        rec = prompt + suffix + ids[start:stop]
        with torch.no_grad():
            att = lm.model(torch.tensor([ids[:end] + rec]), output_attentions=True).attentions
        q = len(rec)
        subset = np.zeros(end + q, bool)
        subset[: min(4, start)] = True
        subset[start:stop] = True
        subset[end:] = True
        for layer, a in enumerate(att):
            rows = a[0, :, end:, :].double().numpy()  # (head, q, keys)
            rows = rows[..., subset] / rows[..., subset].sum(-1, keepdims=True)
            sink = min(4, start)
            chunk_cols = rows[..., sink : sink + stop - start]
            out[layer, :, start:stop] = chunk_cols.reshape(3, 3, q, -1).max(axis=(1, 2))
    return out


@pytest.mark.slow
def test_kvzip_scores_equal_eager_attention(kvzip_store, monkeypatch):
    """Chunks of 200 tokens (three reconstructions, the later ones with the previous chunk's tail)."""
    monkeypatch.setattr(kvzip, "CHUNK", 200)
    g = zarr.open_group(kvzip_store, mode="r")["len_512"]
    ids = np.asarray(g["input_ids"][0, 1]).tolist()
    c = int(np.flatnonzero(g["question"][0, 1])[0])
    lm = models.load("smollm2-135m", torch.float32, "cpu", capture.NAME)
    with torch.no_grad():
        _, cache = decode.prefill(lm.model, torch.tensor([ids]))
        whole = kvzip.reconstruct(lm.model, lm.tokenizer, cache, torch.tensor([ids]), 512, 30, 3).numpy()
        ctx = kvzip.reconstruct(lm.model, lm.tokenizer, cache, torch.tensor([ids]), c, 30, 3).numpy()
    assert cache.get_seq_length() == c
    for got, end in ((whole, 512), (ctx, c)):
        want = eager_scores(ids, end, 200)
        assert np.abs(got - want).max() <= 1e-4, end


@pytest.mark.slow
def test_kvzip_store_keeps_the_statistics_and_answers(kvzip_store, smol_store):
    """The reconstructions run after the dump's forward and answer: statistics, answers unchanged."""
    g = zarr.open_group(kvzip_store, mode="r")["len_512"]
    plain = zarr.open_group(smol_store, mode="r")["len_512"]
    for var in ("colsum", "window", "blocks", "colsum_ctx", "answer_ids"):
        np.testing.assert_array_equal(g[var][:], plain[var][:])
    scores = np.asarray(g["kvzip_ctx"][1, 0])
    c = int(np.flatnonzero(g["question"][1, 0])[0])
    assert (scores[..., c:] == 0).all() and (scores[..., :c] > 0).all()


@pytest.mark.slow
def test_kvzip_keeps_the_documents_top_scores(kvzip_store):
    """The document's budget: the highest (layer, kv head, key) scores of all layers together, the 4
    sinks of every head first; each head's kept set its own top keys; totals as every policy's."""
    for setting in ("aware", "agnostic"):
        g = zarr.open_group(kvzip_store, mode="r")["len_512"]
        scores = np.asarray(g["kvzip" if setting == "aware" else "kvzip_ctx"][0, 1]).astype(np.float64)
        n = 512 if setting == "aware" else int(np.flatnonzero(g["question"][0, 1])[0])
        scores = scores[..., :n].copy()
        scores[..., :4] = np.inf
        k = policies.budget(0.9, n)
        flat = scores.ravel()
        order = np.lexsort((np.arange(flat.size), -flat))[: k * 90]
        want = np.zeros(flat.size, bool)
        want[order] = True
        want = want.reshape(30, 3, n)
        kept = np.stack(  # (layer, head, key)
            [
                keptsets.kept_sets(kvzip_store, 512, 0, 1, layer, ["kvzip"], [0.9], setting=setting)
                .kept.sel(policy="kvzip")
                .values[0]
                for layer in range(30)
            ]
        )
        assert kept[..., :n].sum() == k * 270
        for layer in range(30):
            for h in range(9):
                np.testing.assert_array_equal(
                    kept[layer, h, :n], want[layer, h // 3], err_msg=f"{setting} {layer} {h}"
                )


def test_kvzip_allocation_numba_equals_reference():
    x, _ = random_doclayer(seed=4)
    rng = np.random.default_rng(4)
    layers = {layer: x for layer in range(3)}
    import dataclasses

    for layer in layers:
        layers[layer] = dataclasses.replace(x, kvzip=rng.random((x.kv_heads, x.n)))
    p = policies.parse_policy("kvzip")
    for k in (5, 40, x.n):
        doc = budgets.DocumentLayers(x.n, 3, x.heads, x.kv_heads, (0, 1, 2), lambda layer: layers[layer])
        fast = budgets.allocate(p, doc, k)
        ref = budgets.allocate(p, doc, k, reference=True)
        np.testing.assert_array_equal(fast, ref)
        assert fast.sum() == k * x.heads * 3


def test_kvzip_refuses_sliding_window_models(tmp_path):
    r = run_cli(
        "dump", "--model", "gemma3-270m", "--lengths", "1k", "--kvzip", "--out", str(tmp_path / "g.zarr")
    )
    assert r.returncode == 2 and "sliding-window" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "g.zarr").exists()
