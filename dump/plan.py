"""Before any document: the options checked against the model and the disk, the store's settings and
provenance, and the plan (one `DocPlan` per document, with whether it is already done)."""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from core import schema, tasks
from core.errors import UsageError
from core.lm import models
from core.lm.models import resolve_device
from core.lm.stats import tile_rows
from core.outputs import is_local
from core.tasks import haystack
from dump.options import DumpOptions
from dump.store import RunWriter


class DocPlan(NamedTuple):
    """One document of the plan: where it goes in the store and whether it is already done."""

    length: int
    block: int
    tile: int
    depth: int  # index into the depth grid
    sample: int
    done: bool


@dataclass(frozen=True)
class Checked:
    """What `validate` resolved: the options as they will run (the caller's are left untouched), the
    model's shape (`models.model_limits`) and the device."""

    opt: DumpOptions
    cfg: dict
    device: str


def block_for(length: int, block: int | str) -> int:
    if block == "auto":  # keep the block graph at most 1024 x 1024
        return max(64, 2 ** math.ceil(math.log2(max(1, length) / 1024)))
    return int(block)


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return models.DTYPES[dtype]


def resolve_devices(devices: list[str] | None) -> list[str]:
    if not devices:
        return []
    if devices == ["all"]:
        count = torch.cuda.device_count()
        if count == 0:
            raise UsageError("--devices all asked for, but CUDA is not available on this machine")
        return [f"cuda:{i}" for i in range(count)]
    for dev in devices:
        resolve_device(dev, "--devices")
        if dev.startswith("cuda:") and int(dev.split(":")[1]) >= torch.cuda.device_count():
            raise UsageError(
                f"--devices {dev} does not exist: this machine has {torch.cuda.device_count()} CUDA devices"
            )
    return devices


def run_config_of(opt: DumpOptions, model_info: dict) -> dict:
    """What makes two runs comparable: a store is only resumed with equal settings (lengths may grow)."""
    return {
        "schema_version": schema.RUN_VERSION,
        "model": opt.model,
        "model_revision": model_info["revision"],
        "dtype": model_info["dtype"],
        "task": opt.task,
        "depths": list(opt.depths),
        "samples": opt.samples,
        "seed": opt.seed,
        "filler": opt.filler,
        **(
            {"filler_sha256": haystack.filler_digest(opt.filler)}
            if opt.filler not in haystack.FILLERS
            else {}
        ),
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


def validate(opt: DumpOptions) -> Checked:
    """Every check that can fail on user input, before anything is loaded or written."""
    # each value was parsed and range-checked by dump.options; what is left needs the model or the disk
    if opt.needle_type or opt.haystack:  # folded into the task's spec: what the store records
        task = tasks.with_options(opt.task, opt.needle_type, opt.haystack)
        opt = dataclasses.replace(opt, task=task, needle_type=None, haystack=None)
    if opt.kvzip:  # --kvzip is the kvzip part of --store
        opt = dataclasses.replace(
            opt, store=schema.store_label(schema.store_parts(opt.store) | {"kvzip"}), kvzip=False
        )
    device = resolve_device(opt.device)
    config = models.load_config(opt.model, opt.rope_scaling)
    cfg = models.model_limits(config)
    models.check_attention(opt.model, config)
    models.check_lengths(opt.model, config, opt.lengths)
    if "full" in schema.store_parts(opt.store):
        layers = list(range(cfg["layers"])) if opt.layers is None else list(opt.layers)
        bad = [x for x in layers if not 0 <= x < cfg["layers"]]
        if bad:
            raise UsageError(
                f"--layers {bad[0]} does not exist: model {opt.model!r} has layers 0..{cfg['layers'] - 1}"
            )
        opt = dataclasses.replace(opt, layers=layers)
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
    if "kvzip" in schema.store_parts(opt.store):
        from core.lm.kvzip import check_model

        check_model(config)
    if opt.redo:
        n, depth, sample = opt.redo
        if n not in opt.lengths or depth not in opt.depths or sample >= opt.samples:
            raise UsageError(
                f"--redo {n},{depth:g},{sample} is not a document of this plan: lengths "
                f"{','.join(map(str, opt.lengths))}, depths {','.join(f'{x:g}' for x in opt.depths)}, "
                f"samples 0..{opt.samples - 1}"
            )
    return Checked(opt, cfg, device)


def root_attributes(opt: DumpOptions, cfg: dict, info: dict, device: str) -> dict:
    return {
        "model": info,
        "model_config": cfg,
        "haystack": {
            "task": opt.task,
            "filler": opt.filler,
            "templates": tasks.get(opt.task).templates,
            "seed": opt.seed,
        },
        "capture": {
            "window": opt.window,
            "window_rows": min(opt.window_rows, opt.window),
            "block": opt.block,
            "stored": list(schema.RUN_STATISTICS)
            + list(schema.RUN_CONTEXT)
            + (["attn"] if "full" in schema.store_parts(opt.store) else [])
            + list(
                schema.run_vars(
                    False, *(p in schema.store_parts(opt.store) for p in ("kv", "keys", "kvzip", "queries"))
                )
            )[len(schema.run_vars(False)) :],
            "pool": {"qpool": "max_l2", "kpool": "max_l2"},
            "attn_layers": list(opt.layers or []),
            "device": device,
        },
        "software": software(),
    }


def open_store(checked: Checked, info: dict, device: str) -> tuple[RunWriter, list[DocPlan]]:
    """The store with every length group created, and the plan: one `DocPlan` per document."""
    opt, cfg = checked.opt, checked.cfg
    store = RunWriter(
        opt.out,
        run_config_of(opt, info),
        root_attributes(opt, cfg, info, device),
        overwrite=opt.overwrite,
        background=device.startswith("cuda"),
    )
    plan = []
    for n in opt.lengths:
        block = block_for(n, opt.block)
        tile = tile_rows(n, cfg["heads"], block)
        store.length_group(n, cfg, opt.window, block, tile, list(opt.layers or []), opt.window_rows)
        if opt.redo and opt.redo[0] == n:
            store.undo(n, opt.depths.index(opt.redo[1]), opt.redo[2])
        done = store.done(n)
        plan += [
            DocPlan(n, block, tile, d, s, bool(done[d, s]))
            for d in range(len(opt.depths))
            for s in range(opt.samples)
        ]
    return store, plan
