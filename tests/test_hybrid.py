"""Hybrid attention (a tiny Gemma-3-shaped model: two sliding-window layers of 24 keys and one full
layer): the layer types are recorded, sliding layers are not pruned or scored, retrieval heads come
from the layer that can see the needle, and the answer pass keeps their attention whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from analyze import answers, policies
from core import schema
from core.lm import decode, pruned
from tests.conftest import decode_with, one_setting, run_cli


@pytest.fixture(scope="module")
def hybrid(tiny_gemma3_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("hybrid")
    store, results = d / "run.zarr", d / "run.results.zarr"
    r = run_cli(
        "dump",
        "--model",
        tiny_gemma3_dir,
        "--lengths",
        "200",
        "--depths",
        "0.2,0.6",
        "--samples",
        "1",
        "--window",
        "8",
        "--block",
        "32",
        "--out",
        str(store),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    r = run_cli(
        "analyze",
        str(store),
        "--policies",
        "full,h2o,snapkv",
        "--sparsity",
        "0.5,0.9",
        "--workers",
        "1",
        "--answers",
        "--out",
        str(results),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    return str(store), one_setting(xr.open_zarr(results).load())


def test_layer_types_are_recorded(hybrid):
    root = zarr.open_group(hybrid[0], mode="r")
    assert root.attrs["model_config"]["layer_types"] == ["sliding:24", "sliding:24", "full"]
    assert schema.layer_windows(root.attrs["model_config"]) == [24, 24, None]


def test_sliding_layers_are_not_scored_and_never_retrieval_heads(hybrid):
    _, ds = hybrid
    assert np.isnan(ds.needle_hit.sel(layer=[0, 1]).values).all()
    assert np.isnan(ds.needle_mass.sel(layer=[0, 1]).values).all()
    assert not np.isnan(ds.needle_hit.sel(layer=2).values).any()
    assert not ds.retrieval_head.sel(layer=[0, 1]).any() and ds.retrieval_head.sel(layer=2).all()
    # head means are over the prunable layer's heads only
    want = ds.needle_recall.sel(layer=2).mean("head")
    np.testing.assert_allclose(ds.needle_recall_heads.sel(subset="all").values, want.values, rtol=1e-6)
    assert "prunable_rule" in ds.attrs


def test_calibration_counts_cells_when_layer_0_is_a_sliding_layer(hybrid):
    """Layer 0 is not prunable (NaN): a pruned cell is recognised on the layers that are."""
    from analyze import calibration

    _, ds = hybrid
    ds = ds.copy()
    ds["retrieved"] = ds.retrieved | True  # as if the full cache answered every document
    table, _ = calibration.calibrate(ds)
    # held out: one of the two documents; pruned there: h2o and snapkv at two sparsities each
    assert (table.sel(stat="cells").values == 4).all()


def test_answer_pass_on_a_hybrid_cache_is_exact(hybrid, tiny_gemma3_dir):
    store, ds = hybrid
    g = zarr.open_group(store, mode="r")["len_200"]
    full = ds.answer_ids.sel(policy="full")
    for sp in ds.sparsity.values:
        np.testing.assert_array_equal(full.sel(sparsity=sp, length=200).values, g["answer_ids"][:])
    lm = answers.load_model(tiny_gemma3_dir)
    ids = np.asarray(g["input_ids"][0, 0])
    everything = {2: pruned.bias_of(np.ones((lm.config["heads"], 200), bool))}  # the one prunable layer
    with torch.no_grad():
        cache = decode.prefill(lm.model, torch.as_tensor(ids[:-1])[None])[1]
        kw = {decode.cache_kw(lm.model): cache}
        last = torch.tensor([[int(ids[-1])]])
        import copy

        with pruned.keeping(everything):
            masked = (
                lm.model(last, use_cache=True, **{k: copy.deepcopy(v) for k, v in kw.items()})
                .logits[0, -1]
                .double()
            )
        whole = lm.model(torch.as_tensor(ids)[None]).logits[0, -1].double()
    assert float((masked - whole).abs().max() / whole.abs().max()) <= 1e-5
    # and the answer pass's model (banded prefill, no N x N mask) is the eager model
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_pretrained(
        tiny_gemma3_dir, dtype=torch.float32, attn_implementation="eager"
    )
    with torch.no_grad():
        ref = eager.eval()(torch.as_tensor(ids)[None]).logits[0, -1].double()
    assert float((whole - ref).abs().max() / ref.abs().max()) <= 1e-5
    # the answer pass's path (prompt keys aside; sliding layers keep their window as positions advance)
    windows = [24, 24, None]
    with torch.no_grad():
        store = pruned.prompt_store(
            decode.prefill(lm.model, torch.as_tensor(ids[:-1])[None])[1], 199, windows
        )
        steps = [
            x[0].double()
            for x in decode_with(
                lm.model, store, int(ids[-1]), 3, {k: v[None] for k, v in everything.items()}
            )
        ]
        seq = list(ids)
        for x in steps:
            ref = lm.model(torch.as_tensor(seq)[None]).logits[0, -1].double()
            assert float((x - ref).abs().max() / ref.abs().max()) <= 1e-5
            seq.append(int(ref.argmax()))
    # and a kept set that drops keys does change the full layer's answer logits
    kept = np.zeros((lm.config["heads"], 200), bool)
    kept[:, -1] = True
    drop = {2: pruned.bias_of(kept)}
    with torch.no_grad(), pruned.keeping(drop):
        cut = (
            lm.model(last, use_cache=True, **{k: copy.deepcopy(v) for k, v in kw.items()})
            .logits[0, -1]
            .double()
        )
    assert float((cut - whole).abs().max()) > 1e-4
    assert policies.default("full").budget_for(10, 200) == 200


def test_rope_scaling_stretches_only_the_full_layers(tiny_gemma3_dir, tiny_llama_dir):
    from core.lm import models

    cfg = models.load_config(tiny_gemma3_dir, "yarn:4")
    assert cfg.max_position_embeddings == 4 * 2048
    full, sliding = cfg.rope_parameters["full_attention"], cfg.rope_parameters["sliding_attention"]
    assert full["rope_type"] == "yarn" and full["factor"] == 4.0
    assert full["original_max_position_embeddings"] == 2048
    assert sliding["rope_type"] == "default"  # a sliding layer never sees further than its window
    llama = models.load_config(tiny_llama_dir, "linear:2")
    assert llama.rope_parameters["rope_type"] == "linear" and llama.rope_parameters["factor"] == 2.0
    # and the model really runs with it: the full layer's logits change, provenance names it
    ids = torch.randint(0, 400, (1, 300))
    plain = models.load(tiny_gemma3_dir)
    scaled = models.load(tiny_gemma3_dir, rope_scaling="yarn:4")
    with torch.no_grad():
        a, b = plain.model(ids).logits, scaled.model(ids).logits
    assert float((a - b).abs().max()) > 1e-4
    assert scaled.info["rope_scaling"] == "yarn:4" and plain.info["rope_scaling"] is None


def test_lengths_beyond_the_context_need_rope_scaling_which_is_recorded(tiny_gemma3_dir, tmp_path):
    store = tmp_path / "long.zarr"
    base = ["--model", tiny_gemma3_dir, "--lengths", "2100", "--depths", "0.5", "--block", "64"]
    r = run_cli("dump", *base, "--out", str(store), "--no-progress")
    assert r.returncode == 2 and "--rope-scaling" in r.stderr and "2048" in r.stderr
    assert "Traceback" not in r.stderr and not store.exists()
    for bad in ("yarn:1", "cubic:2", "yarn:x"):
        r = run_cli("dump", *base, "--rope-scaling", bad, "--out", str(store), "--no-progress")
        assert r.returncode == 2 and bad in r.stderr and "linear:F or yarn:F" in r.stderr, r.stderr
    r = run_cli("dump", *base, "--rope-scaling", "yarn:2", "--out", str(store), "--no-progress")
    assert r.returncode == 0, r.stderr
    root = zarr.open_group(str(store), mode="r")
    assert root.attrs["model"]["rope_scaling"] == "yarn:2"
    assert root.attrs["settings"]["rope_scaling"] == "yarn:2"
    assert root.attrs["model_config"]["max_positions"] == 4096
    # resuming under another scaling is refused: it would mix two models in one store
    r = run_cli("dump", *base, "--rope-scaling", "yarn:4", "--out", str(store), "--no-progress")
    assert r.returncode == 2 and "rope_scaling" in r.stderr
    # the answer pass runs the same stretched model: with the full cache it decodes the dump's answer
    out = tmp_path / "long.results.zarr"
    r = run_cli(
        "analyze", str(store), "--policies", "full", "--sparsity", "0.5", "--answers", "--workers", "1",
        "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    ds = one_setting(xr.open_zarr(out))
    np.testing.assert_array_equal(
        ds.answer_ids.sel(policy="full", length=2100).values[0], root["len_2100"]["answer_ids"][:]
    )
