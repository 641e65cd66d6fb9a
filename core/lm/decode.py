"""The forward passes both stages run: a prompt's prefill and the one greedy decoding loop.

The dump continues its captured forward with the model's own cache; the answer pass decodes every
(policy, sparsity) of a document as one batch from a prefill of the prompt without its last token,
inside `pruned.keeping`. Both call `greedy`.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch


def cache_kw(model) -> str:
    """The forward argument that takes a KV cache (`past_key_values` was renamed `cache` in transformers 5.x)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(out):
    """The KV cache a forward returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def prefill(model, ids: torch.Tensor):
    """One forward over `ids` (1, M) with the model's cache: (last position's logits (1, vocab), cache)."""
    out = model(ids, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], cache_of(out)


def steps(model, cache, first, start: int, count: int, batch: int = 1):
    """The one greedy loop: feed `first` (a token, or the prompt tokens left after the prefill, in one
    forward; or a (batch, m) array of them, one row per batch row) from position `start`, then each
    step's argmax; yields each step's (batch, vocab) logits, `count` forwards in all, each appending
    to `cache`."""
    dev = model.device
    tokens = torch.as_tensor(first, dtype=torch.long, device=dev)
    tokens = tokens if tokens.ndim == 2 else tokens.reshape(1, -1)
    tokens = tokens.expand(batch, -1) if tokens.shape[0] == 1 else tokens
    if tokens.shape[0] != batch:
        raise ValueError(f"first tokens for {tokens.shape[0]} rows, the batch has {batch}")
    kw, at = cache_kw(model), start
    for _ in range(count):
        m = tokens.shape[1]
        pos = (at + torch.arange(m, device=dev)).expand(batch, m)
        logits = model(
            tokens, position_ids=pos, cache_position=pos[0], use_cache=True, logits_to_keep=1, **{kw: cache}
        ).logits[:, -1]
        at += m
        yield logits
        tokens = logits.argmax(-1, keepdim=True)


def greedy(model, cache, first: torch.Tensor | int, start: int, count: int, batch: int = 1) -> np.ndarray:
    """The (batch, count) token ids `steps` chooses."""
    chosen = [lg.argmax(-1).cpu().numpy() for lg in steps(model, cache, first, start, count, batch)]
    return np.stack(chosen, axis=1) if chosen else np.zeros((batch, 0), dtype=np.int64)


def empty_cache(model):
    """A fresh KV cache for `model` (the answer pass's decoded tokens; the prompt's keys stay aside)."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config)
