"""The query statistics Expected Attention scores keys from (Devoto et al. 2025, "Expected Attention:
KV Cache Compression by Estimating Attention from Future Queries Distribution", arXiv:2510.00636;
kvpress's ExpectedAttentionPress, whose definition this follows):

- the mean and covariance (population, float64) of the layer's pre-RoPE queries over the prefilled
  rows, the first `SINK` rows left out (their outliers);
- both rotated by the RoPE rotation averaged over the next `FUTURE` positions: mean' = R̄ mean,
  cov' = R̄ cov R̄ᵀ.

The capture hands each layer's post-RoPE queries; the pre-RoPE ones are recovered exactly by rotating
back (`unrotate`), so both capture paths (torch and Triton) record the same moments with no second
projection. A setting's prefill decides the rows: the whole prompt (`aware`) or the context before
the question (`agnostic`, the `_ctx` variables); the future positions follow that prefill.
"""

from __future__ import annotations

import inspect

import torch
from transformers.models.llama.modeling_llama import rotate_half

SINK = 4  # first rows left out of the moments (kvpress's n_sink)
FUTURE = 512  # future positions the RoPE rotation is averaged over (kvpress's n_future_positions)


def unrotate(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The pre-RoPE vectors of post-RoPE `q` (..., N, dim) at positions whose (N, dim) cos/sin are
    given: RoPE rotates each pair of coordinates by an angle, so rotating back is q cos - rot(q) sin."""
    return q * cos - rotate_half(q) * sin


def averaged_rotation(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """R̄ (dim, dim): the mean over positions of RoPE's rotation matrix cos·I + sin·P."""
    dim = cos.shape[-1]
    eye = torch.eye(dim, dtype=cos.dtype, device=cos.device)
    p = torch.zeros(dim, dim, dtype=cos.dtype, device=cos.device)
    half = dim // 2
    p[half:, :half] = torch.eye(half, dtype=cos.dtype, device=cos.device)
    p[:half, half:] = -torch.eye(half, dtype=cos.dtype, device=cos.device)
    # kvpress: R = cos[:, None] * I + sin[:, None] * P, averaged over positions (cos/sin repeat per half)
    return eye * cos.mean(0)[None, :] + p * sin.mean(0)[None, :]


def moments(pre: torch.Tensor, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (head, dim) and population covariance (head, dim, dim) of pre-RoPE queries (head, N, dim)
    over rows [start, end), in float64."""
    rows = pre[:, start:end].double()
    mean = rows.mean(dim=1)
    centred = rows - mean[:, None]
    return mean, torch.einsum("hsi,hsj->hij", centred, centred) / rows.shape[1]


class Rope:
    """RoPE's cos/sin (N, dim) of one layer of a loaded model at given positions, in float64 angles
    cast to float32 as the model computes them (a Gemma 3 layer uses its own layer type's bases)."""

    def __init__(self, model):
        inner = getattr(model, "model", model)
        self.rotary = getattr(inner, "rotary_emb", None)
        if self.rotary is None:
            raise ValueError(
                f"{type(model).__name__} has no rotary embedding: its queries have no RoPE to undo"
            )
        self.typed = "layer_type" in inspect.signature(self.rotary.forward).parameters
        self.types = list(getattr(model.config, "layer_types", None) or [])

    def __call__(self, layer: int, positions: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.zeros(1, dtype=torch.float32, device=device)
        pos = positions.to(device)[None]
        if self.typed:
            cos, sin = self.rotary(x, pos, self.types[layer])
        else:
            cos, sin = self.rotary(x, pos)
        return cos[0].float(), sin[0].float()


class QueryMoments:
    """Per layer, the rotated query moments of each setting's prefill of one document: `__call__`
    takes the post-RoPE queries (head, N, dim) and returns {variable: array} for the store."""

    def __init__(self, model, n: int, context: int | None):
        self.rope = Rope(model)
        self.n, self.context = n, context

    def __call__(self, layer: int, query: torch.Tensor) -> dict:
        dev = query.device
        cos, sin = self.rope(layer, torch.arange(self.n), dev)
        pre = unrotate(query.float(), cos, sin)
        ends = {"": self.n}
        if self.context:
            ends["_ctx"] = self.context
        out = {}
        for suffix, end in ends.items():
            mean, cov = moments(pre, min(SINK, end - 1), end)
            fc, fs = self.rope(layer, torch.arange(end, end + FUTURE), dev)
            r = averaged_rotation(fc.double(), fs.double())
            out["query_mean" + suffix] = (mean @ r.T).float()
            out["query_cov" + suffix] = (r @ cov @ r.T).float()
        return out
