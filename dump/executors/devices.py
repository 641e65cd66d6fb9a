"""Several devices of one host: one spawned process per device, each running `run_local` on its
share of the plan (every len(devices)-th document) into its own chunks of the one store."""

from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple

from core.lm import models
from dump.executors import DumpSummary
from dump.plan import Checked, open_store, resolve_dtype


class Shard(NamedTuple):
    """One device's share: the checked options (device set) and (its position, the device count)."""

    checked: Checked
    device: str
    index: int
    count: int


def _run_shard(shard: Shard) -> DumpSummary:
    from dump.executors.local import run_local

    return run_local(shard.checked, shard.device, (shard.index, shard.count))


def run_on_devices(checked: Checked, devices: list[str]) -> DumpSummary:
    import multiprocessing as mp

    opt = checked.opt
    t0 = time.perf_counter()
    dtype = resolve_dtype(opt.dtype, devices[0])
    store, plan = open_store(checked, models.describe(opt.model, dtype, opt.rope_scaling), ",".join(devices))
    store.close()  # layout and attributes are written once, here; the shards only fill chunks
    shards = [
        Shard(
            dataclasses.replace(
                checked, opt=dataclasses.replace(opt, device=dev, devices=None, overwrite=False)
            ),
            dev,
            i,
            len(devices),
        )
        for i, dev in enumerate(devices)
    ]
    with mp.get_context("spawn").Pool(len(devices)) as pool:
        parts = pool.map(_run_shard, shards)
    return DumpSummary(
        opt.out,
        sum(p.documents for p in parts),
        sum(p.skipped for p in parts),
        sum(p.tokens for p in parts),
        time.perf_counter() - t0,
        store.nbytes(),
        sum(p.retrieved for p in parts),
    )
