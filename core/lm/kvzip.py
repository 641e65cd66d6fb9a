"""KVzip's key scores: the attention a key receives while the model reconstructs the context from its
own cache (Kim et al. 2025, "KVzip: Query-Agnostic KV Cache Compression with Context
Reconstruction", arXiv:2505.23416; kvpress's `KVzipPress`, whose procedure this follows).

After the dump's captured prefill, the context [0, end) is cut into chunks of `CHUNK` tokens. For
each chunk the model reads a repeat prompt ("Repeat the previous context exactly.", later chunks
"... starting with" and the previous chunk's last 8 tokens), the chat template's assistant suffix
and the chunk itself, on top of the prefill's cache. In every layer the reconstruction's queries
attend, by a softmax restricted to the first `SINKS` keys, the chunk's own cached keys and the
reconstruction's keys (causal), and a chunk key's score is its largest weight over the
reconstruction's rows and the kv head's query heads. The cache is cut back to `end` after each chunk,
so the prefill's cache (and the dump's answer) is unchanged.

A setting reconstructs its own prefill: the whole prompt (`kvzip`, aware) or the context before the
question (`kvzip_ctx`, agnostic, from the cache cut at the question). One extra forward over about
the prompt's length per setting: `bench/dump_bench.py` prints the cost. Models with sliding-window
layers are refused (their cache keeps a window only; kvpress refuses Gemma 3 too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.errors import UsageError
from core.lm import capture, decode

CHUNK = 2048  # context tokens reconstructed per forward (kvpress's chunk_size)
SINKS = 4  # first keys in every restricted softmax and always kept (kvpress's n_sink)
OVERLAP = 8  # tokens of the previous chunk the next repeat prompt starts with
FIRST = "\n\nRepeat the previous context exactly."
NEXT = "\n\nRepeat the part of the previous context exactly, starting with"


@dataclass
class Reconstruction:
    """One chunk's reconstruction forward: the chunk [start, stop) of the cached context and where each
    layer's scores go ((layer, kv_head, end) tensor); the layers it has seen."""

    start: int
    stop: int
    scores: torch.Tensor
    layers_seen: int = 0


def suffix_ids(tokenizer) -> list[int]:
    """The tokens between a user turn and the answer: the chat template's assistant opening, or a
    newline for a model without a template (kvpress's rule)."""
    if getattr(tokenizer, "chat_template", None) is None:
        return tokenizer.encode("\n", add_special_tokens=False)
    dummy = "dummy context"
    separator = "\n" + "#" * len(dummy)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": dummy + separator}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer.encode(text.split(separator)[1], add_special_tokens=False)


def chunk_scores(rec: Reconstruction, layer: int, query: torch.Tensor, key: torch.Tensor) -> None:
    """One layer of a reconstruction forward: query (head, q_len, dim) post-RoPE, key (kv_head, M,
    dim) the whole cache (the context's `end` keys, then the reconstruction's q_len)."""
    heads, q_len, dim = query.shape
    kv = key.shape[0]
    sink = min(SINKS, rec.start)
    width = rec.stop - rec.start
    sub = torch.cat([key[:, :sink], key[:, rec.start : rec.stop], key[:, -q_len:]], dim=1).float()
    q = (query.float() * dim**-0.5).reshape(kv, heads // kv * q_len, dim)
    logits = torch.bmm(q, sub.transpose(1, 2)).view(kv, heads // kv, q_len, -1)
    causal = torch.ones(q_len, q_len, dtype=torch.bool, device=query.device).triu_(1)
    logits[..., -q_len:].masked_fill_(causal, float("-inf"))
    # a chunk key's largest weight: exp(max over rows of (logit - the row's log-sum-exp))
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    best = (logits[..., sink : sink + width] - lse).amax(dim=(1, 2))
    rec.scores[layer, :, rec.start : rec.stop] = best.exp()
    rec.layers_seen += 1


def check_model(config) -> None:
    from core.lm.models import layer_types

    if any(t != "full" for t in layer_types(config)):
        raise UsageError(
            "--store ...,kvzip needs every layer to attend to the whole cache: this model has sliding-window "
            "layers, whose cache keeps a window only (kvpress's KVzipPress refuses Gemma 3 as well)"
        )


def cut(cache, end: int) -> None:
    """Cut a cache back to its first `end` positions."""
    extra = cache.get_seq_length() - end
    if extra > 0:
        cache.crop(-extra)


def reconstruct(model, tokenizer, cache, ids: torch.Tensor, end: int, layers: int, kv_heads: int):
    """(layer, kv_head, end) float32 KVzip scores of the context ids[:end], from `cache` holding at
    least its first `end` positions (cut back to `end` on return)."""
    dev = model.device
    cut(cache, end)
    scores = torch.zeros(layers, kv_heads, end, dtype=torch.float32, device=dev)
    suffix = suffix_ids(tokenizer)
    first = tokenizer.encode(FIRST, add_special_tokens=False)
    nxt = tokenizer.encode(NEXT, add_special_tokens=False)
    context = ids[0, :end].tolist()
    inner = getattr(model, "model", model)
    for start in range(0, end, CHUNK):
        stop = min(start + CHUNK, end)
        prompt = first if start == 0 else nxt + context[start - OVERLAP : start]
        tokens = torch.as_tensor(prompt + suffix + context[start:stop], dtype=torch.long, device=dev)[None]
        rec = Reconstruction(start, stop, scores)
        pos = torch.arange(end, end + tokens.shape[1], device=dev)
        with capture.observing(lambda layer, q, k, rec=rec: chunk_scores(rec, layer, q, k)):
            inner(
                input_ids=tokens,
                position_ids=pos[None],
                cache_position=pos,
                use_cache=True,
                **{decode.cache_kw(inner): cache},
            )
        if rec.layers_seen != layers:
            raise RuntimeError(f"the reconstruction saw {rec.layers_seen} layers, expected {layers}")
        cut(cache, end)
    return scores
