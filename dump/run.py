"""The dump job: check the options, then hand the plan to one executor (`dump.executors`): this
process, one process per device, or the workers of a Dask scheduler."""

from __future__ import annotations

from core import outputs, schema
from core.errors import UsageError
from core.lm import models
from dump.document import build_document
from dump.executors import DumpSummary
from dump.options import DumpOptions
from dump.plan import Checked, resolve_devices, validate

__all__ = ["DumpOptions", "DumpSummary", "run_dump"]


def run_dump(opt: DumpOptions) -> DumpSummary:
    """Dump every unfinished document of `opt`'s plan into `opt.out`, which is locked meanwhile
    (the device shards and cluster workers run under this lock)."""
    outputs.check_writable(opt.out)
    outputs.check_output(opt.out, schema.RUN_KIND)  # only a RUN store made by dump is resumed or replaced
    with outputs.write_lock(opt.out):
        checked = validate(opt)
        preflight(checked)
        return execute(checked)


def check(opt: DumpOptions) -> Checked:
    """Everything `run_dump` would refuse before writing, without writing: the output, the options
    against the model, and an existing store made with other settings (`pipelines check`)."""
    import dataclasses

    import torch

    from dump.plan import resolve_dtype, run_config_of
    from dump.store import check_run_config

    outputs.check_writable(opt.out)
    exists = outputs.check_output(opt.out, schema.RUN_KIND)
    device = opt.device
    if device.startswith("cuda") and not torch.cuda.is_available():  # a GPU study checked on a CPU host
        opt = dataclasses.replace(opt, device="cpu", devices=None)
    checked = validate(opt)
    preflight(checked)
    if exists and not opt.overwrite:
        import zarr

        old = dict(zarr.open_group(opt.out, mode="r").attrs.get("settings", {}))
        dtype = resolve_dtype(opt.dtype, "cuda" if device.startswith("cuda") else checked.device)
        new = run_config_of(checked.opt, models.describe(opt.model, dtype, opt.rope_scaling))
        if device == "auto" and opt.dtype == "auto":  # the dtype follows the host that runs it
            old.pop("dtype", None)
            new.pop("dtype", None)
        check_run_config(opt.out, old, new, option="out:")
    return checked


def preflight(checked: Checked) -> None:
    """Build the first document of every length before the store exists: a length too short for the
    prompt, or a tokenizer that cannot carry the task's values, is refused with nothing written."""
    tokenizer = models.load_tokenizer(checked.opt.model)
    for n in checked.opt.lengths:
        build_document(tokenizer, checked.opt, n, 0, 0)


def execute(checked: Checked) -> DumpSummary:
    opt = checked.opt
    if opt.scheduler:
        if opt.devices:
            raise UsageError("--scheduler and --devices exclude each other: the workers choose their devices")
        from dump.executors.cluster import run_on_cluster

        return run_on_cluster(checked, "cuda" if checked.device.startswith("cuda") else checked.device)
    devices = resolve_devices(opt.devices)
    if len(devices) > 1:
        from dump.executors.devices import run_on_devices

        return run_on_devices(checked, devices)
    from dump.executors.local import run_local

    return run_local(checked, devices[0] if devices else checked.device)
