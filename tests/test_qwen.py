"""Qwen2 (q/k/v biases, grouped-query ratios of 7:1 and 6:1, head dims of 64 and 128): the capture
equals eager float64 attention, and the answer pass with every key kept is the unmasked model. The
real Qwen2.5-Coder-0.5B runs in the slow part."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from transformers import AutoModelForCausalLM

from core.lm import capture, decode, pruned
from tests.conftest import answer_document, decode_with, run_cli
from tests.test_capture import check

QWEN = "qwen2.5-coder-0.5b"


def float64_vs_capture(model_dir, ids, window, block, tile=None, logits_to_keep=0):
    """(eager float64 forward with attentions, capture float32 forward, recorded statistics); the
    logits of the last `logits_to_keep` positions (0: all)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64, attn_implementation="eager")
    with torch.no_grad():
        ref = model.eval()(ids, output_attentions=True, logits_to_keep=logits_to_keep)
    del model
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model.set_attn_implementation(capture.NAME)
    got = {}
    rec = capture.Recorder(window=window, block=block, on_layer=got.__setitem__, tile=tile)
    with torch.no_grad(), capture.recording(rec):
        out = model.eval()(ids, logits_to_keep=logits_to_keep)
    return ref, out, got


@pytest.mark.parametrize("fixture,heads", [("tiny_qwen2_dir", 7), ("tiny_qwen2_wide_dir", 6)])
def test_tiny_qwen2_capture_equals_eager_float64(fixture, heads, request):
    model_dir = request.getfixturevalue(fixture)
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (1, 300))
    ref, out, got = float64_vs_capture(model_dir, ids, 16, 32, tile=64)
    check(ref, out, got, 300, 16, 32)
    assert got[0].kpool.shape[0] == heads  # one kv head read by every query head


@pytest.mark.parametrize("fixture", ["tiny_qwen2_dir", "tiny_qwen2_wide_dir"])
def test_tiny_qwen2_every_key_kept_is_the_unmasked_model(fixture, request):
    from analyze import answers

    lm = answers.load_model(request.getfixturevalue(fixture))
    torch.manual_seed(1)
    ids = torch.randint(0, 1000, (200,)).numpy()
    n, layers, heads = 200, lm.config["layers"], lm.config["heads"]
    everything = {layer: pruned.bias_of(np.ones((heads, n), bool)) for layer in range(layers)}
    with torch.no_grad():
        cache = decode.prefill(lm.model, torch.as_tensor(ids[:-1])[None])[1]
        with pruned.keeping(everything):
            masked = lm.model(
                torch.tensor([[int(ids[-1])]]), use_cache=True, **{decode.cache_kw(lm.model): cache}
            ).logits[0, -1]
        whole = lm.model(torch.as_tensor(ids)[None]).logits[0, -1]
        assert float((masked - whole).abs().max() / whole.abs().max()) <= 1e-5
        # the answer pass's own path: the prompt's keys aside, decoded tokens in a fresh cache
        store = pruned.prompt_store(
            decode.prefill(lm.model, torch.as_tensor(ids[:-1])[None])[1], n - 1, [None] * layers
        )
        kept = {k: v[None] for k, v in everything.items()}
        steps = list(decode_with(lm.model, store, int(ids[-1]), 3, kept))  # done before the references
        seq = list(ids)
        for step in steps:
            ref = lm.model(torch.as_tensor(seq)[None]).logits[0, -1]
            assert float((step[0] - ref).abs().max() / ref.abs().max()) <= 1e-5
            seq.append(int(ref.argmax()))


# -- the real Qwen2.5-Coder-0.5B ------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen_dir() -> str:
    from core.lm import models

    try:
        directory, _, _ = models.resolve(QWEN)  # joined, checked and converted once into the cache
    except models.ModelUnavailable as err:
        pytest.skip(str(err))
    return directory


@pytest.mark.slow
def test_real_qwen_capture_equals_eager_float64_on_a_1k_prompt(qwen_dir):
    from core import tasks
    from core.lm import models

    doc = tasks.document(models.load_tokenizer(QWEN), "ruler:niah_multikey_1", 0, "ruler", 1024, 0.5, 0, 0)
    ids = torch.as_tensor(doc.input_ids, dtype=torch.long)[None]
    # every position's statistics; the logits of the last 64 (a 151,936-token vocabulary makes all
    # 1,024 rows of float64 logits 1.2 GB, and the attention statistics already cover every row)
    ref, out, got = float64_vs_capture(qwen_dir, ids, 32, 64, logits_to_keep=64)
    errors = {}
    check(ref, out, got, 1024, 32, 64, errors=errors)
    print(f"real {QWEN}, 1024 tokens, capture float32 vs eager float64, worst relative error: {errors}")


@pytest.fixture(scope="module")
def qwen_store(qwen_dir, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("qwen") / "run.zarr"
    r = run_cli(
        "dump", "--model", QWEN, "--task", "ruler:niah_multikey_1", "--lengths", "1k",
        "--depths", "0.5", "--window", "16", "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return str(out)


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["aware", "agnostic"])
def test_real_qwen_full_cache_reproduces_the_dumps_own_answer(qwen_store, setting):
    root = zarr.open_group(qwen_store, mode="r")
    g = root["len_1024"]
    out = answer_document(qwen_store, 1024, 0, 0, ("full",), [0.9], setting=setting)
    np.testing.assert_array_equal(out["ids"][0, 0], g["answer_ids"][0, 0])
    assert (g["answer_ids"][0, 0] >= 0).sum() > 0  # the dump answered something
    assert root.attrs["model"]["name"] == QWEN and root.attrs["model"]["source"] == "embedded-gguf"


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", [QWEN, "qwen2.5-coder-1.5b"])
def test_real_qwen_on_cuda_equals_eager_float64(name):
    """The fused CUDA kernels (float32) on the real model against eager float64 attention on a 2k
    RULER prompt: every statistic and the logits within 1e-4, or within twice the error of plain
    float32 eager attention (IEEE, no TF32) of the same float32 model, where float32 itself errs more
    (Qwen2's first layer, whose queries and keys are very large)."""
    from types import SimpleNamespace as cpu

    from core import tasks
    from core.lm import models

    try:
        directory, _, _ = models.resolve(name)
    except models.ModelUnavailable as err:
        pytest.skip(str(err))
    doc = tasks.document(models.load_tokenizer(name), "ruler:niah_multikey_1", 0, "ruler", 2048, 0.5, 0, 0)
    ids = torch.as_tensor(doc.input_ids, dtype=torch.long, device="cuda")[None]
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float64, attn_implementation="eager")
    with torch.no_grad():
        ref = model.to("cuda").eval()(ids, output_attentions=True)
    ref = cpu(logits=ref.logits.cpu(), attentions=[a.cpu() for a in ref.attentions])
    del model
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():  # float32's own error: eager attention of the same float32 model
            plain = model.to("cuda").eval()(ids, output_attentions=True)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    block, window = 64, 32
    as_stats = {}
    for layer, a in enumerate(plain.attentions):
        a = a[0].double().cpu()
        m = a.shape[-1] // block
        as_stats[layer] = cpu(
            colsum=a.sum(1),
            window=a[:, -window:],
            blocks=a.view(a.shape[0], m, block, m, block).sum((2, 4)),
        )
    floor = {}
    try:
        check(ref, cpu(logits=plain.logits.cpu()), as_stats, 2048, window, block, errors=floor)
    except AssertionError:
        pass  # float32's own errors may pass 1e-4: they set the tolerance below, never fail the test
    del plain
    model.set_attn_implementation(capture.NAME)
    got = {}
    rec = capture.Recorder(window=window, block=block, on_layer=got.__setitem__)
    with torch.no_grad(), capture.recording(rec):
        out = model.eval()(ids)
    got = {
        layer: cpu(**{k: t.cpu() if torch.is_tensor(t) else t for k, t in vars(st).items()})
        for layer, st in got.items()
    }
    errors = {}
    tolerance = {k: 2 * v for k, v in floor.items()}
    print(f"real {name}, 2048 tokens, plain float32 eager vs eager float64, worst relative error: {floor}")
    try:
        check(ref, cpu(logits=out.logits.cpu()), got, 2048, window, block, errors=errors, tolerance=tolerance)
    finally:
        print(
            f"real {name}, 2048 tokens, fused CUDA float32 vs eager float64, worst relative error: {errors}"
        )
