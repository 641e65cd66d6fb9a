"""Capture equals eager attention (output_attentions) on real architectures, in float32."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from core.lm import capture


def eager_vs_capture(model_dir, n, window=16, block=32, tile=None, seed=0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, n))
    with torch.no_grad():
        ref = model(ids, output_attentions=True)
    model.set_attn_implementation(capture.NAME)
    got = {}
    rec = capture.Recorder(window=window, block=block, on_layer=got.__setitem__, tile=tile)
    with torch.no_grad(), capture.recording(rec):
        out = model(ids)
    return ref, out, got


def rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def check(ref, out, got, n, window, block, errors: dict | None = None, tolerance: dict | None = None):
    """Every statistic within 1e-4 (max-relative) of eager attention, or within `tolerance[name]` where
    given; `errors` gets the worst of each (all of them measured before any is asserted)."""
    worst = {} if errors is None else errors
    worst["logits"] = rel(out.logits, ref.logits)
    m = math.ceil(n / block)
    assert sorted(got) == list(range(len(ref.attentions)))
    where = {}
    for layer, a in enumerate(ref.attentions):
        a = a[0].double()
        st = got[layer]
        padded = torch.nn.functional.pad(a, (0, m * block - n, 0, m * block - n))
        blocks = padded.view(a.shape[0], m, block, m, block).sum((2, 4))
        for name, value in (
            ("colsum", rel(st.colsum, a.sum(1))),
            ("window", rel(st.window, a[:, -window:])),
            ("blocks", rel(st.blocks, blocks)),
        ):
            if value > worst.get(name, 0.0):
                worst[name], where[name] = value, layer
        total = float((st.colsum.sum(-1).double() / n - 1).abs().max())  # every row sums to 1
        if total > worst.get("colsum_total", 0.0):
            worst["colsum_total"], where["colsum_total"] = total, layer
    bad = {k: v for k, v in worst.items() if v > max(1e-4, (tolerance or {}).get(k, 0.0))}
    assert not bad, f"worst relative errors {worst} (at layers {where})"


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_tiny_models_equal_eager(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    ref, out, got = eager_vs_capture(model_dir, 300, window=16, block=32, tile=64)
    check(ref, out, got, 300, 16, 32)


@pytest.mark.slow
def test_smollm2_equals_eager_at_512_tokens(smollm2_dir):
    ref, out, got = eager_vs_capture(smollm2_dir, 512, window=64, block=64)
    check(ref, out, got, 512, 64, 64)
    # SmolLM2 is GQA: 9 query heads read 3 kv heads; kpool is broadcast per query head
    assert got[0].kpool.shape[0] == 9 and torch.equal(got[0].kpool[0], got[0].kpool[2])


def test_without_recorder_it_is_plain_sdpa(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation=capture.NAME).eval()
    ids = torch.randint(0, 100, (1, 40))
    with torch.no_grad():
        a = model(ids).logits
        model.set_attn_implementation("sdpa")
        b = model(ids).logits
    assert torch.allclose(a, b, atol=1e-6)


def test_tiny_gemma3_sliding_and_full_layers_equal_eager(tiny_gemma3_dir):
    """Sliding-window layers (24 keys) and a full layer, GQA 4/1, query_pre_attn_scalar: every
    statistic equals eager attention, and the sliding layers put no mass outside their band."""
    seen = []
    real = capture.attention_stats

    def spy(*args, mask=None, sliding=None, **kw):
        seen.append((mask, sliding))
        return real(*args, mask=mask, sliding=sliding, **kw)

    capture.attention_stats = spy
    try:
        ref, out, got = eager_vs_capture(tiny_gemma3_dir, 200, window=16, block=32, tile=64)
    finally:
        capture.attention_stats = real
    check(ref, out, got, 200, 16, 32)
    # no N x N mask was built: the sliding layers ran the banded path, the full layer the causal one
    assert [(m is None, w) for m, w in seen] == [(True, 24), (True, 24), (True, None)]
    final = got[0].window[:, -1]
    assert float(final[:, : 200 - 24].abs().max()) == 0.0  # the answer position sees only its last 24 keys
    assert float(got[2].window[:, -1, : 200 - 24].sum()) > 0  # the full layer sees further back


def test_attention_softcapping_is_refused_naming_the_feature_and_layer(tiny_gemma2_dir, tmp_path):
    from tests.conftest import run_cli

    out = tmp_path / "run.zarr"
    r = run_cli("dump", "--model", tiny_gemma2_dir, "--lengths", "256", "--out", str(out), "--no-progress")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "softcapping" in r.stderr and "layer 0" in r.stderr
    assert not out.exists()
