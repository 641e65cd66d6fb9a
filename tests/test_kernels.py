"""The fused Triton statistics against a float64 reference (CUDA only; skipped without a GPU)."""

import pytest
import torch

from core.lm import kernels
from core.lm.reference import reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not kernels.triton_available(), reason="needs CUDA and Triton (GPU machine)"),
]


@pytest.mark.parametrize(
    "heads,kv_heads,n,block,window,dtype",
    [
        (9, 3, 1000, 64, 64, torch.bfloat16),
        (4, 4, 513, 32, 7, torch.float16),
        (8, 2, 4096, 128, 32, torch.bfloat16),
        (2, 1, 130, 64, 300, torch.bfloat16),
    ],
)
def test_fused_equals_float64_reference(heads, kv_heads, n, block, window, dtype):
    from core.lm.kernels.triton_stats import fused_stats

    torch.manual_seed(n)
    q = (torch.randn(heads, n, 64) * 1.5).to(dtype).cuda()
    k = (torch.randn(kv_heads, n, 64) * 1.5).to(dtype).cuda()
    v = torch.randn(kv_heads, n, 64).to(dtype)
    colsum, rows, blocks = fused_stats(q, k, 0.125, window, block)
    _, r_col, r_win, r_blocks = reference(
        q.cpu().double(), k.cpu().double(), v.double(), 0.125, window, block
    )

    def rel(a, b):
        return float(torch.linalg.norm(a.cpu().double() - b) / torch.linalg.norm(b))

    assert rel(colsum, r_col) <= 1e-3
    assert rel(rows, r_win) <= 1e-3
    assert rel(blocks, r_blocks) <= 1e-3
    assert torch.isfinite(colsum).all() and torch.isfinite(rows).all() and torch.isfinite(blocks).all()
    assert torch.allclose(rows.sum(-1).cpu(), torch.ones(heads, min(window, n)), atol=1e-3)
    assert torch.allclose(blocks.sum((1, 2)).cpu(), torch.full((heads,), float(n)), rtol=1e-3)


def test_capture_uses_fused_path_and_matches_torch_path():
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.lm import capture

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=500,
        hidden_size=576,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=4096,
    )
    model = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
    model.set_attn_implementation(capture.NAME)
    ids = torch.randint(0, 500, (1, 1500), device="cuda")
    got = {}
    for fused in (True, False):
        stats = {}
        rec = capture.Recorder(window=32, block=64, on_layer=stats.__setitem__, fused=fused)
        with torch.no_grad(), capture.recording(rec):
            model(ids)
        got[fused] = stats
    # layer 0 sees identical inputs; layer 1's inputs differ by the bf16 rounding of layer 0's output
    for layer, tol in ((0, 2e-3), (1, 3e-2)):
        for var in ("colsum", "window", "blocks"):
            a, b = getattr(got[True][layer], var).double(), getattr(got[False][layer], var).double()
            assert float(torch.linalg.norm(a - b) / torch.linalg.norm(b)) < tol, (layer, var)


@pytest.mark.parametrize(
    "heads,kv_heads,n,block,window,sliding,dtype",
    [
        (4, 1, 3000, 64, 64, 512, torch.bfloat16),
        (4, 1, 1000, 32, 16, 100, torch.float32),
        (8, 2, 700, 64, 300, 64, torch.float16),
    ],
)
def test_fused_sliding_window_equals_float64_reference(heads, kv_heads, n, block, window, sliding, dtype):
    """The band: tiles left of it are skipped, keys outside it get exactly zero."""
    from core.lm.kernels.triton_stats import fused_stats

    torch.manual_seed(n)
    q = (torch.randn(heads, n, 64) * 1.5).to(dtype).cuda()
    k = (torch.randn(kv_heads, n, 64) * 1.5).to(dtype).cuda()
    v = torch.randn(kv_heads, n, 64).to(dtype)
    colsum, rows, blocks = fused_stats(q, k, 0.125, window, block, sliding)
    _, r_col, r_win, r_blocks = reference(
        q.cpu().double(), k.cpu().double(), v.double(), 0.125, window, block, sliding=sliding
    )

    def rel(a, b):
        return float(torch.linalg.norm(a.cpu().double() - b) / torch.linalg.norm(b))

    tol = 1e-4 if dtype == torch.float32 else 1e-3
    assert rel(colsum, r_col) <= tol and rel(rows, r_win) <= tol and rel(blocks, r_blocks) <= tol
    assert (rows[:, -1, : n - sliding] == 0).all()


@pytest.mark.parametrize(
    "heads,kv_heads,n,dim,dtype",
    [(9, 3, 1000, 64, torch.bfloat16), (4, 1, 777, 256, torch.bfloat16), (9, 3, 1500, 64, torch.float32)],
)
def test_statistics_from_the_attention_kernels_log_sum_exp(heads, kv_heads, n, dim, dtype):
    """One pass: the output and each row's log-sum-exp from PyTorch's flash / memory-efficient kernel
    (`causal_output_lse`), the statistics reusing that log-sum-exp; all against float64."""
    from core.lm.kernels.triton_stats import fused_stats
    from core.lm.stats import causal_output_lse

    torch.manual_seed(n)
    q = (torch.randn(heads, n, dim) * 1.5).to(dtype)
    k = (torch.randn(kv_heads, n, dim) * 1.5).to(dtype)
    v = torch.randn(kv_heads, n, dim).to(dtype)
    scale = dim**-0.5
    out, lse = causal_output_lse(q.cuda(), k.cuda(), v.cuda(), scale)
    colsum, rows, blocks = fused_stats(q.cuda(), k.cuda(), scale, 32, 64, None, lse)
    r_out, r_col, r_win, r_blocks = reference(q.double(), k.double(), v.double(), scale, 32, 64)
    g = heads // kv_heads
    s = (q.double() @ k.double().repeat_interleave(g, 0).transpose(-1, -2)) * scale
    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    tol = 1e-4 if dtype == torch.float32 else 1e-3

    def rel(a, b):
        return float(torch.linalg.norm(a.cpu().double() - b) / torch.linalg.norm(b))

    assert rel(lse, torch.logsumexp(s, -1)) <= 1e-5
    assert rel(out, r_out) <= (1e-5 if dtype == torch.float32 else 1e-2)
    assert rel(colsum, r_col) <= tol and rel(rows, r_win) <= tol and rel(blocks, r_blocks) <= tol


def test_float32_is_split_precision_not_tf32():
    """With float32 inputs the kernels multiply with split-precision tf32x3 dots, float32 accuracy
    (tl.dot defaults to plain tf32: ~1e-3)."""
    from core.lm.kernels.triton_stats import fused_stats

    torch.manual_seed(1)
    q, k = torch.randn(9, 2048, 64, device="cuda") * 3, torch.randn(3, 2048, 64, device="cuda") * 3
    colsum, rows, blocks = fused_stats(q, k, 0.125, 64, 64)
    _, r_col, r_win, r_blocks = reference(
        q.cpu().double(), k.cpu().double(), torch.zeros(3, 2048, 64, dtype=torch.float64), 0.125, 64, 64
    )
    for got, want in ((colsum, r_col), (rows, r_win), (blocks, r_blocks)):
        assert float(torch.linalg.norm(got.cpu().double() - want) / torch.linalg.norm(want)) <= 1e-4


def test_float32_large_scores_take_ieee_dots():
    """Queries and keys as large as Qwen2's first layer's: the tf32x3 error bound passes SPLIT_TOL,
    the layer's dots turn IEEE, and every statistic is as close to float64 as float32 arithmetic
    allows: within twice plain float32 attention's own error on the same inputs, or 1e-4
    (max-abs relative, the capture tests' measure)."""
    from core.lm.kernels import triton_stats

    torch.manual_seed(2)
    q = torch.randn(7, 1024, 64, device="cuda") * 12
    k = torch.randn(1, 1024, 64, device="cuda") * 12
    q[:, :, 0] += 150  # one large shared direction: big scores, steep softmax
    k[:, :, 0] += 3
    assert triton_stats.split_error_bound(q, k, 0.125) > triton_stats.SPLIT_TOL
    zeros = torch.zeros(1, 1024, 64)
    colsum, rows, blocks = triton_stats.fused_stats(q, k, 0.125, 32, 64)
    _, r_col, r_win, r_blocks = reference(q.cpu().double(), k.cpu().double(), zeros.double(), 0.125, 32, 64)
    s32 = (q.cpu() @ k.cpu().transpose(-1, -2)) * 0.125  # plain float32 attention, the floor
    s32 = s32.masked_fill(torch.ones(1024, 1024, dtype=torch.bool).triu(1), float("-inf"))
    a32 = torch.softmax(s32, -1).double()
    floor = {"colsum": a32.sum(1), "window": a32[:, -32:]}
    for name, got, want in (("colsum", colsum, r_col), ("window", rows, r_win), ("blocks", blocks, r_blocks)):
        err = float((got.cpu().double() - want).abs().max() / want.abs().max())
        base = float((floor[name] - want).abs().max() / want.abs().max()) if name in floor else 0.0
        print(f"{name}: fused {err:.3g}, plain float32 {base:.3g}")
        assert err <= max(1e-4, 2 * base), (name, err, base)


def test_tiny_gemma3_on_cuda_equals_eager(tiny_gemma3_dir):
    """Sliding + full layers, GQA 4/1, query_pre_attn_scalar, float32 on CUDA through the fused
    kernels: every statistic within 1e-4 of eager attention."""
    from transformers import AutoModelForCausalLM

    from core.lm import capture
    from tests.test_capture import check

    model = AutoModelForCausalLM.from_pretrained(
        tiny_gemma3_dir, dtype=torch.float32, attn_implementation="eager"
    )
    model = model.to("cuda").eval()
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, 700), device="cuda")
    with torch.no_grad():
        ref = model(ids, output_attentions=True)
    model.set_attn_implementation(capture.NAME)
    got = {}
    rec = capture.Recorder(window=16, block=32, on_layer=got.__setitem__)
    with torch.no_grad(), capture.recording(rec):
        out = model(ids)
    from types import SimpleNamespace as cpu

    ref = cpu(logits=ref.logits.cpu(), attentions=[a.cpu() for a in ref.attentions])
    got = {layer: cpu(**{k: t.cpu() for k, t in vars(st).items()}) for layer, st in got.items()}
    check(ref, cpu(logits=out.logits.cpu()), got, 700, 16, 32)


@pytest.mark.parametrize(
    "heads,kv_heads,n,c,block,window,sliding,dtype,tol",
    [
        (9, 3, 1000, 970, 64, 64, None, torch.bfloat16, 1e-3),
        (4, 1, 700, 651, 64, 32, 128, torch.bfloat16, 1e-3),
        (9, 3, 513, 490, 32, 16, None, torch.float32, 1e-4),
    ],
)
def test_context_statistics_on_the_fused_path_equal_float64(
    heads, kv_heads, n, c, block, window, sliding, dtype, tol
):
    """The agnostic setting's statistics on the GPU path (fused kernels + `with_context`) equal the
    float64 statistics of the context as its own prompt."""
    import math

    from core.lm.stats import attention_stats_fused, with_context

    torch.manual_seed(c)
    q = (torch.randn(heads, n, 64) * 1.5).to(dtype).cuda()
    k = (torch.randn(kv_heads, n, 64) * 1.5).to(dtype).cuda()
    v = torch.randn(kv_heads, n, 64).to(dtype).cuda()
    _, st = attention_stats_fused(q, k, v, 0.125, window, block, sliding=sliding)
    ctx = with_context(st, q, k, 0.125, c, window, block, sliding).context
    _, r_col, r_win, r_blocks = reference(
        q[:, :c].cpu().double(),
        k[:, :c].cpu().double(),
        v[:, :c].cpu().double(),
        0.125,
        window,
        block,
        sliding,
    )
    mc = math.ceil(c / block)

    def rel(a, b):
        return float(torch.linalg.norm(a.cpu().double() - b) / torch.linalg.norm(b))

    errors = [
        rel(ctx.colsum[:, :c], r_col),
        rel(ctx.window[..., :c], r_win),
        rel(ctx.blocks[:, :mc, :mc], r_blocks),
    ]
    print(f"context statistics, {dtype}, n={n}, c={c}, sliding={sliding}: relative errors {errors}")
    assert max(errors) <= tol
    assert not ctx.colsum[:, c:].any() and not ctx.blocks[:, mc:].any()
