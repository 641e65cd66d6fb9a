"""The dump job: documents -> one model forward each -> statistics streamed into RUN.zarr."""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata as md
import math
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from dump import capture, haystack, models, outputs, schema
from dump.errors import UsageError
from dump.options import DumpOptions
from dump.outputs import is_local
from dump.stats import tile_rows
from dump.store import RunStore

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DocPlan(NamedTuple):
    """One document of the plan: where it goes in the store and whether it is already done."""

    length: int
    block: int
    tile: int
    depth: int  # index into the depth grid
    sample: int
    done: bool


@dataclass
class DumpSummary:
    path: str
    documents: int
    skipped: int
    tokens: int
    seconds: float
    store_bytes: int
    retrieved: int

    def line(self) -> str:
        rate = self.tokens / self.seconds if self.seconds > 0 else 0.0
        return (
            f"dump: {self.documents} documents written ({self.skipped} already done), "
            f"model retrieved the passkey in {self.retrieved}/{self.documents}, "
            f"{rate:,.0f} tokens/s, store {self.store_bytes / 2**20:,.1f} MiB at {self.path}"
        )


def block_for(length: int, block: int | str) -> int:
    if block == "auto":  # keep the block graph at most 1024 x 1024
        return max(64, 2 ** math.ceil(math.log2(max(1, length) / 1024)))
    return int(block)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"--device {device} asked for, but CUDA is not available on this machine: use --device cpu"
        )
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return DTYPES[dtype]


def settings_of(opt: DumpOptions, model_info: dict) -> dict:
    """What makes two runs comparable: a store is only resumed with equal settings (lengths may grow)."""
    return {
        "schema_version": schema.RUN_VERSION,
        "model": opt.model,
        "model_revision": model_info["revision"],
        "dtype": model_info["dtype"],
        "depths": list(opt.depths),
        "samples": opt.samples,
        "seed": opt.seed,
        "filler": opt.filler,
        "window": opt.window,
        "window_rows": min(opt.window_rows, opt.window),
        "block": opt.block,
        "store": opt.store,
        "layers": list(opt.layers or []),
        **({"rope_scaling": opt.rope_scaling} if opt.rope_scaling else {}),
    }


def software() -> dict:
    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "zarr", "numpy", "numcodecs"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def estimate_full_bytes(opt: DumpOptions, cfg: dict) -> int:
    docs = len(opt.depths) * opt.samples
    return sum(docs * len(opt.layers or []) * cfg["heads"] * n * n * 2 for n in opt.lengths)


def validate(opt: DumpOptions) -> tuple[dict, str]:
    """Every check that can fail on user input, before anything is loaded or written."""
    # each value was parsed and range-checked by dump.options; what is left needs the model or the disk
    device = resolve_device(opt.device)
    config = models.load_config(opt.model, opt.rope_scaling)
    cfg = models.model_limits(config)
    models.check_attention(opt.model, config)
    models.check_lengths(opt.model, config, opt.lengths)
    if opt.store == "full":
        if opt.layers is None:
            opt.layers = list(range(cfg["layers"]))
        bad = [x for x in opt.layers if not 0 <= x < cfg["layers"]]
        if bad:
            raise UsageError(
                f"--layers {bad[0]} does not exist: model {opt.model!r} has layers 0..{cfg['layers'] - 1}"
            )
        need = estimate_full_bytes(opt, cfg)
        if need > opt.max_gb * 1e9:
            raise UsageError(
                f"--store full would write about {need / 1e9:.1f} GB of attention matrices, over --max-gb "
                f"{opt.max_gb:g}: choose fewer --layers, shorter lengths, or raise --max-gb"
            )
        if is_local(opt.out):
            parent = Path(opt.out).expanduser().resolve()
            while not parent.exists():
                parent = parent.parent
            free = shutil.disk_usage(parent).free
            if need > free:
                raise UsageError(
                    f"--store full needs about {need / 1e9:.1f} GB but only {free / 1e9:.1f} GB is free"
                )
    elif opt.layers:
        raise UsageError("--layers chooses the layers of full matrices: use it with --store full")
    return cfg, device


def root_attributes(opt: DumpOptions, cfg: dict, info: dict, device: str) -> dict:
    return {
        "model": info,
        "model_config": cfg,
        "haystack": {"filler": opt.filler, "templates": haystack.TEMPLATES, "seed": opt.seed},
        "capture": {
            "window": opt.window,
            "window_rows": min(opt.window_rows, opt.window),
            "block": opt.block,
            "stored": list(schema.RUN_STATISTICS) + (["attn"] if opt.store == "full" else []),
            "pool": {"qpool": "max_l2", "kpool": "max_l2"},
            "attn_layers": list(opt.layers or []),
            "device": device,
        },
        "software": software(),
    }


def resolve_devices(devices: list[str] | None) -> list[str]:
    if not devices:
        return []
    if devices == ["all"]:
        count = torch.cuda.device_count()
        if count == 0:
            raise UsageError("--devices all asked for, but CUDA is not available on this machine")
        return [f"cuda:{i}" for i in range(count)]
    for dev in devices:
        resolve_device(dev)
        if dev.startswith("cuda:") and int(dev.split(":")[1]) >= torch.cuda.device_count():
            raise UsageError(
                f"--devices {dev} does not exist: this machine has {torch.cuda.device_count()} CUDA devices"
            )
    return devices


def open_store(opt: DumpOptions, cfg: dict, info: dict, device: str) -> tuple[RunStore, list[DocPlan]]:
    """The store with every length group created, and the plan: one `DocPlan` per document."""
    store = RunStore(
        opt.out,
        settings_of(opt, info),
        root_attributes(opt, cfg, info, device),
        overwrite=opt.overwrite,
        background=device.startswith("cuda"),
    )
    plan = []
    for n in opt.lengths:
        block = block_for(n, opt.block)
        tile = tile_rows(n, cfg["heads"], block)
        store.length_group(n, cfg, opt.window, block, tile, list(opt.layers or []), opt.window_rows)
        done = store.done(n)
        plan += [
            DocPlan(n, block, tile, d, s, bool(done[d, s]))
            for d in range(len(opt.depths))
            for s in range(opt.samples)
        ]
    return store, plan


def _run_shard(job: tuple[DumpOptions, tuple[int, int]]) -> DumpSummary:
    opt, shard = job
    return run_dump(opt, shard=shard)


def run_sharded(opt: DumpOptions, cfg: dict, devices: list[str]) -> DumpSummary:
    """One process per device, each dumping every len(devices)-th document into its own chunks."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    dtype = resolve_dtype(opt.dtype, devices[0])
    store, plan = open_store(opt, cfg, models.describe(opt.model, dtype, opt.rope_scaling), ",".join(devices))
    store.close()  # layout and attributes are written once, here; the shards only fill chunks
    jobs = [
        (dataclasses.replace(opt, device=dev, devices=None, overwrite=False), (i, len(devices)))
        for i, dev in enumerate(devices)
    ]
    with mp.get_context("spawn").Pool(len(devices)) as pool:
        parts = pool.map(_run_shard, jobs)
    return DumpSummary(
        opt.out,
        sum(p.documents for p in parts),
        sum(p.skipped for p in parts),
        sum(p.tokens for p in parts),
        time.perf_counter() - t0,
        store.nbytes(),
        sum(p.retrieved for p in parts),
    )


@functools.lru_cache(maxsize=1)
def _worker_model(name: str, dtype: str, device: str, rope_scaling: str | None = None):
    """The model of a Dask worker process, loaded once and reused by every document it dumps."""
    return models.load(
        name, dtype=DTYPES[dtype], device=device, attn_implementation=capture.NAME, rope_scaling=rope_scaling
    )


def dump_task(opt: DumpOptions, item: DocPlan, device: str, dtype: str) -> tuple[bool, int]:
    """One document on a Dask worker: load (or reuse) the model, fill this document's chunks."""
    if device.startswith("cuda:"):
        torch.cuda.set_device(device)
    lm = _worker_model(opt.model, dtype, device, opt.rope_scaling)
    store = RunStore.attach(opt.out, background=device.startswith("cuda"))
    try:
        doc = build_document(lm.tokenizer, opt, item.length, item.depth, item.sample)
        hit = dump_document(store, lm, opt, doc, item)
    finally:
        store.close()
    return hit, item.length


def run_on_cluster(opt: DumpOptions, cfg: dict, device: str) -> DumpSummary:
    """One Dask task per document on an existing scheduler's workers (CUDA: workers with GPU=1)."""
    from distributed import as_completed

    from dump.cluster import client_for

    t0 = time.perf_counter()
    dtype = resolve_dtype(opt.dtype, device)
    store, plan = open_store(
        opt, cfg, models.describe(opt.model, dtype, opt.rope_scaling), f"dask {opt.scheduler} ({device})"
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


def run_dump(opt: DumpOptions, shard: tuple[int, int] | None = None) -> DumpSummary:
    """Dump every unfinished document; `shard=(i, count)` takes every count-th from position i.
    The store is locked while this runs (shards run under their parent's lock)."""
    if shard is not None:
        return _run_dump(opt, shard)
    outputs.check_writable(opt.out)
    outputs.check_output(opt.out, schema.RUN_KIND)  # only a RUN store made by dump is resumed or replaced
    with outputs.write_lock(opt.out):
        return _run_dump(opt, None)


def preflight(tokenizer, opt: DumpOptions) -> None:
    """Build the first document of every length before the store exists: a length too short for the
    prompt, or a tokenizer that cannot carry the passkey, is refused with nothing written."""
    for n in opt.lengths:
        build_document(tokenizer, opt, n, 0, 0)


def _run_dump(opt: DumpOptions, shard: tuple[int, int] | None) -> DumpSummary:
    cfg, device = validate(opt)
    if shard is None:
        preflight(models.load_tokenizer(opt.model), opt)
    if opt.scheduler:
        if opt.devices:
            raise UsageError("--scheduler and --devices exclude each other: the workers choose their devices")
        return run_on_cluster(opt, cfg, "cuda" if device.startswith("cuda") else device)
    devices = resolve_devices(opt.devices)
    if len(devices) > 1:
        return run_sharded(opt, cfg, devices)
    if devices:
        device = devices[0]
    if device.startswith("cuda:"):
        torch.cuda.set_device(device)  # Triton launches on the current device, not the tensors'
    dtype = resolve_dtype(opt.dtype, device)
    # the store first: a store made with other settings is refused before the weights are loaded
    store, plan = open_store(opt, cfg, models.describe(opt.model, dtype, opt.rope_scaling), device)
    try:
        lm = models.load(
            opt.model,
            dtype=dtype,
            device=device,
            attn_implementation=capture.NAME,
            rope_scaling=opt.rope_scaling,
        )
    except BaseException:
        store.close()
        raise
    if shard is not None:  # by position in the whole plan, so every shard agrees whatever is done
        index, count = shard
        plan = [p for k, p in enumerate(plan) if k % count == index]
    todo = [p for p in plan if not p.done]
    t0, tokens, retrieved = time.perf_counter(), 0, 0
    position = shard[0] if shard else 0
    label = f"dump {opt.device}" if shard else "dump"
    bar = tqdm(todo, desc=label, unit="doc", disable=not opt.progress, position=position)
    # the next document is tokenized while the model runs on this one (tokenizers release the GIL)
    builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="haystack")

    def prepare(item: DocPlan):
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


def build_document(tokenizer, opt: DumpOptions, n: int, d: int, s: int) -> haystack.Document:
    """The document at (length n, depth index d, sample s): a function of the settings alone."""
    rng = haystack.document_rng(opt.seed, n, d, s)
    passkey = haystack.make_passkey(rng)
    sentences = haystack.filler_sentences(opt.filler, rng)
    return haystack.build_document(tokenizer, n, opt.depths[d], passkey, sentences)


def contains_passkey(text: str, passkey: int) -> bool:
    """The rule of `retrieved`: the answer's text, spaces removed, contains the passkey's digits in order."""
    return str(passkey) in text.replace(" ", "")


def dump_document(store: RunStore, lm, opt: DumpOptions, doc, item: DocPlan, progress=False) -> bool:
    """One document: run the model once with capture, stream every layer, then `done`."""
    n, d, s = item.length, item.depth, item.sample
    store.write_document(n, d, s, doc)
    slots = {layer: i for i, layer in enumerate(opt.layers or [])}
    layer_bar = tqdm(total=lm.config["layers"], desc=f"layers @ {n}", leave=False, disable=not progress)

    def on_layer(layer, stats):
        store.write_layer(n, d, s, layer, stats)
        layer_bar.update(1)

    recorder = capture.Recorder(
        window=opt.window,
        block=item.block,
        on_layer=on_layer,
        full_layers=frozenset(slots) if opt.store == "full" else frozenset(),
        on_rows=lambda layer, q0, q1, p: store.write_rows(n, d, s, slots[layer], q0, q1, p),
        tile=item.tile,
    )
    device = next(lm.model.parameters()).device
    ids = torch.as_tensor(doc.input_ids, dtype=torch.long, device=device)[None]
    with torch.no_grad():
        with capture.recording(recorder):
            out = lm.model(ids, use_cache=True, logits_to_keep=1)
        answer = greedy_answer(lm.model, out, schema.ANSWER_TOKENS)
    layer_bar.close()
    if sorted(recorder.layers_seen) != list(range(lm.config["layers"])):
        raise RuntimeError(f"capture saw layers {recorder.layers_seen}, expected all {lm.config['layers']}")
    hit = contains_passkey(lm.tokenizer.decode(answer), doc.passkey)
    store.write_answer(n, d, s, np.asarray(answer, dtype=np.int32), hit)
    store.mark_done(n, d, s)
    return hit


def greedy_answer(model, out, steps: int) -> list[int]:
    """Continue the captured forward with the model's own KV cache (plain sdpa, no capture)."""
    name = "cache" if hasattr(out, "cache") else "past_key_values"  # renamed during transformers 5.x
    past, logits, answer = getattr(out, name), out.logits, []
    for _ in range(steps):
        token = int(logits[0, -1].argmax())
        answer.append(token)
        nxt = model(torch.tensor([[token]], device=logits.device), use_cache=True, **{name: past})
        past, logits = getattr(nxt, name), nxt.logits
    return answer
