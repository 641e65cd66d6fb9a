"""One document, the unit every executor runs: build it (the task's rule), run the model once with
the capture recording every layer into the store, decode the model's own answer, score it, `done`."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from core import schema, tasks
from core.lm import capture, decode
from dump.options import DumpOptions
from dump.plan import DocPlan
from dump.store import RunWriter


def build_document(tokenizer, opt: DumpOptions, n: int, d: int, s: int) -> tasks.Document:
    """The document at (length n, depth index d, sample s): a function of the settings alone."""
    return tasks.document(tokenizer, opt.task, opt.seed, opt.filler, n, opt.depths[d], d, s)


def dump_document(store: RunWriter, lm, opt: DumpOptions, doc, item: DocPlan, progress=False) -> bool:
    """One document: run the model once with capture, stream every layer, answer, then `done`."""
    n, d, s = item.length, item.depth, item.sample
    task = tasks.get(opt.task)
    store.write_document(n, d, s, doc)
    slots = {layer: i for i, layer in enumerate(opt.layers or [])}
    layer_bar = tqdm(total=lm.config["layers"], desc=f"layers @ {n}", leave=False, disable=not progress)

    def on_layer(layer, stats):
        store.write_layer(n, d, s, layer, stats)
        layer_bar.update(1)

    keys = "keys" in schema.store_parts(opt.store)
    queries = "queries" in schema.store_parts(opt.store)
    context = int(np.flatnonzero(doc.question)[0]) if doc.question.any() else None
    if queries:
        from core.lm.queries import QueryMoments

        moments = QueryMoments(lm.model, n, context)
    recorder = capture.Recorder(
        window=opt.window,
        block=item.block,
        on_layer=on_layer,
        full_layers=frozenset(slots) if "full" in schema.store_parts(opt.store) else frozenset(),
        on_rows=lambda layer, q0, q1, p: store.write_rows(n, d, s, slots[layer], q0, q1, p),
        tile=item.tile,
        context=context,
        on_kv=(lambda layer, k, v: store.write_kv(n, d, s, layer, k, v)) if keys else None,
        on_queries=(lambda layer, q: store.write_arrays(n, d, s, layer, moments(layer, q)))
        if queries
        else None,
    )
    ids = torch.as_tensor(doc.input_ids, dtype=torch.long, device=lm.model.device)[None]
    with torch.no_grad():
        with capture.recording(recorder):
            logits, cache = decode.prefill(lm.model, ids)
        # the model's own answer: its cache continued by plain sdpa (no capture outside the recording)
        first = logits.argmax(-1)
        rest = decode.greedy(lm.model, cache, first, n, task.answer_tokens - 1)
        answer = [int(first[0])] + rest[0].tolist()
        if "kvzip" in schema.store_parts(opt.store):  # its reconstructions, on the prompt's cache
            write_kvzip(store, lm, cache, ids, item, context)
    layer_bar.close()
    if sorted(recorder.layers_seen) != list(range(lm.config["layers"])):
        raise RuntimeError(f"capture saw layers {recorder.layers_seen}, expected all {lm.config['layers']}")
    hit = task.score(lm.tokenizer.decode(answer), doc) == 1.0
    store.write_answer(n, d, s, np.asarray(answer, dtype=np.int32), hit)
    store.mark_done(n, d, s)
    return hit


def write_kvzip(store: RunWriter, lm, cache, ids, item: DocPlan, context: int | None) -> None:
    """KVzip's scores of each setting's prefill (`core.lm.kvzip`): the whole prompt, then the context
    before the question (the cache cut there), each layer written as `kvzip` / `kvzip_ctx`."""
    from core.lm import kvzip

    n, d, s = item.length, item.depth, item.sample
    layers, kv = lm.config["layers"], lm.config.get("kv_heads", lm.config["heads"])
    whole = kvzip.reconstruct(lm.model, lm.tokenizer, cache, ids, n, layers, kv)
    ctx = torch.zeros_like(whole)
    if context:
        ctx[..., :context] = kvzip.reconstruct(lm.model, lm.tokenizer, cache, ids, context, layers, kv)
    for layer in range(layers):
        store.write_arrays(n, d, s, layer, {"kvzip": whole[layer], "kvzip" + schema.CONTEXT: ctx[layer]})
