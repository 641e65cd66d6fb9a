"""The answer pass on the real SmolLM2: exact against the unmasked model, equal to the dump's own answer
with the full cache, and failing when exactly the passkey is dropped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from analyze import answers, calibration
from core import schema
from core.lm import decode, pruned
from core.tasks import passkey
from tests.conftest import answer_document, decode_with, greedy_with, one_setting, run_cli
from tests.test_causes import check_causes
from tests.test_intervals import check_results_bounds


def _doc(store, d, s):
    g = zarr.open_group(store, mode="r")[schema.group_name(512)]
    return (
        np.asarray(g["input_ids"][d, s]),
        np.asarray(g["needle"][d, s]),
        np.asarray(g["answer_ids"][d, s]),
        bool(g["retrieved"][d, s]),
    )


@pytest.mark.slow
def test_every_key_kept_gives_the_unmasked_logits(smol_store):
    lm = answers.load_model("smollm2-135m")
    ids, _, _, _ = _doc(smol_store, 0, 0)
    layers, heads = lm.config["layers"], lm.config["heads"]
    everything = {layer: pruned.bias_of(np.ones((heads, 512), bool)) for layer in range(layers)}
    with torch.no_grad():
        prompt = torch.as_tensor(ids[:-1])[None]
        cache = decode.prefill(lm.model, prompt)[1]
        last = torch.tensor([[int(ids[-1])]])
        kw = {decode.cache_kw(lm.model): cache}
        with pruned.keeping(everything):
            masked = lm.model(last, use_cache=True, **kw).logits[0, -1].double()
        cache.crop(-(cache.get_seq_length() - 511))  # drop the masked step
        plain = lm.model(last, use_cache=True, **kw).logits[0, -1].double()
        whole = lm.model(torch.as_tensor(ids)[None]).logits[0, -1].double()  # one unmasked forward
        # the answer pass's own path: the prompt's keys aside, a fresh cache for decoded tokens
        store = pruned.prompt_store(decode.prefill(lm.model, prompt)[1], 511, [None] * layers)
        steps = [
            x[0].double()
            for x in decode_with(
                lm.model, store, int(ids[-1]), 2, {k: v[None] for k, v in everything.items()}
            )
        ]
        nxt = int(whole.argmax())
        two = lm.model(torch.as_tensor([*ids, nxt])[None]).logits[0, -1].double()
    assert float((masked - plain).abs().max() / plain.abs().max()) <= 1e-5
    assert float((masked - whole).abs().max() / whole.abs().max()) <= 1e-5
    assert float((steps[0] - whole).abs().max() / whole.abs().max()) <= 1e-5
    assert (
        float((steps[1] - two).abs().max() / two.abs().max()) <= 1e-5
    )  # a decoded token sees the prompt and itself


@pytest.mark.slow
def test_full_cache_answer_equals_the_dumps_own_answer(smol_store):
    root = zarr.open_group(smol_store, mode="r")
    out = answer_document(smol_store, 512, 0, 0, ("full", "h2o"), [0.5])
    _, _, dumped, retrieved = _doc(smol_store, 0, 0)
    np.testing.assert_array_equal(out["ids"][0, 0], dumped)
    assert bool(out["answer"][0, 0]) == retrieved
    for d in range(2):
        for s in range(2):
            r = answer_document(smol_store, 512, d, s, ("full",), [0.9])
            np.testing.assert_array_equal(r["ids"][0, 0], root["len_512"]["answer_ids"][d, s])


@pytest.mark.slow
def test_dropping_exactly_the_passkey_makes_the_model_fail(smol_store):
    lm = answers.load_model("smollm2-135m")
    answered = [(d, s) for d in range(2) for s in range(2) if _doc(smol_store, d, s)[3]]
    assert answered, "SmolLM2 answers none of the 512-token documents: the test needs one it answers"
    for d, s in answered:
        ids, needle, dumped, _ = _doc(smol_store, d, s)
        passkey = int(zarr.open_group(smol_store, mode="r")["len_512"]["passkey"][d, s])
        # every copy of the passkey: the needle sentence says it twice ("... NNNNN. Remember it. NNNNN is
        # the pass key."), and the model copies it from the second when the first (`needle`) is gone
        sentence = np.asarray(zarr.open_group(smol_store, mode="r")["len_512"]["needle_sentence"][d, s])
        digits = np.array([lm.tokenizer.decode([int(t)]).strip().isdigit() for t in ids])
        passkey_tokens = (sentence & digits) | needle
        assert passkey_tokens.sum() == 2 * needle.sum()
        keep = np.ones((lm.config["heads"], 512), dtype=bool)
        keep[:, passkey_tokens] = False
        masks = {layer: pruned.bias_of(keep) for layer in range(lm.config["layers"])}
        with torch.no_grad():
            store = pruned.prompt_store(
                decode.prefill(lm.model, torch.as_tensor(ids[:-1])[None])[1], 511, [None] * 30
            )
            intact = greedy_with(lm.model, store, int(ids[-1]), len(dumped), {})[0].tolist()
            blind = greedy_with(
                lm.model, store, int(ids[-1]), len(dumped), {k: v[None] for k, v in masks.items()}
            )[0].tolist()
        assert str(passkey) in lm.tokenizer.decode(intact).replace(" ", "")
        assert str(passkey) not in lm.tokenizer.decode(blind).replace(" ", ""), lm.tokenizer.decode(blind)


def test_digits_in_place():
    assert passkey.digits_in_place(" 95488. Remember", 95408) == pytest.approx(0.8)
    assert passkey.digits_in_place(" 9548.", 95408) == pytest.approx(0.6)
    assert passkey.digits_in_place("no digits", 95408) == 0.0
    assert passkey.digits_in_place("95408", 95408) == 1.0


def test_auroc_against_brute_force():
    rng = np.random.default_rng(0)
    score = np.round(rng.random(200), 1)
    label = rng.random(200) < 0.4
    pairs = [(a > b) + 0.5 * (a == b) for a in score[label] for b in score[~label]]
    assert calibration.auroc(score, label) == pytest.approx(np.mean(pairs))


@pytest.mark.slow
def test_cli_answers_end_to_end(smol_store, tmp_path):
    out = tmp_path / "res.zarr"
    r = run_cli(
        "analyze",
        smol_store,
        "--answers",
        "--policies",
        "full,oracle,h2o",
        "--sparsity",
        "0.5,0.95",
        "--workers",
        "1",
        "--out",
        str(out),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    assert "answer accuracy" in r.stdout and "best rule" in r.stdout
    ds = xr.open_zarr(out).load()
    assert schema.results_differences(ds) == []
    assert check_results_bounds(ds) == len(schema.HEAD_METRICS) + len(schema.ANSWER_METRICS)
    for setting in ds.setting.values:
        check_causes(ds.sel(setting=setting))
    ds = one_setting(ds)
    full = ds.answer.sel(policy="full")
    for (
        sp
    ) in ds.sparsity.values:  # full's cells are the model's real full-cache answers, not 1 by construction
        np.testing.assert_array_equal(full.sel(sparsity=sp).values, ds.retrieved.values.astype(np.float32))
    assert ds.attrs["calibration_best_rule"] in list(ds.calibration.rule.values)
    assert set(ds.calibration.stat.values) == set(calibration.STATS)


def _worker_environ() -> dict:
    import os

    from core.cluster import CORES_ENV

    keys = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", CORES_ENV)
    return {k: os.environ.get(k) for k in keys}


def test_local_workers_start_without_dasks_malloc_trim_threshold():
    """Set at all, MALLOC_TRIM_THRESHOLD_ turns off glibc's adaptive mmap threshold: the answer pass
    ran 1.8x slower in a worker. The local cluster's workers start without it, with Dask's other
    settings (one BLAS thread until the worker sets its share)."""
    from core.cluster import CORES_ENV, client_for

    with client_for(workers=1, verbose=False) as client:
        (env,) = client.run(_worker_environ).values()
    assert env["MALLOC_TRIM_THRESHOLD_"] is None
    assert env["OMP_NUM_THREADS"] == "1"
    assert env[CORES_ENV] is not None


def test_answer_tasks_take_documents_of_one_length_up_to_the_token_cap():
    from analyze.engine import ANSWER_TOKENS, answer_jobs

    docs = [(2048, d, 0) for d in range(5)] + [(512, d, 0) for d in range(3)] + [(16384, 0, 0)]
    jobs = [job.documents for job in answer_jobs(docs)]
    assert ANSWER_TOKENS == 8192
    # longest first; a document over the cap alone; 5 of 2k split evenly into 2 tasks of <= 4
    assert jobs == [
        ((16384, 0, 0),),
        ((2048, 0, 0), (2048, 1, 0), (2048, 2, 0)),
        ((2048, 3, 0), (2048, 4, 0)),
        ((512, 0, 0), (512, 1, 0), (512, 2, 0)),
    ]
    assert sorted(doc for job in jobs for doc in job) == sorted(docs)  # every document once


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["aware", "agnostic"])
def test_documents_decoded_in_step_answer_as_each_alone(smol_store, setting):
    """The answer pass's batch across documents (`pruned.keeping_documents`): every row attends to its
    own document's prompt, so the answers equal those of each document decoded alone."""
    from analyze import engine, policies
    from core.runstore import plan_store

    methods = ("full", "h2o", "snapkv", "streaming", "random")
    spec = engine.Spec(tuple(policies.parse_policy(m) for m in methods), (0.5, 0.9), setting=setting)
    plan = plan_store(smol_store)
    docs = [(512, d, s) for d in range(2) for s in range(2)]
    together = answers.answer_documents(smol_store, plan, docs, spec)
    assert sorted(together) == docs
    for doc in docs:
        alone = answers.answer_documents(smol_store, plan, [doc], spec)[doc]
        for key in ("ids", "answer", "digits"):
            np.testing.assert_array_equal(together[doc][key], alone[key])
    # the full caches' answers differ between documents (different passkeys): a row reading another
    # document's prompt would change them
    assert len({together[doc]["ids"][0, 0].tobytes() for doc in docs}) > 1


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["aware", "agnostic"])
def test_an_answer_task_scores_its_layers_as_layer_tasks_do(smol_store, setting):
    """With --answers a document's kept sets are chosen once (`scoring.analyze_document`): its layers'
    arrays equal those of one layer task each, its masks equal `keptsets.kept_sets`, and the answers
    decoded under them equal those the answer pass chooses for itself."""
    from analyze import engine, keptsets, policies, scoring
    from core.runstore import plan_store

    methods = ("full", "h2o", "snapkv", "tova", "pyramidkv", "adakv", "streaming", "random", "cab_high")
    spec = engine.Spec(tuple(policies.parse_policy(m) for m in methods), (0.5, 0.9), setting=setting)
    plan = plan_store(smol_store)
    doc = (512, 1, 0)
    layers, kept = scoring.analyze_document(smol_store, plan, spec, doc)
    assert sorted(layers) == [engine.LayerJob(*doc, layer) for layer in range(plan.layers)]
    for job, got in layers.items():
        alone = scoring.run_job(smol_store, plan, spec, job)
        assert sorted(got) == sorted(alone)
        for name in got:
            np.testing.assert_array_equal(got[name], alone[name], err_msg=f"{job} {name}")
    for layer in (0, 7, plan.layers - 1):
        ks = keptsets.kept_sets(smol_store, *doc, layer, methods, spec.sparsities, setting=setting)
        np.testing.assert_array_equal(kept[:, :, layer], ks.kept.values)
    # the task as the engine runs it (every layer, then the answers under those kept sets) against
    # the answer pass choosing its kept sets itself
    whole = scoring.run_job(smol_store, plan, spec, engine.AnswerJob((doc,), layers=True))
    assert sorted(whole) == ["by_document", "layers", "seconds"] and sorted(whole["layers"]) == sorted(layers)
    assert sorted(whole["seconds"]) == ["answers", "layers"] and min(whole["seconds"].values()) > 0
    chosen = answers.answer_documents(smol_store, plan, [doc], spec)[doc]
    for key in ("ids", "answer", "digits", "distracted"):
        np.testing.assert_array_equal(whole["by_document"][doc][key], chosen[key])


def test_answer_tasks_on_a_gpu_score_the_layers_too(smol_store):
    """Answers on a GPU: one task per document, which scores its layers too (no layer task is left);
    on the CPU the documents of one length decode in step and the layers are tasks of their own."""
    from analyze import engine, policies
    from core.runstore import plan_store

    plan = plan_store(smol_store)
    docs = engine.documents_of(plan)
    pols = (policies.parse_policy("h2o"),)
    alone = engine.jobs_of(plan, engine.Spec(pols, (0.5,)))
    assert len(alone) == len(docs) * plan.layers and all(isinstance(j, engine.LayerJob) for j in alone)
    cpu = engine.jobs_of(plan, engine.Spec(pols, (0.5,), answers=True))
    assert cpu[0] == engine.AnswerJob(tuple(docs)) and cpu[1:] == alone  # 4 documents of 512: one task
    gpu = engine.jobs_of(plan, engine.Spec(pols, (0.5,), answers=True, answer_device="cuda"))
    assert gpu == [engine.AnswerJob((doc,), layers=True) for doc in docs]


@pytest.mark.slow
def test_the_engine_gives_the_same_results_from_answer_tasks_that_score_layers(
    smol_store, thread_client, monkeypatch
):
    """The GPU's task layout (one answer task per document, scoring its layers too) assembles into
    RESULTS equal, variable for variable, to the CPU's (answer tasks and layer tasks), both settings."""
    from analyze import engine, policies

    methods = ("full", "h2o", "pyramidkv", "cab_high")
    spec = engine.Spec(
        tuple(policies.parse_policy(m) for m in methods),
        (0.9,),
        answers=True,
        setting="aware",
        settings=("aware", "agnostic"),
    )
    plain, _ = engine.run(smol_store, spec, thread_client, progress=False)
    monkeypatch.setattr(
        engine, "jobs_of", lambda plan, spec: engine.answer_jobs(engine.documents_of(plan), 0, layers=True)
    )
    merged, _ = engine.run(smol_store, spec, thread_client, progress=False)
    for ds in (plain, merged):  # where the answer tasks' time went, per setting
        for attrs in ds.attrs["by_setting"].values():
            assert sorted(attrs["answer_task_seconds"]) == ["answers", "layers"]
    assert merged.attrs["by_setting"]["aware"]["answer_task_seconds"]["layers"] > 0
    assert sorted(plain.data_vars) == sorted(merged.data_vars)
    for name in plain.data_vars:
        np.testing.assert_array_equal(plain[name].values, merged[name].values, err_msg=name)
