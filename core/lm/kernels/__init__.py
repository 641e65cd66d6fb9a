"""Fast GPU paths for the attention statistics. Triton is imported lazily: CPU installs never need it."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import torch
        import triton  # noqa: F401

        return torch.cuda.is_available()
    except Exception:
        return False


def fused_supported(query, block: int, mask, on_rows) -> bool:
    """The fused kernel covers the plain causal case with power-of-two blocks on a CUDA device."""
    return (
        query.is_cuda
        and mask is None
        and on_rows is None
        and block in (16, 32, 64, 128, 256)
        and query.shape[-1] in (16, 32, 64, 128, 256)
        and triton_available()
    )
