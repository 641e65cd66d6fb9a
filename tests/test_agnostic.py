"""The query-agnostic setting: context-only statistics from the same forward, a view without any
question row, the setting dimension of RESULTS, and the answer pass that prunes before the question."""

import math
import shutil

import numpy as np
import pytest
import torch
import zarr
from transformers import AutoModelForCausalLM

from analyze import engine, keptsets, policies
from core import schema
from core.lm import capture
from tests.conftest import one_setting


def eager_vs_context(model_dir, n, context, window=16, block=32, tile=None):
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, n))
    with torch.no_grad():
        ref = model(ids, output_attentions=True)
    model.set_attn_implementation(capture.NAME)
    got = {}
    rec = capture.Recorder(window=window, block=block, on_layer=got.__setitem__, tile=tile, context=context)
    with torch.no_grad(), capture.recording(rec):
        model(ids)
    return ref, got


def rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def check_context(ref, got, n, c, window, block):
    """Each context statistic against eager attention restricted to the rows before `c` (float64)."""
    worst = 0.0
    m = math.ceil(n / block)
    for layer, a in enumerate(ref.attentions):
        a = a[0].double()[:, :c]  # the context's rows only: no question row
        st = got[layer].context
        errors = [
            rel(st.colsum, a.sum(1)),
            rel(st.window, a[:, c - window : c]),
        ]
        padded = torch.nn.functional.pad(a, (0, m * block - n, 0, m * block - c))
        errors.append(rel(st.blocks, padded.view(a.shape[0], m, block, m, block).sum((2, 4))))
        assert max(errors) <= 1e-4, (layer, errors)
        worst = max(worst, *errors)
        assert float(st.colsum[:, c:].abs().max()) == 0.0  # no context row sees a question key
    return worst


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_gemma3_dir"])
def test_context_statistics_equal_eager_restricted_to_context_rows(fixture, request):
    ref, got = eager_vs_context(request.getfixturevalue(fixture), 300, 270, window=16, block=32, tile=64)
    check_context(ref, got, 300, 270, 16, 32)


@pytest.mark.slow
def test_real_smollm2_context_statistics_equal_eager(smollm2_dir):
    ref, got = eager_vs_context(smollm2_dir, 512, 481, window=64, block=64)
    worst = check_context(ref, got, 512, 481, 64, 64)
    print(f"agnostic statistics, real SmolLM2 at 512 tokens: max relative error {worst:.2e}")


def test_no_question_row_reaches_a_policy(smol_store, tmp_path):
    """The agnostic view is the context alone: its statistics are the stored context-only ones cut at
    the question, and overwriting every statistic that includes the question's rows changes nothing."""
    pols = ["random", "streaming", "h2o", "snapkv", "tova", "cab"]
    x, masks = keptsets.load_layer(
        smol_store,
        512,
        0,
        0,
        5,
        3,
        0,
        keptsets.reads_of([policies.parse_policy(p) for p in pols]),
        "agnostic",
    )
    c = int(np.flatnonzero(masks["question"])[0])
    g = zarr.open_group(smol_store, mode="r")["len_512"]
    assert x.n == c and x.full_n == 512
    np.testing.assert_array_equal(
        x.final_row, np.asarray(g["window_ctx"][0, 0, 5, :, -1, :c], dtype=np.float32)
    )
    np.testing.assert_array_equal(x.colsum, np.asarray(g["colsum_ctx"][0, 0, 5])[:, :c])
    before = keptsets.kept_sets(smol_store, 512, 0, 0, 5, pols, [0.5, 0.9], setting="agnostic")
    k = [round(0.5 * c), round(0.1 * c)]
    kept = before.kept.sum("key").values  # per policy, sparsity, head: the context budget + the question
    assert (kept == np.array(k)[None, :, None] + (512 - c)).all()
    assert before.kept.values[..., c:].all()
    copy = tmp_path / "run.zarr"
    shutil.copytree(smol_store, copy)
    cg = zarr.open_group(str(copy), mode="r+")["len_512"]
    rng = np.random.default_rng(0)
    for name in schema.RUN_STATISTICS:  # every statistic with the question's rows in it
        a = cg[name]
        noise = rng.random(a.shape).astype(a.dtype)
        if name in schema.SHARED_ROWS:  # the block rows before the question's are the context's own
            shared = np.isnan(cg[name + schema.CONTEXT][:]).all(axis=(3, 5), keepdims=True)
            noise = np.where(shared, a[:], noise)
        cg[name][:] = noise
    after = keptsets.kept_sets(str(copy), 512, 0, 0, 5, pols, [0.5, 0.9], setting="agnostic")
    np.testing.assert_array_equal(before.kept.values, after.kept.values)
    aware = keptsets.kept_sets(str(copy), 512, 0, 0, 5, pols, [0.5, 0.9], setting="aware")
    assert not np.array_equal(
        aware.kept.values, keptsets.kept_sets(smol_store, 512, 0, 0, 5, pols, [0.5, 0.9]).kept.values
    )


def test_both_settings_in_results_and_the_agnostic_full_cache_answers_as_the_model(smol_store, thread_client):
    spec = engine.Spec(
        tuple(policies.parse_policy(p) for p in ("full", "oracle", "h2o")),
        (0.5,),
        answers=True,
        settings=("aware", "agnostic"),
    )
    ds, _ = engine.run(smol_store, spec, thread_client, progress=False)
    assert list(ds.setting.values) == ["aware", "agnostic"] and not schema.results_differences(ds)
    g = zarr.open_group(smol_store, mode="r")["len_512"]
    for name in (
        "aware",
        "agnostic",
    ):  # every key kept: the model's own answer, pruned before or after the question
        one = one_setting(ds, name)
        np.testing.assert_array_equal(
            one.answer_ids.sel(policy="full", sparsity=0.5, length=512).values, g["answer_ids"][:]
        )
    agnostic = one_setting(ds, "agnostic")
    assert np.isnan(agnostic.needle_hit.sel(policy="oracle")).all()  # it reads the answer row: aware only
    assert not np.isnan(one_setting(ds, "aware").needle_hit.sel(policy="oracle")).any()
    assert float(agnostic.answer.sel(policy="full").mean()) == float(g["retrieved"][:].mean())


def test_context_copies_store_only_the_rows_they_do_not_share_and_read_back_bit_for_bit(
    tiny_llama_dir, tmp_path, monkeypatch
):
    """RUN 2.4: `blocks_ctx`, `qpool_ctx` and `kpool_ctx` keep only the block rows that differ from the
    prompt's copy. The same documents dumped with every row stored give bit-identical RESULTS in
    both settings, and the stored copies are smaller."""
    import xarray as xr

    from dump import store as run_store
    from tests.conftest import dump_args, run_cli

    outs = {}
    for share in (True, False):
        monkeypatch.setattr(run_store, "SHARE_CONTEXT_ROWS", share)
        run = tmp_path / f"share{share}.zarr"
        argv = dump_args("256,300", "0.2,0.8", samples=2, window=8, block=32)
        r = run_cli(
            "dump",
            "--model",
            tiny_llama_dir,
            "--task",
            "ruler:niah_multikey_1",
            *argv,
            "--out",
            str(run),
            "--no-progress",
        )
        assert r.returncode == 0, r.stderr
        res = tmp_path / f"share{share}.results.zarr"
        r = run_cli(
            "analyze", str(run), "--policies", "full,h2o,snapkv,cab,cab_high,block_mass,cab_3c",
            "--sparsity", "0.5,0.9", "--setting", "aware,agnostic", "--workers", "1", "--out", str(res), "--no-progress",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        outs[share] = (run, xr.open_zarr(res).load())
    g = zarr.open_group(str(outs[True][0] / "len_300"), mode="r")
    for var in schema.SHARED_ROWS:
        ctx, own = np.asarray(g[var + schema.CONTEXT][0, 0, 1]), np.asarray(g[var][0, 0, 1])
        shared = np.isnan(ctx).all(axis=(0, 2))
        assert shared.any() and not shared.all(), var  # the rows before the question's block are shared
        full = np.asarray(
            zarr.open_group(str(outs[False][0] / "len_300"), mode="r")[var + schema.CONTEXT][0, 0, 1]
        )
        assert np.array_equal(full[:, shared].view(np.uint8), own[:, shared].view(np.uint8))
    a, b = outs[True][1], outs[False][1]
    assert set(a.data_vars) == set(b.data_vars)
    for v in a.data_vars:
        assert a[v].equals(b[v]), v
