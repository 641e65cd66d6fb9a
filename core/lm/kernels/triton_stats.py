"""Fused attention statistics in Triton: the same quantities as dump/stats.py, without forming A.

Over the causal tiles of one layer (grid = query blocks × query heads, tile = B × B):
  1. log2-sum-exp2 of every score row (online softmax), fp32 — skipped when the caller passes the
     row log-sum-exp that PyTorch's flash / memory-efficient attention already returned with the
     layer's output (full-attention layers: `stats.causal_output_lse`), so one pass over Q·K remains;
  2. probabilities P = exp2(S·log2e − lse) formed tile by tile in registers and reduced there, one
     program per key block walking down the query blocks that see it: the B×B block sum (stored once
     per tile), the key block's column sums (accumulated in registers, stored once: no atomics), and
     the rows of the last W queries (stored). Fully masked tiles (key block > query block) are never visited,
     nor, for a sliding-window layer (window S: query q sees keys q-S < k <= q), tiles left of its band:
     such a layer costs O(N·S), not N².
Q/K stay in the model's dtype (bf16/fp16), dot products accumulate in fp32; float32 inputs are
multiplied with split-precision tensor-core dots (`input_precision="tf32x3"`: three tf32 products),
not plain tf32 (~1e-3). A tf32x3 score errs by up to ~2^-20 |q|·|k|, a bound on the norms, not on the
score: where that bound passes SPLIT_TOL (layers whose queries and keys are very large, as Qwen2's
first), the layer's float32 dots are scalar IEEE ones instead (exact to float32, ~24x slower). GQA: query head h reads kv
head h // G by index; repeated keys are never materialized. Every sum has a fixed order: the same
bits every run.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _band_start(i, SLIDE, BLOCK: tl.constexpr):
    """The first key block query block i sees: 0, or the start of a sliding window's band."""
    j0 = (i * BLOCK - SLIDE + 1) // BLOCK
    if j0 < 0:
        j0 = 0
    return j0


@triton.jit
def _rows_of(X, head, s_h, s_n, idx, d, N):
    """The (len(idx), D) tile of head `head` of X at positions `idx` (zeros past the prompt)."""
    return tl.load(X + head * s_h + idx[:, None] * s_n + d[None, :], mask=idx[:, None] < N, other=0.0)


@triton.jit
def _dot(q, k, FP32: tl.constexpr, IEEE: tl.constexpr):
    """Q·Kᵀ of a tile, fp32: IEEE scalar dots, tf32x3 for float32 inputs, else the inputs' tensor cores."""
    if IEEE:
        return tl.dot(q, tl.trans(k), input_precision="ieee")
    elif FP32:
        return tl.dot(q, tl.trans(k), input_precision="tf32x3")
    return tl.dot(q, tl.trans(k))


@triton.jit
def _scores(q, k, rows, cols, N, SLIDE, scale_log2, FP32: tl.constexpr, IEEE: tl.constexpr):
    """Scores (log2 units) of the query tile against the key tile of block `cols`, and which of them
    are visible: causal, inside the band (k > q - SLIDE), inside the prompt."""
    s = _dot(q, k, FP32, IEEE) * scale_log2
    valid = (cols[None, :] <= rows[:, None]) & (cols[None, :] > rows[:, None] - SLIDE)
    valid = valid & (cols[None, :] < N) & (rows[:, None] < N)
    return s, valid


@triton.jit
def _lse_kernel(
    Q,
    K,
    LSE,
    sq_h,
    sq_n,
    sk_h,
    sk_n,
    N,
    G,
    SLIDE,
    scale_log2,
    BLOCK: tl.constexpr,
    D: tl.constexpr,
    FP32: tl.constexpr,
    IEEE: tl.constexpr,
):
    i = tl.num_programs(0) - 1 - tl.program_id(0)  # longest rows first: no tail of heavy programs
    h = tl.program_id(1)
    kvh = h // G
    rows = i * BLOCK + tl.arange(0, BLOCK)
    d = tl.arange(0, D)
    q = _rows_of(Q, h, sq_h, sq_n, rows, d, N)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    acc = tl.zeros([BLOCK], tl.float32)
    for j in range(_band_start(i, SLIDE, BLOCK), i + 1):
        cols = j * BLOCK + tl.arange(0, BLOCK)
        k = _rows_of(K, kvh, sk_h, sk_n, cols, d, N)
        s, valid = _scores(q, k, rows, cols, N, SLIDE, scale_log2, FP32, IEEE)
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        acc = acc * tl.exp2(m - m_safe) + tl.sum(tl.exp2(s - m_safe[:, None]), 1)
        m = m_new
    lse = m + tl.log2(acc)
    tl.store(LSE + h * N + rows, lse, mask=rows < N)


@triton.jit
def _band_end(j, SLIDE, M, BLOCK: tl.constexpr):
    """One past the last query block that sees key block j: M, or the end of a sliding window's band
    (key k is seen by queries q < k + SLIDE)."""
    i1 = ((j + 1) * BLOCK + SLIDE - 2) // BLOCK + 1
    if i1 > M:
        i1 = M
    return i1


@triton.jit
def _probs(
    q, k, lse, rows, cols, N, SLIDE, scale_log2, FP32: tl.constexpr, IEEE: tl.constexpr, MASKED: tl.constexpr
):
    """The tile's probabilities P = exp2(S·log2e − lse). MASKED: zero where a key is not visible (the
    diagonal tile, a partial last key block, a sliding band). Unmasked tiles need no zeroing: they lie
    strictly below the diagonal, and rows past the prompt carry lse = +inf, so their P is 0."""
    if MASKED:
        s, valid = _scores(q, k, rows, cols, N, SLIDE, scale_log2, FP32, IEEE)
        return tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
    return tl.exp2(_dot(q, k, FP32, IEEE) * scale_log2 - lse[:, None])


@triton.jit
def _visit(
    Q,
    LSE,
    BLOCKS,
    WINDOW,
    k,
    cols,
    acc,
    h,
    i,
    j,
    sq_h,
    sq_n,
    N,
    W,
    M,
    SLIDE,
    scale_log2,
    BLOCK: tl.constexpr,
    D: tl.constexpr,
    FP32: tl.constexpr,
    IEEE: tl.constexpr,
    MASKED: tl.constexpr,
):
    """Query block i against the program's key block j: the tile's block sum stored, its
    probabilities added to the (BLOCK x BLOCK) column accumulator, the window's rows stored."""
    rows = i * BLOCK + tl.arange(0, BLOCK)
    q = _rows_of(Q, h, sq_h, sq_n, rows, tl.arange(0, D), N)
    lse = tl.load(LSE + h * N + rows, mask=rows < N, other=float("inf"))
    p = _probs(q, k, lse, rows, cols, N, SLIDE, scale_log2, FP32, IEEE, MASKED)
    tl.store(BLOCKS + (h * M + i) * M + j, tl.sum(tl.sum(p, 1), 0))
    acc += p
    win_lo = N - W
    if (i + 1) * BLOCK > win_lo:
        wr = rows - win_lo
        wmask = (wr[:, None] >= 0) & (rows[:, None] < N) & (cols[None, :] < N)
        tl.store(WINDOW + (h * W + wr[:, None]) * N + cols[None, :], p, mask=wmask)
    return acc


@triton.jit
def _stats_kernel(
    Q,
    K,
    LSE,
    COLSUM,
    BLOCKS,
    WINDOW,
    sq_h,
    sq_n,
    sk_h,
    sk_n,
    N,
    G,
    W,
    M,
    SLIDE,
    scale_log2,
    BLOCK: tl.constexpr,
    D: tl.constexpr,
    FP32: tl.constexpr,
    IEEE: tl.constexpr,
    FULL: tl.constexpr,
):
    """Pass 2, one program per (key block j, query head): its key tile stays in registers while it
    walks down the query blocks that see it. Its probabilities are added up element by element in a
    tile-sized accumulator and reduced to column sums once, at the end (no per-tile reduction across
    warps, no atomics; the same order every run). Only the tiles that need it are masked: for a
    full-attention layer (FULL), the diagonal tile and a partial last key block's."""
    j = tl.program_id(0)  # the first key blocks are seen by the most query blocks: launched first
    h = tl.program_id(1)
    kvh = h // G
    cols = j * BLOCK + tl.arange(0, BLOCK)
    k = _rows_of(K, kvh, sk_h, sk_n, cols, tl.arange(0, D), N)
    acc = tl.zeros([BLOCK, BLOCK], tl.float32)
    end = _band_end(j, SLIDE, M, BLOCK)
    masked_end = end
    if FULL:
        if (j + 1) * BLOCK <= N:  # a whole key block: only its diagonal tile is masked
            masked_end = j + 1
    for i in range(j, masked_end):
        acc = _visit(
            Q,
            LSE,
            BLOCKS,
            WINDOW,
            k,
            cols,
            acc,
            h,
            i,
            j,
            sq_h,
            sq_n,
            N,
            W,
            M,
            SLIDE,
            scale_log2,
            BLOCK,
            D,
            FP32,
            IEEE,
            True,
        )
    for i in range(masked_end, end):
        acc = _visit(
            Q,
            LSE,
            BLOCKS,
            WINDOW,
            k,
            cols,
            acc,
            h,
            i,
            j,
            sq_h,
            sq_n,
            N,
            W,
            M,
            SLIDE,
            scale_log2,
            BLOCK,
            D,
            FP32,
            IEEE,
            False,
        )
    tl.store(COLSUM + h * N + cols, tl.sum(acc, 0), mask=cols < N)


WARPS, STAGES = 4, 3  # the launches (stages: at most; see SHARED_BYTES)
SHARED_BYTES = 196608  # what the pipelined tiles may take of a Hopper SM's 227 KiB of shared memory
# Tiles: 64 x 64 for blocks of 64 (the default up to 64k), 128 x 128 for blocks of 128 and more
# (measured on an H200, SmolLM2 shape at 128k, pass 2 alone: 78 ms per layer with 64, 63 with 128;
# 8 warps were slower with both)
TILE, TILE_LARGE = 64, 128
# pass 2 keeps a tile-sized fp32 accumulator beside the tile's probabilities: 8 warps for 128 x 128
# tiles, so that both stay in registers
STATS_WARPS = {128: 8}
# the largest bound on a tf32x3 score's error (natural-log units, hence on a probability's relative
# error) a float32 layer keeps tensor-core dots under; above it the layer's dots are IEEE
SPLIT_TOL = 2e-4


def split_error_bound(query: torch.Tensor, key: torch.Tensor, scaling: float) -> float:
    """An upper bound on the error of a tf32x3 score of this layer: 2^-20 · max|q| · max|k| · scale
    (each operand split into two tf32 halves, the low·low product dropped; 2^-20 covers both)."""
    qn = torch.linalg.vector_norm(query.float(), dim=-1).amax()
    kn = torch.linalg.vector_norm(key.float(), dim=-1).amax()
    return float(qn * kn) * abs(float(scaling)) * 2.0**-20


def _stage_bytes(tile: int, dim: int, elem: int, fp32: bool) -> int:
    """Shared memory one pipelined stage of a tile's Q and K holds (tf32x3 splits each in two)."""
    return (4 if fp32 else 2) * tile * dim * elem


def _tile(block: int, dim: int, elem: int, fp32: bool) -> int:
    """The kernel's tile for a block: 128 for blocks of 128 and more, else 64, halved while one stage
    of it does not fit in shared memory (float32 at head dim 256: 32), never above the block."""
    tile = TILE_LARGE if block >= TILE_LARGE else TILE
    while tile > 16 and _stage_bytes(tile, dim, elem, fp32) > SHARED_BYTES:
        tile //= 2
    return min(tile, block)


def fused_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    window: int,
    block: int,
    sliding: int | None = None,
    lse: torch.Tensor | None = None,
):
    """query (head, N, D), key (kv_head, N, D) on CUDA -> colsum (head, N), window (head, W, N),
    blocks (head, M, M), all fp32. `block` must be a power of two; blocks larger than the kernel's
    tile are sums of whole tiles. `sliding`: the layer's window S (None = full causal attention).
    `lse`: the rows' natural-log log-sum-exp of the scaled scores (head, N), when the attention
    kernel that made the layer's output returned it; pass 1 is then skipped."""
    fp32 = query.dtype == torch.float32
    tile = _tile(block, query.shape[-1], query.element_size(), fp32)
    if block > tile:
        colsum, rows, tiles = fused_stats(query, key, scaling, window, tile, sliding, lse)
        f = block // tile
        m = tiles.shape[-1]
        mc = math.ceil(m / f)
        padded = torch.nn.functional.pad(tiles, (0, mc * f - m, 0, mc * f - m))
        return colsum, rows, padded.view(tiles.shape[0], mc, f, mc, f).sum(dim=(2, 4))
    heads, n, d = query.shape
    kv = key.shape[0]
    w = min(window, n)
    m = math.ceil(n / block)
    q = query if query.stride(-1) == 1 else query.contiguous()
    k = key if key.stride(-1) == 1 else key.contiguous()
    given = lse is not None
    if given:
        if lse.shape != (heads, n):
            raise ValueError(f"lse of shape {tuple(lse.shape)}, not (heads, N) = {(heads, n)}")
        lse = (lse.float() * LOG2E).contiguous()  # natural log -> the kernels' log2 units
    else:
        lse = torch.empty(heads, n, dtype=torch.float32, device=q.device)
    colsum = torch.zeros(heads, n, dtype=torch.float32, device=q.device)
    blocks = torch.zeros(heads, m, m, dtype=torch.float32, device=q.device)
    rows = torch.zeros(heads, w, n, dtype=torch.float32, device=q.device)
    grid = (m, heads)
    scale_log2 = float(scaling) * LOG2E
    slide = n + 1 if sliding is None else int(sliding)  # n + 1: every earlier key is in the band
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1))
    stages = max(1, min(STAGES, SHARED_BYTES // _stage_bytes(block, d, q.element_size(), fp32)))
    ieee = fp32 and split_error_bound(q, k, scaling) > SPLIT_TOL
    meta = dict(BLOCK=block, D=d, FP32=fp32, IEEE=ieee, num_stages=stages)
    if not given:
        _lse_kernel[grid](q, k, lse, *strides, n, heads // kv, slide, scale_log2, num_warps=WARPS, **meta)
    _stats_kernel[grid](
        q,
        k,
        lse,
        colsum,
        blocks,
        rows,
        *strides,
        n,
        heads // kv,
        w,
        m,
        slide,
        scale_log2,
        FULL=sliding is None,
        num_warps=STATS_WARPS.get(block, WARPS),
        **meta,
    )
    return colsum, rows, blocks
