"""The attention function registered with transformers under the name `niah_capture`.

Every attention layer of the model calls it with its post-RoPE query (batch, head, query, dim) and
key/value (batch, kv_head, key, dim). It computes the layer's output as eager attention would and,
while a `Recorder` is active, hands that layer's statistics to the recorder (which streams them to
the store). Outside a recording it is plain sdpa.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from core.errors import UsageError
from core.lm import kernels
from core.lm.stats import LayerStats, attention_stats, attention_stats_fused, with_context

NAME = "niah_capture"


@dataclass
class Recorder:
    """Receives each layer's statistics during one forward pass."""

    window: int
    block: int
    on_layer: Callable[[int, LayerStats], None]
    full_layers: frozenset[int] = frozenset()
    on_rows: Callable[[int, int, int, torch.Tensor], None] | None = None  # (layer, q0, q1, A tile)
    tile: int | None = None
    fused: bool = True  # use the Triton kernels where supported (CUDA); False forces the torch reference
    context: int | None = None  # where the question starts: also record the context's own statistics
    on_kv: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None  # (layer, K, V): (kv_head, N, dim)
    on_queries: Callable[[int, torch.Tensor], None] | None = None  # (layer, post-RoPE Q): (head, N, dim)
    layers_seen: list[int] = field(default_factory=list)


_state = threading.local()


@contextmanager
def recording(recorder: Recorder):
    _state.recorder = recorder
    try:
        yield recorder
    finally:
        _state.recorder = None


@contextmanager
def observing(observer: Callable[[int, torch.Tensor, torch.Tensor], None]):
    """While active, each layer hands `observer(layer, queries, keys)` its post-RoPE queries (head, q,
    dim) and the whole cache's keys (kv_head, N, dim) before attending as usual (KVzip's
    reconstruction forward scores the context this way: `core.lm.kvzip`)."""
    _state.observer = observer
    try:
        yield observer
    finally:
        _state.observer = None


def _dense_mask(attention_mask: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """(query, key) mask for the statistics, or None for the plain causal mask."""
    if attention_mask is None:
        return None
    mask = attention_mask[0, 0] if attention_mask.dim() == 4 else attention_mask
    mask = mask[-n:, -n:]
    if mask.dtype == torch.bool:
        causal = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril_()
        return None if torch.equal(mask, causal) else mask
    return mask


def capture_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    recorder: Recorder | None = getattr(_state, "recorder", None)
    observer = getattr(_state, "observer", None)
    if observer is not None:
        observer(int(module.layer_idx), query[0], key[0])
    if recorder is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if query.shape[0] != 1:
        raise ValueError("statistics capture runs one document at a time (batch size 1)")
    if query.shape[2] != key.shape[2]:
        raise ValueError("statistics capture needs the whole prompt in one forward pass (no KV cache)")
    n = query.shape[2]
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    layer = int(module.layer_idx)
    for feature, setting in (
        ("attention logit softcapping", kwargs.get("softcap")),
        ("attention sinks", kwargs.get("s_aux")),
    ):
        if setting is not None:  # never record statistics of a different attention than the model's
            raise UsageError(f"layer {layer} uses {feature}, which the capture does not implement")
    on_rows = None
    if recorder.on_rows is not None and layer in recorder.full_layers:

        def on_rows(q0, q1, probs):
            recorder.on_rows(layer, q0, q1, probs)

    mask = _dense_mask(attention_mask, n)
    # a sliding-window layer whose mask `capture_mask` left out: the statistics apply its band
    sliding = kwargs.get("sliding_window") if mask is None else None
    sliding = None if sliding is None or sliding >= n else int(sliding)
    if recorder.fused and kernels.fused_supported(query, recorder.block, mask, on_rows):
        out, stats = attention_stats_fused(
            query[0], key[0], value[0], scaling, recorder.window, recorder.block, sliding=sliding
        )
    else:
        out, stats = attention_stats(
            query[0],
            key[0],
            value[0],
            scaling,
            recorder.window,
            recorder.block,
            mask=mask,
            tile=recorder.tile,
            on_rows=on_rows,
            sliding=sliding,
        )
    if recorder.context:
        stats = with_context(
            stats, query[0], key[0], scaling, recorder.context, recorder.window, recorder.block, sliding, mask
        )
    recorder.layers_seen.append(layer)
    recorder.on_layer(layer, stats)
    if recorder.on_kv is not None:  # the prompt's cache as this forward made it (the answer pass reads it)
        recorder.on_kv(layer, key[0], value[0])
    if recorder.on_queries is not None:  # Expected Attention's query moments (`core.lm.queries`)
        recorder.on_queries(layer, query[0])
    return out.unsqueeze(0).transpose(1, 2), None


def skipping_whole_prompts(active: Callable[[], bool]):
    """A mask function for transformers' AttentionMaskInterface: while `active()`, a forward over a
    whole unpadded prompt with the plain causal or sliding-window pattern gets no mask (N x N
    booleans: 16 GiB at 128k), and the attention function applies the causal rule and the layer's
    own `sliding_window` band itself. Anything else (padding, offsets, custom patterns, decoding
    steps) gets sdpa's mask."""

    def mask(
        batch_size,
        q_length,
        kv_length,
        q_offset=0,
        kv_offset=0,
        attention_mask=None,
        allow_is_causal_skip=True,
        **kwargs,
    ):
        whole = (
            allow_is_causal_skip
            and isinstance(q_offset, int)
            and q_offset == 0
            and kv_offset == 0
            and q_length == kv_length
            and (attention_mask is None or bool(attention_mask.all()))
        )
        if whole and active():
            return None
        return sdpa_mask(
            batch_size,
            q_length,
            kv_length,
            q_offset=q_offset,
            kv_offset=kv_offset,
            attention_mask=attention_mask,
            allow_is_causal_skip=allow_is_causal_skip,
            **kwargs,
        )

    return mask


capture_mask = skipping_whole_prompts(lambda: getattr(_state, "recorder", None) is not None)

AttentionInterface.register(NAME, capture_attention)
# Without a mask function registered under the same name the layer receives no mask at all.
AttentionMaskInterface.register(NAME, capture_mask)
