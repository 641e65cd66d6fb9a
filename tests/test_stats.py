"""The tiled statistics against a float64 brute-force reference."""

import math

import pytest
import torch

from core.lm.reference import reference
from core.lm.stats import attention_stats, pool_blocks, with_context


@pytest.mark.parametrize(
    "heads,kv_heads,n,block,tile,window",
    [(4, 4, 64, 16, 16, 8), (6, 2, 100, 16, 32, 7), (9, 3, 129, 64, 64, 200), (2, 1, 37, 8, 8, 1)],
)
def test_stats_match_float64_reference(heads, kv_heads, n, block, tile, window):
    torch.manual_seed(n)
    q, k, v = torch.randn(heads, n, 16) * 2, torch.randn(kv_heads, n, 16) * 2, torch.randn(kv_heads, n, 16)
    out, st = attention_stats(q, k, v, 0.25, window, block, tile=tile)
    r_out, r_col, r_win, r_blocks = reference(q, k, v, 0.25, window, block)
    rel = lambda a, b: float((a.double() - b).abs().max() / b.abs().max())  # noqa: E731
    assert rel(out, r_out) < 1e-5
    assert rel(st.colsum, r_col) < 1e-5
    assert rel(st.window, r_win) < 1e-5
    assert rel(st.blocks, r_blocks) < 1e-5
    # invariants: rows of A sum to 1
    assert torch.allclose(st.colsum.sum(-1), torch.full((heads,), float(n)), rtol=1e-5)
    assert torch.allclose(st.blocks.sum((-1, -2)), torch.full((heads,), float(n)), rtol=1e-5)
    assert torch.allclose(st.window.sum(-1), torch.ones(heads, min(window, n)), atol=1e-5)


@pytest.mark.parametrize(
    "heads,kv_heads,n,block,tile,window,sliding",
    [
        (4, 1, 300, 16, 32, 8, 24),
        (6, 2, 257, 32, 64, 40, 100),
        (2, 2, 64, 8, 16, 70, 1),
        (4, 4, 90, 16, None, 5, 33),
    ],
)
def test_sliding_window_stats_match_float64_reference(heads, kv_heads, n, block, tile, window, sliding):
    torch.manual_seed(n + sliding)
    q, k, v = torch.randn(heads, n, 16) * 2, torch.randn(kv_heads, n, 16) * 2, torch.randn(kv_heads, n, 16)
    out, st = attention_stats(q, k, v, 0.25, window, block, tile=tile, sliding=sliding)
    r_out, r_col, r_win, r_blocks = reference(q, k, v, 0.25, window, block, sliding=sliding)
    rel = lambda a, b: float((a.double() - b).abs().max() / b.abs().max())  # noqa: E731
    assert rel(out, r_out) < 1e-5
    assert rel(st.colsum, r_col) < 1e-5
    assert rel(st.window, r_win) < 1e-5
    assert rel(st.blocks, r_blocks) < 1e-5
    # nothing outside the band: the last query row's keys before n - sliding are exactly zero
    assert (st.window[:, -1, : max(0, n - sliding)] == 0).all()


def test_pooling_picks_largest_norm_in_each_block_and_partial_block():
    x = torch.zeros(1, 5, 2)
    x[0, 1] = torch.tensor([3.0, 4.0])  # norm 5, block 0
    x[0, 2] = torch.tensor([0.0, -4.5])  # norm 4.5, block 0
    x[0, 4] = torch.tensor([1.0, 1.0])  # partial block 1 holds only token 4
    mx = pool_blocks(x, 4)
    assert mx.shape == (1, 2, 2)
    assert torch.equal(mx[0, 0], torch.tensor([3.0, 4.0]))
    assert torch.equal(mx[0, 1], torch.tensor([1.0, 1.0]))


def test_full_rows_callback_sees_every_row_once():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 50, 8), torch.randn(2, 50, 8), torch.randn(2, 50, 8)
    full = torch.zeros(2, 50, 50)

    def on_rows(q0, q1, p):
        full[:, q0:q1, :q1] += p

    attention_stats(q, k, v, 0.3, 4, 8, tile=16, on_rows=on_rows)
    assert torch.allclose(full.sum(-1), torch.ones(2, 50), atol=1e-6)
    assert torch.allclose(full.sum(1), attention_stats(q, k, v, 0.3, 4, 8)[1].colsum, atol=1e-5)


@pytest.mark.parametrize("n,sliding,chunk", [(300, 24, 64), (100, 200, 32), (257, 1, 50)])
def test_banded_sliding_output_matches_float64_reference(n, sliding, chunk):
    from core.lm.stats import sliding_output

    torch.manual_seed(n)
    q, k, v = torch.randn(4, n, 16), torch.randn(2, n, 16), torch.randn(2, n, 16)
    out = sliding_output(q, k, v, 0.25, sliding, chunk=chunk)
    ref = reference(q, k, v, 0.25, 8, 16, sliding=sliding)[0]
    assert float((out.double() - ref).abs().max() / ref.abs().max()) < 1e-5


@pytest.mark.parametrize(
    "heads,kv_heads,n,c,block,window,sliding", [(6, 2, 100, 81, 16, 7, None), (4, 1, 130, 97, 32, 40, 48)]
)
def test_context_statistics_are_those_of_the_context_as_its_own_prompt(
    heads, kv_heads, n, c, block, window, sliding
):
    """`with_context` on the whole prompt equals the float64 statistics of the first c tokens alone."""
    torch.manual_seed(c)
    q, k, v = torch.randn(heads, n, 16) * 2, torch.randn(kv_heads, n, 16) * 2, torch.randn(kv_heads, n, 16)
    _, st = attention_stats(q, k, v, 0.25, window, block, tile=32, sliding=sliding)
    ctx = with_context(st, q, k, 0.25, c, window, block, sliding).context
    _, r_col, r_win, r_blocks = reference(q[:, :c], k[:, :c], v[:, :c], 0.25, window, block, sliding)
    mc = math.ceil(c / block)
    rel = lambda a, b: float((a.double() - b).abs().max() / b.abs().max())  # noqa: E731
    assert rel(ctx.colsum[:, :c], r_col) < 1e-5
    assert rel(ctx.window[..., :c], r_win) < 1e-5 and not ctx.window[..., c:].any()
    assert rel(ctx.blocks[:, :mc, :mc], r_blocks) < 1e-5
    assert not ctx.colsum[:, c:].any() and not ctx.blocks[:, mc:].any() and not ctx.blocks[:, :, mc:].any()
    # pooled Q and K of the context's tokens only (the block the question starts in cut at c)
    expand = torch.arange(heads) // (heads // kv_heads)
    assert torch.equal(ctx.qpool[:, :mc], pool_blocks(q[:, :c], block))
    assert torch.equal(ctx.kpool[:, :mc], pool_blocks(k[:, :c], block)[expand])
    assert not ctx.qpool[:, mc:].any() and not ctx.kpool[:, mc:].any()
