"""This process, one device: documents in plan order, the next one tokenized while the model runs."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import torch
from tqdm.auto import tqdm

from core.lm import capture, models
from dump.document import build_document, dump_document
from dump.executors import DumpSummary
from dump.plan import Checked, open_store, resolve_dtype


def run_local(checked: Checked, device: str, shard: tuple[int, int] | None = None) -> DumpSummary:
    """Every unfinished document of the plan on `device`; `shard=(i, count)` takes every count-th
    document from position i of the whole plan (so every shard agrees whatever is done)."""
    opt = checked.opt
    if device.startswith("cuda:"):
        torch.cuda.set_device(device)  # Triton launches on the current device, not the tensors'
    dtype = resolve_dtype(opt.dtype, device)
    # the store first: a store made with other settings is refused before the weights are loaded
    store, plan = open_store(checked, models.describe(opt.model, dtype, opt.rope_scaling), device)
    try:
        lm = models.load(opt.model, dtype, device, capture.NAME, opt.rope_scaling)
    except BaseException:
        store.close()
        raise
    if shard is not None:
        index, count = shard
        plan = [p for k, p in enumerate(plan) if k % count == index]
    todo = [p for p in plan if not p.done]
    t0, tokens, retrieved = time.perf_counter(), 0, 0
    label = f"dump {device}" if shard else "dump"
    bar = tqdm(todo, desc=label, unit="doc", disable=not opt.progress, position=shard[0] if shard else 0)
    # the next document is tokenized while the model runs on this one (tokenizers release the GIL)
    builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="haystack")

    def prepare(item):
        return builder.submit(build_document, lm.tokenizer, opt, item.length, item.depth, item.sample)

    upcoming = prepare(todo[0]) if todo else None
    try:
        for i, item in enumerate(bar):
            bar.set_postfix(length=item.length, depth=opt.depths[item.depth], sample=item.sample)
            doc = upcoming.result()
            if i + 1 < len(todo):
                upcoming = prepare(todo[i + 1])
            retrieved += dump_document(
                store, lm, opt, doc, item, progress=opt.progress and item.length >= 16384
            )
            tokens += item.length
    finally:
        bar.close()
        builder.shutdown(wait=True, cancel_futures=True)
        store.close()
    return DumpSummary(
        opt.out, len(todo), len(plan) - len(todo), tokens, time.perf_counter() - t0, store.nbytes(), retrieved
    )
