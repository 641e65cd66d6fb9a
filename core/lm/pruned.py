"""The pruned attention, registered with transformers as `niah_pruned`: each layer and query head
attends only to the prompt keys of its kept set, plus every token decoded since.

Within `keeping(masks, prompt)`, layer l's heads read the prompt's keys and values from `prompt` (the
prefilled cache, kept aside and never copied) with the additive bias `masks[l]` (0 kept, -inf
evicted: `bias_of`), and the model's own cache holds only the decoded tokens. The masked attention
is eager float32 math. Outside `keeping`, a whole prompt's prefill runs sdpa's causal kernel (full
layers; on CUDA the flash or memory-efficient kernel the dump's capture uses, `causal_output_lse`)
or the banded sdpa (sliding-window layers): no N x N mask or matrix is ever built.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from core.lm.capture import skipping_whole_prompts
from core.lm.stats import causal_output_lse, sliding_output

NAME = "niah_pruned"
_state = threading.local()


@dataclass
class Prompt:
    """The prompt's cached keys and values per layer, kept aside while decoding (never copied or
    grown): `keys[l]`, `values[l]` are (kv_head, M, dim) for the positions `start[l]` .. `end` - 1
    (a sliding-window layer caches only its last W - 1 positions)."""

    keys: dict
    values: dict
    start: dict
    end: int  # positions 0 .. end-1 are in the prompt cache; decoding starts at `end`
    windows: dict  # layer -> sliding window W, or None


@contextmanager
def keeping(masks: dict[int, torch.Tensor] | None, prompt: Prompt | None = None):
    """Within: layer l's query heads attend only to the prompt keys its bias masks[l][head, key] keeps
    (0 kept, -inf evicted; `bias_of` makes it from a keep mask), plus every token decoded since.
    With `prompt`, the model's cache holds only the decoded tokens and the prompt's keys come from it;
    layers without a mask then attend as the model does (causal, or their sliding window)."""
    _state.masks, _state.prompt = masks, prompt
    try:
        yield
    finally:
        _state.masks, _state.prompt = None, None


@contextmanager
def keeping_documents(groups: list[tuple[int, dict, Prompt]]):
    """`keeping` for a batch whose rows come from several documents: `groups` lists, in row order,
    (rows, masks, prompt) per document, each as `keeping` takes them (masks[l]: (rows, head, N) of
    that document's N). Every prompt ends at the same position (the documents are decoded in step).
    Each document's rows attend to its own prompt exactly as they would alone; only the model's
    linear layers see all the rows at once (one read of the weights per step serves them all)."""
    if len({p.end for _, _, p in groups}) > 1:
        raise ValueError("documents decoded together must have their prompts end at the same position")
    _state.groups = groups
    try:
        yield
    finally:
        _state.groups = None


def pruned_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    layer = int(module.layer_idx)
    groups = getattr(_state, "groups", None)
    if groups is not None:  # several documents' rows: each attends to its own prompt and kept sets
        outs, r0 = [], 0
        for rows, masks, prompt in groups:
            rs = slice(r0, r0 + rows)
            keep = None if masks is None else masks.get(layer)
            outs.append(_masked(query[rs], key[rs], value[rs], keep, prompt, layer, scaling))
            r0 += rows
        return torch.cat(outs, dim=0), None
    masks = getattr(_state, "masks", None)
    prompt: Prompt | None = getattr(_state, "prompt", None)
    keep = None if masks is None else masks.get(layer)
    sliding = kwargs.get("sliding_window")
    if keep is None and prompt is None and attention_mask is None and sliding and query.shape[2] > sliding:
        # the prefill of a sliding-window layer whose mask `pruned_mask` left out: banded, never N x N
        if query.shape[0] != 1 or query.shape[2] != key.shape[2]:
            raise ValueError("the banded prefill takes one whole prompt")
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        out = sliding_output(query[0], key[0], value[0], scale, int(sliding))
        return out.unsqueeze(0).transpose(1, 2), None
    if keep is None and prompt is None and _whole_prompt_on_cuda(query, key, attention_mask):
        # flash, or memory-efficient for float32: never sdpa's N x N math kernel, where sdpa sends
        # float32 with shared kv heads (out of memory at 32k), and the dump's own GPU kernel
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        out, _ = causal_output_lse(query[0], key[0], value[0], scale)
        return out.unsqueeze(0).transpose(1, 2), None
    if keep is None and prompt is None:  # no decode with masks: the model's own attention
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    return _masked(query, key, value, keep, prompt, layer, scaling), None


def _masked(query, key, value, keep, prompt: Prompt | None, layer: int, scaling) -> torch.Tensor:
    """The kept-set attention of a batch's rows (batch, seq, heads, dim out): eager float32 math."""
    batch, heads, qlen, dim = query.shape
    kv, new = key.shape[1], key.shape[2]
    g = heads // kv
    dev = query.device
    scaling = dim**-0.5 if scaling is None else scaling
    q = query.float().reshape(batch, kv, g * qlen, dim)  # GQA by reshaping the queries, never copying keys
    parts_k, parts_v, biases = [], [], []
    if (
        prompt is not None
    ):  # the prompt's keys (positions start..end-1) from the side store, shared by the batch
        pk, pv, start = prompt.keys[layer], prompt.values[layer], prompt.start[layer]
        parts_k.append(pk[None])
        parts_v.append(pv[None])
        first = prompt.end + (new - qlen)  # position of the first query of this call
        pos_q = torch.arange(first, first + qlen, device=dev)
        pos_k = torch.arange(start, prompt.end, device=dev)
        if keep is not None:  # one kept set per batch row (keep: (batch, head, N), N - 1 = prompt.end)
            b = (
                keep[..., start : prompt.end]
                .reshape(-1, kv, g, 1, prompt.end - start)
                .expand(-1, kv, g, qlen, -1)
            )
        else:
            b = torch.zeros(1, kv, g, qlen, pk.shape[1], device=dev)
        w = prompt.windows.get(layer)
        if w:  # the model's sliding window: key j visible from position p iff j > p - W
            b = b.masked_fill(~(pos_k[None, :] > pos_q[:, None] - w), float("-inf"))
        biases.append(b)
        # keys since the prefill: positions end .. end+new-1; the first N - end are prompt tokens
        pos_d = torch.arange(prompt.end, prompt.end + new, device=dev)
        bd = torch.zeros(keep.shape[0] if keep is not None else 1, kv, g, qlen, new, device=dev)
        if keep is not None:  # the prompt tokens fed after the prefill (the last one, in the aware setting)
            m = min(new, keep.shape[-1] - prompt.end)
            if m > 0:
                bd[..., :m] = keep[..., prompt.end : prompt.end + m].reshape(-1, kv, g, 1, m)
        visible = pos_d[None, :] <= pos_q[:, None]
        if w:
            visible &= pos_d[None, :] > pos_q[:, None] - w
        biases.append(bd.masked_fill(~visible, float("-inf")))
    else:  # the model's cache holds the whole prompt: key j is position j (one kept set)
        n = keep.shape[-1]
        bd = torch.zeros(1, kv, g, qlen, new, device=dev)
        bd[..., :n] = keep.reshape(1, kv, g, 1, n)
        if qlen > 1:
            future = torch.ones(qlen, qlen, dtype=torch.bool, device=dev).triu_(1)
            bd[..., new - qlen :] = bd[..., new - qlen :].masked_fill(future, float("-inf"))
        biases.append(bd)
    parts_k.append(key)
    parts_v.append(value)
    scores = [_scores(q, k, scaling).view(batch, kv, g, qlen, -1) + b for k, b in zip(parts_k, biases)]
    probs = torch.softmax(torch.cat(scores, dim=-1), dim=-1)  # only the scores are joined, never K/V
    out, at = 0, 0
    for v in parts_v:
        m = v.shape[-2]
        out = out + _weighted(probs[..., at : at + m].reshape(batch, kv, g * qlen, m), v)
        at += m
    out = out.reshape(batch, heads, qlen, -1).to(query.dtype)
    return out.transpose(1, 2).contiguous()


def _whole_prompt_on_cuda(query, key, attention_mask) -> bool:
    return (
        query.is_cuda
        and attention_mask is None
        and query.shape[0] == 1
        and query.shape[2] == key.shape[2] > 1
    )


def _scores(q: torch.Tensor, k: torch.Tensor, scaling: float) -> torch.Tensor:
    """q (batch, kv, rows, dim) against k (batch, kv, M, dim), or the prompt's k (1, kv, M, dim) that
    every batch row shares: then one product per kv head with the batch's rows stacked, so that the
    prompt's keys are never copied per row (a broadcast matmul would)."""
    if k.shape[0] == q.shape[0]:
        return torch.matmul(q, k.float().transpose(-1, -2)).mul_(scaling)
    batch, kv, rows, dim = q.shape
    stacked = q.transpose(0, 1).reshape(kv, batch * rows, dim)
    s = torch.matmul(stacked, k[0].float().transpose(-1, -2)).mul_(scaling)
    return s.view(kv, batch, rows, -1).transpose(0, 1)


def _weighted(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """p (batch, kv, rows, M) @ v (batch or 1, kv, M, dim), the shared prompt's v never copied per row."""
    if v.shape[0] == p.shape[0]:
        return torch.matmul(p, v.float())
    batch, kv, rows, m = p.shape
    out = torch.matmul(p.transpose(0, 1).reshape(kv, batch * rows, m), v[0].float())
    return out.view(kv, batch, rows, -1).transpose(0, 1)


def bias_of(kept: np.ndarray) -> torch.Tensor:
    """(head, N) keep mask -> the additive attention bias `pruned_attention` reads."""
    return torch.where(torch.from_numpy(kept), 0.0, float("-inf")).float()


# the prefill of a whole prompt builds no mask: full layers run sdpa's causal kernel, sliding layers
# the banded prefill above; decoding steps get sdpa's (small) mask
pruned_mask = skipping_whole_prompts(lambda: True)


AttentionInterface.register(NAME, pruned_attention)
AttentionMaskInterface.register(NAME, pruned_mask)


def prompt_store(cache, end: int, windows) -> Prompt:
    """The prefilled cache's keys and values per layer, for decoding without copying them."""
    keys, values, start = {}, {}, {}
    for layer, cached in enumerate(cache.layers):
        keys[layer], values[layer] = cached.keys[0], cached.values[0]
        start[layer] = end - cached.keys.shape[-2]
    return Prompt(keys, values, start, end, {i: w for i, w in enumerate(windows) if w})
