"""`python -m analyze RUN.zarr`: every pruning policy × sparsity, offline, on Dask -> RESULTS.zarr."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from analyze.errors import UsageError
from analyze.options import AnalyzeOptions
from dump import optionkit, outputs, schema
from dump.errors import OneLineParser, check_signals, run_main


def build_parser():
    p = OneLineParser(
        prog="python -m analyze",
        description="Apply KV-cache pruning policies offline to a RUN.zarr from `python -m dump` and score "
        "whether each keeps the needle, per policy, sparsity, length, depth, sample, layer and head.",
    )
    optionkit.add_arguments(p, AnalyzeOptions)
    return p


def default_out(store: str) -> str:
    base = store.rstrip("/")
    return (base[: -len(".zarr")] if base.endswith(".zarr") else base) + ".results.zarr"


def write_results(ds, out: str) -> None:
    """Write to a temporary sibling, then rename: a failed run leaves nothing at --out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "://" in out and not out.startswith("file://"):
            ds.to_zarr(out, mode="w", consolidated=True)
            return
        target = Path(out.removeprefix("file://")).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent)
        try:
            ds.to_zarr(tmp, mode="w", consolidated=True)
            check_signals()
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def check_blocks(pols, plan) -> None:
    """A block policy's block must be a multiple of every stored block size."""
    for m in pols:
        for stored in sorted(set(plan.blocks.values())):
            if m.block and m.block % stored:
                raise UsageError(
                    f"{m.name}:block={m.block} must be a multiple of the stored block size {stored}"
                )


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_main("python -m analyze", lambda: _main(args))


def _main(args) -> int:
    opt = optionkit.from_args(AnalyzeOptions, args)
    from analyze import policies

    if opt.list_methods:
        print("\n".join(policies.describe()))
        return 0
    if not opt.store:
        raise UsageError("give the RUN.zarr to analyze (python -m analyze RUN.zarr), or --list-methods")
    out = opt.out or default_out(opt.store)
    outputs.check_output(out, schema.RESULTS_KIND, inputs=(opt.store,))
    outputs.check_writable(out)
    from analyze import engine, runstore
    from dump import cluster

    plan = runstore.plan_store(opt.store)
    spec = engine.spec_from(opt)
    check_blocks(spec.policies, plan)
    if plan.unfinished:
        print(
            f"analyze: warning: {plan.unfinished} unfinished documents in {opt.store} are skipped",
            file=sys.stderr,
        )
    with cluster.client_for(opt.scheduler, opt.workers) as client:
        ds, _ = engine.run(
            opt.store, spec, client, progress=opt.progress, retrieval_heads=opt.retrieval_heads
        )
    skipped = ds.attrs.get("skipped_corrupt", [])
    if skipped:
        print(
            f"analyze: warning: skipped {len(skipped)} corrupt document(s): " + "; ".join(skipped),
            file=sys.stderr,
        )
    write_results(ds, out)
    hit = ds.needle_hit_mean.sel(subset="all").mean(["length", "depth"])
    print(
        f"analyze: {ds.sizes[schema.POLICY]} policies x {len(ds.sparsity)} sparsities over "
        f"{int(ds.done.sum())} documents -> {out}"
    )
    for s in ds.sparsity.values:
        row = ", ".join(
            f"{m}={float(hit.sel({schema.POLICY: m, 'sparsity': s})):.2f}" for m in ds[schema.POLICY].values
        )
        print(f"  needle_hit (all heads) @ sparsity {s:g}: {row}")
    if "answer" in ds:
        print_answers(ds)
    return 0


def print_answers(ds) -> None:
    from analyze import calibration

    acc = ds.answer.mean(["length", "depth", "sample"])
    full = float(ds.retrieved.where(ds.done).mean())
    print(f"  the model answers {full:.2f} of the documents with its full cache (retrieved)")
    for s in ds.sparsity.values:
        row = ", ".join(
            f"{m}={float(acc.sel({schema.POLICY: m, 'sparsity': s})):.2f}" for m in ds[schema.POLICY].values
        )
        print(f"  answer accuracy @ sparsity {s:g}: {row}")
    print("  calibration of the proxy against the answer (documents the full cache answers, pruned cells):")
    attrs = dict(ds.calibration.attrs)
    attrs["best_rule"] = ds.attrs.get("calibration_best_rule", "")
    for line in calibration.lines(ds.calibration, attrs):
        print("    " + line)
