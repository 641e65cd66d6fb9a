"""Tiled attention statistics (the torch reference path).

For one layer, from post-RoPE Q (head, query, dim) and K, V (kv_head, key, dim):

    A = softmax(Q Kᵀ · scale + causal mask)            per query head, fp32
    out      = A V                                     the layer's attention output (eager math)
    colsum   = Σ_q A[q, k]                             (head, key)
    window   = A[N-W:, :]                              (head, wq, key)
    blocks   = Σ over each B×B block of A              (head, qblock, kblock)
    qpool/kpool: per block, the q (k) vector of largest L2 norm

A is formed tile by tile over query rows (keys beyond the tile's last row are causally masked for
the whole tile and never computed), so memory is O(tile × N), never N². GQA: query head h reads kv
head h // (heads / kv_heads), through a view, never a copy of K.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

TILE_BYTES = 24 * 2**20  # scores + probabilities of one tile: small tiles waste little causal work


@dataclass
class LayerStats:
    colsum: torch.Tensor  # (head, key) fp32
    window: torch.Tensor  # (head, wq, key) fp32
    blocks: torch.Tensor  # (head, qblock, kblock) fp32
    qpool: torch.Tensor  # (head, kblock, dim) max-L2 pooled
    kpool: torch.Tensor
    context: LayerStats | None = None  # the same statistics of the context's own rows (`with_context`)


def with_context(
    stats: LayerStats, query, key, scaling, context: int, window: int, block: int, sliding=None, mask=None
):
    """`stats` with the statistics of the context's own rows (queries 0 .. context - 1, the question's
    rows left out: the query-agnostic setting), from the same forward: the attention rows of the last
    W context queries and of the question are computed exactly (fp32, the layer's causal or sliding
    band or mask), the window statistics taken from the former and the question rows' share taken out of
    `colsum` and `blocks`. O((W + question) x N) per layer, on either capture path.

    Keys at or after `context` get 0 (no context query sees them): the agnostic view cuts them off."""
    heads, n, d = query.shape
    kv = key.shape[0]
    g = heads // kv
    c = int(context)
    wc = min(window, c)
    r0 = c - wc
    dev = query.device
    scores = torch.matmul(
        query[:, r0:].float().view(kv, g, n - r0, d), key.float().transpose(-1, -2)[:, None]
    )
    scores = scores.mul_(scaling).view(heads, n - r0, n)
    pos_q = torch.arange(r0, n, device=dev)[:, None]
    pos_k = torch.arange(n, device=dev)[None, :]
    if mask is None:
        visible = pos_k <= pos_q
        if sliding is not None:
            visible &= pos_k > pos_q - sliding
        scores.masked_fill_(~visible, float("-inf"))
    elif mask.dtype == torch.bool:
        scores.masked_fill_(~mask[r0:n, :n], float("-inf"))
    else:
        scores.add_(mask[r0:n, :n].float())
    probs = torch.softmax(scores, dim=-1)
    del scores
    question = probs[:, wc:]  # rows c .. n-1
    m = num_blocks(n, block)
    mc = num_blocks(c, block)
    colsum = (stats.colsum - question.sum(dim=1)).clamp_min_(0)
    colsum[:, c:] = 0
    share = _pad_to(question, 2, m * block).view(heads, n - c, m, block).sum(dim=-1)  # (head, Q, kblock)
    rows_of = torch.arange(c, n, device=dev) // block
    blocks = stats.blocks - torch.zeros_like(stats.blocks).index_add_(1, rows_of, share)
    blocks = blocks.clamp_min_(0)
    blocks[:, mc:] = 0
    blocks[:, :, mc:] = 0
    expand = torch.arange(heads, device=dev) // g
    whole = c // block  # blocks wholly inside the context pool the same tokens as the prompt's own

    def pooled(prompt, x, heads_of=slice(None)):
        out = torch.zeros_like(prompt)
        out[:, :whole] = prompt[:, :whole]
        if whole < mc:  # the block the question starts in: its context tokens only
            out[:, whole] = pool_blocks(x[:, whole * block : c], block)[heads_of, 0]
        return out

    qpool, kpool = pooled(stats.qpool, query), pooled(stats.kpool, key, expand)
    stats.context = LayerStats(colsum, probs[:, :wc], blocks, qpool, kpool)
    return stats


def num_blocks(n: int, block: int) -> int:
    return -(-n // block)


def tile_rows(n: int, heads: int, block: int, tile_bytes: int = TILE_BYTES) -> int:
    """Query rows per tile: a multiple of the block size, so tiles cover whole query blocks."""
    rows = max(block, tile_bytes // max(1, heads * n * 4 * 3))
    return max(block, (rows // block) * block)


def _pad_to(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Zero-pad dimension `dim` up to `size` (a copy only when padding is needed)."""
    extra = size - x.shape[dim]
    if extra == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, extra]
    return torch.nn.functional.pad(x, pad)


def pool_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """x (head, token, dim) -> (head, kblock, dim): per block, the vector of largest L2 norm (the first
    on ties). The last block may be partial: it pools its real tokens only."""
    h, n, d = x.shape
    m = num_blocks(n, block)
    pad = m * block - n
    xf = x.float()
    xp = torch.nn.functional.pad(xf, (0, 0, 0, pad)).view(h, m, block, d)
    norms = torch.nn.functional.pad(xf.norm(dim=-1), (0, pad), value=-1.0).view(h, m, block)
    idx = norms.argmax(dim=-1)  # first max: deterministic
    maxl2 = torch.gather(xp, 2, idx[..., None, None].expand(h, m, 1, d)).squeeze(2)
    return maxl2


def attention_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float,
    window: int,
    block: int,
    mask: torch.Tensor | None = None,
    tile: int | None = None,
    on_rows: Callable[[int, int, torch.Tensor], None] | None = None,
    sliding: int | None = None,
) -> tuple[torch.Tensor, LayerStats]:
    """Attention output (head, query, dim_v) in the input dtype, and the layer's statistics.

    mask: optional (query, key) boolean (True = attend) or additive float mask replacing the
    plain causal one. sliding: a sliding-window layer's W (query q sees keys q-W < k <= q, as
    transformers defines it): each tile computes only the keys of its band, so the layer costs
    O(N·(tile + W)), never N². on_rows(q0, q1, A[:, q0:q1, :q1]) receives every probability tile
    (used to store full matrices for chosen layers).
    """
    if sliding is not None and mask is not None:
        raise ValueError("give a sliding window or a mask, not both")
    heads, n, d = query.shape
    kv_heads = key.shape[0]
    group = heads // kv_heads
    w = min(window, n)
    m = num_blocks(n, block)
    tile = tile or tile_rows(n if sliding is None else min(n, 2 * sliding), heads, block)
    dev = query.device
    qg = query.view(kv_heads, group, n, d)
    kt = key.transpose(-1, -2)[:, None]  # (kv, 1, dim, key): broadcast over the group, no copy
    vg = value[:, None]

    out = torch.empty(heads, n, value.shape[-1], dtype=value.dtype, device=dev)
    colsum = torch.zeros(heads, n, dtype=torch.float32, device=dev)
    rows = torch.zeros(heads, w, n, dtype=torch.float32, device=dev)
    blocks = torch.zeros(heads, m, m, dtype=torch.float32, device=dev)

    for q0 in range(0, n, tile):
        q1 = min(n, q0 + tile)
        t = q1 - q0
        # keys k0..q1-1: all earlier keys, or a sliding layer's band (from a block boundary)
        k0 = 0 if sliding is None else max(0, q0 - sliding + 1) // block * block
        qk = torch.matmul(qg[:, :, q0:q1].float(), kt[..., k0:q1].float())
        scores = qk.mul_(scaling)  # (kv, g, t, q1 - k0)
        if mask is None:  # only the tile's own diagonal square holds future keys
            future = torch.ones(t, t, dtype=torch.bool, device=dev).triu_(1)
            scores[..., q0 - k0 :].masked_fill_(future, float("-inf"))
            if sliding is not None:  # and keys at distance >= W are outside the band
                pos_q = torch.arange(q0, q1, device=dev)[:, None]
                pos_k = torch.arange(k0, q1, device=dev)[None, :]
                scores.masked_fill_(pos_k <= pos_q - sliding, float("-inf"))
        elif mask.dtype == torch.bool:
            scores.masked_fill_(~mask[q0:q1, :q1], float("-inf"))
        else:
            scores.add_(mask[q0:q1, :q1].float())
        probs = torch.softmax(scores, dim=-1)
        del scores
        out.view(kv_heads, group, n, -1)[:, :, q0:q1] = torch.matmul(probs.to(value.dtype), vg[:, :, k0:q1])
        span = q1 - k0
        probs = probs.view(heads, t, span)
        # one pass over the tile: sum rows within each query block, then keys within each key block
        mq, mk = num_blocks(t, block), num_blocks(span, block)
        rowsum = _pad_to(probs, 1, mq * block).view(heads, mq, block, span).sum(dim=2)  # (head, mq, span)
        colsum[:, k0:q1] += rowsum.sum(dim=1)
        b0, kb0 = q0 // block, k0 // block
        blocks[:, b0 : b0 + mq, kb0 : kb0 + mk] += (
            _pad_to(rowsum, 2, mk * block).view(heads, mq, mk, block).sum(dim=-1)
        )
        lo = max(q0, n - w)
        if lo < q1:
            rows[:, lo - (n - w) : q1 - (n - w), k0:q1] = probs[:, lo - q0 :]
        if on_rows is not None:
            on_rows(q0, q1, torch.nn.functional.pad(probs, (k0, 0)) if k0 else probs)
        del probs, rowsum

    expand = torch.arange(heads, device=dev) // group  # query head -> its kv head
    stats = LayerStats(colsum, rows, blocks, pool_blocks(query, block), pool_blocks(key, block)[expand])
    return out, stats


def sliding_output(query, key, value, scaling, sliding: int, chunk: int = 4096) -> torch.Tensor:
    """A sliding-window layer's output through sdpa, chunk by chunk over the queries, each chunk with
    the small mask of its band only (never an N x N mask)."""
    heads, n, _ = query.shape
    group = heads // key.shape[0]
    out = torch.empty(heads, n, value.shape[-1], dtype=value.dtype, device=query.device)
    for q0 in range(0, n, chunk):
        q1 = min(n, q0 + chunk)
        k0 = max(0, q0 - sliding + 1)
        pos_q = torch.arange(q0, q1, device=query.device)[:, None]
        pos_k = torch.arange(k0, q1, device=query.device)[None, :]
        band = (pos_k <= pos_q) & (pos_k > pos_q - sliding)
        out[:, q0:q1] = torch.nn.functional.scaled_dot_product_attention(
            query[None, :, q0:q1],
            key[None, :, k0:q1],
            value[None, :, k0:q1],
            attn_mask=band,
            scale=scaling,
            enable_gqa=group > 1,
        )[0]
    return out


def causal_output_lse(query, key, value, scaling) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of one whole prompt on CUDA: (output (head, N, dv), each row's natural-log
    log-sum-exp of its scaled scores (head, N), fp32), from cuDNN's or PyTorch's flash kernel
    (bf16/fp16) or PyTorch's memory-efficient kernel (float32, which sdpa would otherwise send to the N x N math kernel when
    kv heads are shared). Never an N x N matrix; the kv heads are repeated for the kernel (GQA)."""
    heads, n = query.shape[0], query.shape[1]
    group = heads // key.shape[0]
    k = key.repeat_interleave(group, 0) if group > 1 else key
    v = value.repeat_interleave(group, 0) if group > 1 else value
    q4, k4, v4 = query[None].contiguous(), k[None].contiguous(), v[None].contiguous()
    half = query.dtype in (torch.float16, torch.bfloat16)
    kind = (query.dtype, query.shape[-1], str(query.device))
    if half and _CUDNN.get(kind, True):  # what sdpa itself runs on Hopper: cuDNN's flash kernel
        try:
            out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
                q4, k4, v4, None, True, 0.0, True, False, scale=scaling
            )[:2]
            _CUDNN[kind] = True
            return out[0], lse[0, :, :n].reshape(heads, n).float()
        except RuntimeError:  # this cuDNN lacks the shape (e.g. head dim 256): PyTorch's flash
            _CUDNN[kind] = False
    if half and query.shape[-1] <= 256:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
            q4, k4, v4, 0.0, True, False, scale=scaling
        )[:2]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
            q4, k4, v4, None, True, 0.0, True, scale=scaling
        )[:2]
    return out[0], lse[0, :, :n].float()


_CUDNN: dict = {}  # (dtype, head dim, device) -> whether cuDNN's attention ran that kind


def attention_stats_fused(query, key, value, scaling, window, block, sliding: int | None = None):
    """CUDA path: the layer output and its rows' log-sum-exp from PyTorch's attention kernels (flash,
    or memory-efficient for float32; banded chunks for sliding-window layers), the statistics from
    the fused Triton kernels (core/lm/kernels/triton_stats.py), which reuse that log-sum-exp in
    half precision and so read Q·K once (float32 computes its own). Same contract as `attention_stats`."""
    from core.lm.kernels.triton_stats import fused_stats

    heads, kv_heads = query.shape[0], key.shape[0]
    group = heads // kv_heads
    if sliding is None or sliding >= query.shape[1]:
        out, lse = causal_output_lse(query, key, value, scaling)
    else:
        out, lse = sliding_output(query, key, value, scaling, sliding), None
    if query.dtype == torch.float32:
        # float32 is the precise capture: the rows' normalizers come from the kernels' own dots, as
        # the probabilities do (the memory-efficient kernel's float32 log-sum-exp is not that exact:
        # on Qwen2's first layer, rows summed to 1 only within 1e-3), at the cost of one more pass
        lse = None
    colsum, rows, blocks = fused_stats(query, key, scaling, window, block, sliding, lse)
    expand = torch.arange(heads, device=query.device) // group
    return out, LayerStats(colsum, rows, blocks, pool_blocks(query, block), pool_blocks(key, block)[expand])
