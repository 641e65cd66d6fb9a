"""An existing Dask scheduler: one task per document on its workers (CUDA: workers with GPU=1),
each worker loading the model once and filling that document's chunks."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from core.errors import UsageError
from core.lm import capture, models
from dump.document import build_document, dump_document
from dump.executors import DumpSummary
from dump.options import DumpOptions
from dump.plan import Checked, DocPlan, open_store, resolve_dtype
from dump.store import RunWriter


def dump_task(opt: DumpOptions, item: DocPlan, device: str, dtype: str) -> tuple[bool, int]:
    """One document on a Dask worker: load (or reuse) the model, fill this document's chunks."""
    if device.startswith("cuda:"):
        torch.cuda.set_device(device)
    lm = models.load(opt.model, models.DTYPES[dtype], device, capture.NAME, opt.rope_scaling)
    store = RunWriter.attach(opt.out, background=device.startswith("cuda"))
    try:
        doc = build_document(lm.tokenizer, opt, item.length, item.depth, item.sample)
        hit = dump_document(store, lm, opt, doc, item)
    finally:
        store.close()
    return hit, item.length


def run_on_cluster(checked: Checked, device: str) -> DumpSummary:
    from distributed import as_completed

    from core.cluster import client_for

    opt = checked.opt
    t0 = time.perf_counter()
    dtype = resolve_dtype(opt.dtype, device)
    store, plan = open_store(
        checked, models.describe(opt.model, dtype, opt.rope_scaling), f"dask {opt.scheduler} ({device})"
    )
    store.close()  # the layout exists before any worker writes a chunk
    todo = [p for p in plan if not p.done]
    dtype_name = str(dtype).replace("torch.", "")
    resources = {"GPU": 1} if device.startswith("cuda") else None
    tokens = retrieved = 0
    with client_for(opt.scheduler, verbose=opt.progress, stage="dump") as client:
        if resources and not any(
            w.get("resources", {}).get("GPU") for w in client.scheduler_info()["workers"].values()
        ):
            raise UsageError(
                f"no worker of {opt.scheduler} declares a GPU: start them with `dask worker "
                f"{opt.scheduler} --resources GPU=1` (or dask-cuda's dask cuda worker), or use --device cpu"
            )
        futures = [
            client.submit(dump_task, opt, item, device, dtype_name, resources=resources, pure=False)
            for item in todo
        ]
        with tqdm(total=len(todo), desc="dump", unit="doc", disable=not opt.progress) as bar:
            for fut in as_completed(futures):
                hit, n = fut.result()
                retrieved += int(hit)
                tokens += n
                bar.update(1)
    return DumpSummary(
        opt.out, len(todo), len(plan) - len(todo), tokens, time.perf_counter() - t0, store.nbytes(), retrieved
    )
