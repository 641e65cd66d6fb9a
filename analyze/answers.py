"""Ground truth: the model's own answer with every policy's pruned KV cache.

For one document of a RUN.zarr (one Dask task):

1. load the model the dump used (RUN.zarr provenance; offline) and check that its tokenizer rebuilds
   the stored `input_ids` exactly;
2. prefill the prompt without its last token once, with full attention, as the statistics were taken;
3. for every (policy, sparsity), take the kept sets of every layer from `analyze.keptsets` (the code
   the proxy metrics are scored with: same budget, seed and GQA rule), then decode greedily from the
   last prompt token for as many tokens as the dump's own answer, each layer and query head attending
   only to its kept prompt keys (the last prompt token included, iff kept) plus the tokens decoded
   so far. Under `--gqa kv` the heads of a kv group share a set; under `--gqa head` each has its own;
4. score `answer` (the decoded text contains the passkey's digits in order: the dump's `retrieved`
   rule) and `answer_digits` (the fraction of the passkey's digits reproduced in place).

The masked attention is eager float32 math registered with transformers as `niah_pruned`; outside
a decode with masks it is plain sdpa. Models with attention features it does not implement
(logit softcapping, sinks, chunked attention) are refused, never approximated. A sliding-window
layer whose window is shorter than the prompt is not pruned: it keeps the model's own attention.
"""

from __future__ import annotations

import functools
import inspect
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from analyze import keptsets
from analyze.errors import UsageError
from analyze.policies import Policy
from analyze.runstore import _open, load_doclayer
from dump import schema
from dump.capture import skipping_whole_prompts
from dump.run import DTYPES, contains_passkey  # the dump's dtypes and `retrieved` rule, shared
from dump.stats import sliding_output

NAME = "niah_pruned"
BATCH = 16  # (policy, sparsity) pairs decoded together: one forward step serves them all
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


def pruned_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    masks = getattr(_state, "masks", None)
    prompt: Prompt | None = getattr(_state, "prompt", None)
    layer = int(module.layer_idx)
    keep = None if masks is None else masks.get(layer)
    sliding = kwargs.get("sliding_window")
    if keep is None and prompt is None and attention_mask is None and sliding and query.shape[2] > sliding:
        # the prefill of a sliding-window layer whose mask `pruned_mask` left out: banded, never N x N
        if query.shape[0] != 1 or query.shape[2] != key.shape[2]:
            raise ValueError("the banded prefill takes one whole prompt")
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        out = sliding_output(query[0], key[0], value[0], scale, int(sliding))
        return out.unsqueeze(0).transpose(1, 2), None
    if keep is None and prompt is None:  # no decode with masks: the model's own attention
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
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
        # decoded keys: positions end .. end+new-1; the first is the last prompt token (N-1)
        pos_d = torch.arange(prompt.end, prompt.end + new, device=dev)
        bd = torch.zeros(keep.shape[0] if keep is not None else 1, kv, g, qlen, new, device=dev)
        if keep is not None:
            bd[..., 0] = keep[..., prompt.end].reshape(-1, kv, g, 1)
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
    scores = [
        torch.matmul(q, k.float().transpose(-1, -2)).mul_(scaling).view(batch, kv, g, qlen, -1) + b
        for k, b in zip(parts_k, biases)
    ]
    probs = torch.softmax(torch.cat(scores, dim=-1), dim=-1)  # only the scores are joined, never K/V
    out, at = 0, 0
    for v in parts_v:
        m = v.shape[-2]
        out = out + torch.matmul(probs[..., at : at + m].reshape(batch, kv, g * qlen, m), v.float())
        at += m
    out = out.view(batch, heads, qlen, -1).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def bias_of(kept: np.ndarray) -> torch.Tensor:
    """(head, N) keep mask -> the additive attention bias `pruned_attention` reads."""
    return torch.where(torch.from_numpy(kept), 0.0, float("-inf")).float()


def prompt_store(cache, end: int, windows) -> Prompt:
    """The prefilled cache's keys and values per layer, for decoding without copying them."""
    keys, values, start = {}, {}, {}
    for layer, cached in enumerate(cache.layers):
        keys[layer], values[layer] = cached.keys[0], cached.values[0]
        start[layer] = end - cached.keys.shape[-2]
    return Prompt(keys, values, start, end, {i: w for i, w in enumerate(windows) if w})


# the prefill of a whole prompt builds no mask: full layers run sdpa's causal kernel, sliding layers
# the banded prefill above; decoding steps get sdpa's (small) mask
pruned_mask = skipping_whole_prompts(lambda: True)


AttentionInterface.register(NAME, pruned_attention)
AttentionMaskInterface.register(NAME, pruned_mask)


def check_supported(config, name: str) -> None:
    """Sliding-window layers keep the model's own attention (they are not pruned); softcapping, sinks
    and chunked attention are refused, as in the capture."""
    from dump import models

    problem = models.unsupported_attention(config)
    if problem:
        raise UsageError(
            f"model {name!r} uses {problem}, which the answer pass does not implement: it refuses rather than approximate"
        )


@functools.lru_cache(maxsize=1)
def load_model(name: str, rope_scaling: str | None = None, device: str = "cpu", dtype: str = "float32"):
    """The dump's model with the masked attention, in the dump's dtype on `device` (once per worker
    process); the kept-set attention itself is float32 math."""
    from dump import models

    try:  # a Dask worker process has one core's share: torch's own threads would oversubscribe it
        from distributed import get_worker

        get_worker()
        torch.set_num_threads(1)
    except (ImportError, ValueError):
        pass
    lm = models.load(
        name, dtype=getattr(torch, dtype), device=device, attn_implementation=NAME, rope_scaling=rope_scaling
    )
    check_supported(lm.model.config, name)
    return lm


def dumped_model(attrs: dict, path: str) -> tuple[str, str | None, str]:
    """The model the dump ran, from RUN.zarr provenance: (name, RoPE scaling, dtype). The answers load
    it the same way, so that the full cache reproduces the dump's own answer."""
    model = attrs.get("model")
    model = model if isinstance(model, dict) else {}
    if not model.get("name"):
        raise UsageError(f"store {path!r} does not name the model it was dumped with: --answers cannot run")
    dtype = model.get("dtype", "float32")
    return str(model["name"]), model.get("rope_scaling"), dtype if dtype in DTYPES else "float32"


def check_model(path: str) -> str:
    """The model of a RUN.zarr, loadable here, with a tokenizer that rebuilds the stored prompts."""
    from dump import models

    root = _open(path)
    name, rope_scaling, _ = dumped_model(dict(root.attrs), path)
    try:
        models.resolve(name)
    except UsageError as err:
        raise UsageError(
            f"--answers needs the model the dump used, {name!r}, which cannot be loaded here ({err})"
        ) from None
    if schema.lengths_in(root) and "answer_ids" not in root[schema.group_name(schema.lengths_in(root)[0])]:
        raise UsageError(
            f"store {path!r} was dumped before answers were recorded (schema 1): re-run `python -m dump` into a new --out to use --answers"
        )
    check_supported(models.load_config(name, rope_scaling), name)
    return name


def rebuild_check(tokenizer, attrs: dict, path: str, n: int, d: int, s: int, ids: np.ndarray) -> None:
    """The tokenizer must rebuild the stored prompt token for token (same document rule as the dump)."""
    from dump import haystack

    st = attrs["settings"]
    rng = haystack.document_rng(int(st["seed"]), n, d, s)
    passkey = haystack.make_passkey(rng)
    doc = haystack.build_document(
        tokenizer, n, float(st["depths"][d]), passkey, haystack.filler_sentences(st["filler"], rng)
    )
    if not np.array_equal(doc.input_ids, ids):
        raise UsageError(
            f"the tokenizer of {dumped_model(attrs, path)[0]!r} does not reproduce the stored input_ids of {path!r} "
            f"(length {n}, depth {d}, sample {s}): the model there is not the one the dump used"
        )


def digits_in_place(text: str, passkey: int) -> float:
    """Fraction of the passkey's digits reproduced in place by the first run of digits in the text."""
    want = str(passkey)
    m = re.search(r"\d+", text.replace(" ", ""))
    got = m.group(0) if m else ""
    return sum(a == b for a, b in zip(got, want)) / len(want)


def rollback(cache, prefix: int) -> None:
    """Drop every cached position from `prefix` on (transformers 5: crop(-k) removes k tokens)."""
    extra = cache.get_seq_length() - prefix
    if extra > 0:
        cache.crop(-extra)


def cache_kw(model) -> str:
    """The forward argument that takes a KV cache (`past_key_values` was renamed `cache` in transformers 5.x)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def prefill(model, prompt: torch.Tensor):
    """The KV cache of `prompt` (1, N-1) under full attention."""
    out = model(prompt, use_cache=True, logits_to_keep=1)
    return getattr(out, "cache", None) or out.past_key_values


def decode(model, prompt: Prompt, first_token: int, steps: int, masks, batch: int = 1):
    """Yield the (batch, vocab) logits of each greedy step from `first_token` (at position prompt.end),
    the prompt's keys read from `prompt` and a fresh cache holding only the decoded tokens (no prompt
    copy). `masks[layer]` is (batch, head, N): one kept set per row, all rows decoded together."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    dev = model.device
    tokens = torch.full((batch, 1), first_token, dtype=torch.long, device=dev)
    kw = cache_kw(model)
    with keeping(masks, prompt):
        for t in range(steps):
            pos = torch.full((batch, 1), prompt.end + t, dtype=torch.long, device=dev)
            logits = model(
                tokens,
                position_ids=pos,
                cache_position=pos[0],
                use_cache=True,
                logits_to_keep=1,
                **{kw: cache},
            ).logits[:, -1]
            yield logits
            tokens = logits.argmax(-1, keepdim=True)


def greedy(model, prompt: Prompt, first_token: int, steps: int, masks, batch: int = 1) -> np.ndarray:
    """The greedy answers' token ids, (batch, steps) (see `decode`)."""
    return np.stack(
        [lg.argmax(-1).cpu().numpy() for lg in decode(model, prompt, first_token, steps, masks, batch)],
        axis=1,
    )


def answer_document(
    path: str,
    n: int,
    d: int,
    s: int,
    pols: tuple[Policy, ...],
    sparsities,
    gqa: str,
    seed: int,
    kv_heads: int,
    windows=None,
    device: str = "cpu",
) -> dict:
    """Every (policy, sparsity) answer of one document -> {"answer", "digits", "ids"} arrays, decoded
    on `device` in the dump's dtype."""
    root = _open(path)
    attrs = dict(root.attrs)
    name, rope_scaling, dtype = dumped_model(attrs, path)
    lm = load_model(name, rope_scaling, device, dtype)
    g = root[schema.group_name(n)]
    ids = np.asarray(g["input_ids"][d, s])
    rebuild_check(lm.tokenizer, attrs, path, n, d, s, ids)
    passkey = int(g["passkey"][d, s])
    steps = int((np.asarray(g["answer_ids"][d, s]) >= 0).sum()) or schema.ANSWER_TOKENS
    layers = lm.config["layers"]
    windows = schema.layer_windows(lm.config) if windows is None else windows
    pruned = [layer for layer in range(layers) if schema.prunable(windows[layer], n)]
    masks = np.zeros((len(pols), len(sparsities), layers, lm.config["heads"], n), dtype=bool)
    reads = keptsets.reads_of(pols)
    for layer in pruned:
        x, _ = load_doclayer(path, n, d, s, layer, kv_heads, keptsets.doclayer_seed(seed, d, s, layer), reads)
        for j, i, kept in keptsets.iter_kept(x, pols, sparsities, gqa):
            masks[i, j, layer] = kept
    with torch.no_grad():
        prompt = torch.as_tensor(ids[:-1], dtype=torch.long, device=device)[None]
        store = prompt_store(prefill(lm.model, prompt), n - 1, windows)
        answer = np.zeros((len(pols), len(sparsities)), dtype=bool)
        digits = np.zeros((len(pols), len(sparsities)), dtype=np.float32)
        out_ids = np.full((len(pols), len(sparsities), schema.ANSWER_TOKENS), -1, dtype=np.int32)
        pairs = [(i, j) for i in range(len(pols)) for j in range(len(sparsities))]
        for c0 in range(0, len(pairs), BATCH):  # every (policy, sparsity) of a chunk decoded as one batch
            chunk = pairs[c0 : c0 + BATCH]
            per_layer = {
                layer: torch.stack([bias_of(masks[i, j, layer]) for i, j in chunk]).to(device)
                for layer in pruned
            }
            toks = greedy(lm.model, store, int(ids[-1]), steps, per_layer, batch=len(chunk))
            for row, (i, j) in enumerate(chunk):
                text = lm.tokenizer.decode(toks[row].tolist())
                answer[i, j] = contains_passkey(text, passkey)
                digits[i, j] = digits_in_place(text, passkey)
                out_ids[i, j, :steps] = toks[row]
    return {"answer": answer, "digits": digits, "ids": out_ids}
