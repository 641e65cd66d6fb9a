"""`python -m analyze RUN.zarr`: every pruning policy × sparsity, offline, on Dask -> RESULTS.zarr."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from analyze.errors import UsageError
from dump.errors import OneLineParser

DEFAULT_METHODS = "full,oracle,random,streaming,h2o,snapkv,tova,cab,cab_high,cab_hybrid,cab_3c"


def parse_sparsities(value: str) -> list[float]:
    out = []
    for item in value.split(","):
        try:
            s = float(item)
        except ValueError:
            raise UsageError(
                f"cannot read sparsity {item!r}: give fractions in [0, 1) like 0.9,0.95"
            ) from None
        if not 0.0 <= s < 1.0:
            raise UsageError(f"sparsity {item} is outside [0, 1): it is the fraction of keys evicted")
        out.append(s)
    if len(set(out)) != len(out):
        raise UsageError(f"sparsities {value!r} repeat a value")
    return out


def build_parser():
    p = OneLineParser(
        prog="python -m analyze",
        description="Apply KV-cache pruning policies offline to a RUN.zarr from `python -m dump` and score "
        "whether each keeps the needle, per method, sparsity, length, depth, sample, layer and head.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("store", nargs="?", help="RUN.zarr (a directory or fsspec URL)")
    p.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help="comma list; parameters as name:key=value[:key=value], e.g. h2o:recent_ratio=0.2",
    )
    p.add_argument("--sparsity", default="0.9,0.95,0.99", help="fractions of keys evicted, each in [0, 1)")
    p.add_argument("--out", default=None, help="RESULTS.zarr (default: next to the store, .results.zarr)")
    p.add_argument(
        "--gqa",
        choices=["kv", "head"],
        default="kv",
        help="one kept set per kv head (a real cache) or per query head",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random policy")
    p.add_argument("--retrieval-heads", type=int, default=10, help="how many heads count as retrieval heads")
    p.add_argument(
        "--scheduler", default=None, help="address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786"
    )
    p.add_argument(
        "--workers", type=int, default=None, help="local worker processes (default: min(4, cores))"
    )
    p.add_argument(
        "--reference", action="store_true", help="use the plain numpy references instead of numba kernels"
    )
    p.add_argument("--list-methods", action="store_true", help="list methods with their parameters and exit")
    p.add_argument("--no-progress", action="store_true")
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
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from analyze import policies

        if args.list_methods:
            print("\n".join(policies.describe()))
            return 0
        if not args.store:
            raise UsageError("give the RUN.zarr to analyze (python -m analyze RUN.zarr), or --list-methods")
        methods = tuple(policies.parse_method(m) for m in args.methods.split(",") if m.strip())
        if not methods:
            raise UsageError("--methods is empty: give at least one method")
        if args.workers is not None and args.workers < 1:
            raise UsageError(f"--workers {args.workers} must be at least 1")
        sparsities = tuple(parse_sparsities(args.sparsity))
        from analyze import cluster, engine

        plan = engine.plan_store(args.store)
        for m in methods:
            b = getattr(m, "block", 0)
            for stored in plan.blocks.values():
                if b and b % stored:
                    raise UsageError(
                        f"{m.name}:block={b} must be a multiple of the stored block size {stored}"
                    )
        unfinished = sum(int((~plan.done[n]).sum()) for n in plan.lengths)
        if unfinished:
            print(
                f"analyze: warning: {unfinished} unfinished documents in {args.store} are skipped",
                file=sys.stderr,
            )
        spec = engine.Spec(methods, sparsities, gqa=args.gqa, seed=args.seed, reference=args.reference)
        out = args.out or default_out(args.store)
        with cluster.client_for(args.scheduler, args.workers) as client:
            ds, _ = engine.run(
                args.store, spec, client, progress=not args.no_progress, retrieval_heads=args.retrieval_heads
            )
        write_results(ds, out)
    except UsageError as err:
        print(f"python -m analyze: error: {err}", file=sys.stderr)
        return 2
    hit = ds.needle_hit_mean.sel(subset="all").mean(["length", "depth"])
    print(
        f"analyze: {len(ds.method)} methods x {len(ds.sparsity)} sparsities over "
        f"{int(ds.done.sum())} documents -> {out}"
    )
    for s in ds.sparsity.values:
        row = ", ".join(f"{m}={float(hit.sel({'method': m, 'sparsity': s})):.2f}" for m in ds.method.values)
        print(f"  needle_hit (all heads) @ sparsity {s:g}: {row}")
    return 0
