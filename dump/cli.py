"""`python -m dump`: run a causal LM over NIAH passkey documents and store attention statistics."""

from __future__ import annotations

import argparse
import sys

from dump import haystack, models
from dump.errors import OneLineParser, UsageError


def _lengths(value):
    try:
        return haystack.parse_lengths(value)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _depths(value):
    try:
        return haystack.parse_depths(value)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _layers(value):
    out = []
    for item in value.split(","):
        item = item.strip()
        try:
            if "-" in item:
                a, b = (int(x) for x in item.split("-"))
                out += list(range(a, b + 1))
            else:
                out.append(int(item))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"cannot read layers {value!r}: use numbers and ranges like 18,20-23"
            ) from None
    return sorted(set(out))


def _block(value):
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--block {value!r} must be a token count or 'auto'") from None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m dump",
        description="Run a causal LM once per NIAH passkey document and stream per-layer attention "
        "statistics (colsum, last-W rows, BxB block sums, pooled Q/K) into a Zarr store.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model",
        default=models.DEFAULT_MODEL,
        help="embedded name (smollm2-135m), a .gguf file, a local HF directory, or a cached HF id; never downloads",
    )
    p.add_argument(
        "--lengths",
        type=_lengths,
        default=[1024],
        help="prompt lengths in tokens, e.g. 4k,16K,1500 (k = 1024)",
    )
    p.add_argument(
        "--depths",
        type=_depths,
        default=[0.1, 0.5, 0.9],
        help="needle depths in [0,1]: 0.1,0.5,0.9 or linspace:0,1,11 or sigmoid:0,1,11",
    )
    p.add_argument(
        "--samples", type=int, default=1, help="documents per (length, depth), each with its own passkey"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of passkeys and filler order")
    p.add_argument("--filler", default="ruler", help="haystack filler: ruler, nature, or a text file path")
    p.add_argument(
        "--window", type=int, default=64, help="W: full attention rows kept for the last W queries"
    )
    p.add_argument(
        "--block",
        type=_block,
        default=64,
        help="B: block size of block sums and pooled Q/K, or auto (<=1024 blocks)",
    )
    p.add_argument(
        "--store",
        choices=["stats", "full"],
        default="stats",
        help="full also stores whole attention matrices of --layers",
    )
    p.add_argument(
        "--layers",
        type=_layers,
        default=None,
        help="layers of full matrices with --store full, e.g. 18,20-23 (default all)",
    )
    p.add_argument("--out", default="runs/run.zarr", help="the store (a directory or fsspec URL)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--devices",
        type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
        default=None,
        help="several devices, e.g. cuda:0,cuda:1 or all: documents sharded one process per device",
    )
    p.add_argument(
        "--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a store made with other settings")
    p.add_argument("--max-gb", type=float, default=20.0, help="refuse --store full above this many GB")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from dump.run import DumpOptions, run_dump  # heavy imports after --help

    opt = DumpOptions(
        out=args.out,
        model=args.model,
        lengths=args.lengths,
        depths=args.depths,
        samples=args.samples,
        seed=args.seed,
        filler=args.filler,
        window=args.window,
        block=args.block,
        store=args.store,
        layers=args.layers,
        device=args.device,
        dtype=args.dtype,
        overwrite=args.overwrite,
        max_gb=args.max_gb,
        devices=args.devices,
        progress=not args.no_progress,
    )
    try:
        summary = run_dump(opt)
    except UsageError as err:
        print(f"python -m dump: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("python -m dump: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    print(summary.line())
    return 0
