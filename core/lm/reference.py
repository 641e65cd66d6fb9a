"""The obviously-correct float64 reference of the attention statistics: the full score matrix, a
causal (or sliding-window) softmax, then every reduction. The capture's torch path and its fused CUDA
kernels are tested against it (`tests/test_stats.py`, `tests/test_kernels.py`,
`bench/kernel_errors.py`)."""

from __future__ import annotations

import math

import torch


def reference(q, k, v, scale, window, block, sliding=None):
    """Obviously-correct float64: full score matrix, causal (or sliding-window: q-S < k <= q)
    softmax, then every reduction."""
    h, n, _ = q.shape
    g = h // k.shape[0]
    kk, vv = k.double().repeat_interleave(g, 0), v.double().repeat_interleave(g, 0)
    s = q.double() @ kk.transpose(-1, -2) * scale
    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    if sliding is not None:
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).tril(-sliding), float("-inf"))
    a = torch.softmax(s, -1)
    m = math.ceil(n / block)
    blocks = torch.zeros(h, m, m, dtype=torch.float64)
    for i in range(m):
        for j in range(m):
            blocks[:, i, j] = a[:, i * block : (i + 1) * block, j * block : (j + 1) * block].sum((1, 2))
    return a @ vv, a.sum(1), a[:, n - min(window, n) :], blocks
