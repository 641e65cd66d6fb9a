"""What a RUN store costs on disk: MB per document of every variable, per length, and the total.

    python bench/store_bench.py RUN.zarr [RUN.zarr ...]
    python bench/store_bench.py --layouts --model qwen2.5-coder-1.5b --length 32k [--device cuda]
        [--store stats,keys] [--dtype bfloat16]

The first form reads stores: last line per store and length `store_mb_per_doc N MB` (N = tokens);
the dump prints the same figures, largest variables first, after each run. `--layouts` dumps the same
documents twice in this run: in RUN 2.3's layout (8 of the last W rows whole, the context's block
sums and pooled Q/K stored whole, every statistic's bits shuffled) and in today's (the final row
whole, only the context rows not shared with the prompt's copy, block sums' and pooled Q/K's bytes
shuffled, and a half-precision model's keys and values bytes shuffled instead of raw), and prints
`store_mb_per_doc_before`, `store_mb_per_doc` and their ratio."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from stamp import stamp

from dump.store import bytes_per_document


def report(path: str) -> dict[int, float]:
    totals = {}
    for n, sizes in bytes_per_document(path).items():
        print(f"{path}, {n} tokens: MB per document")
        for var, b in sizes.items():
            if b >= 1e3:
                print(f"  {var:<18} {b / 1e6:10.3f}")
        totals[n] = sum(sizes.values()) / 1e6
        print(f"store_mb_per_doc {n} {totals[n]:.3f}")
    return totals


def layouts(args) -> None:
    from dump import store as run_store
    from dump.cli import main as dump_main

    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        codecs = run_store.SHUFFLE_BYTES
        for share in (False, True):  # RUN 2.3's layout (every row, bits shuffled), then RUN 2.4's
            run_store.SHARE_CONTEXT_ROWS = share
            run_store.SHUFFLE_BYTES = codecs if share else frozenset()
            run_store.SHUFFLE_HALF_KEYS = share  # RUN 2.3 kept a half-precision model's keys raw
            out = str(Path(tmp) / f"share{share}.zarr")
            argv = [
                "--model",
                args.model,
                "--task",
                args.task,
                "--lengths",
                args.length,
                "--depths",
                args.depths,
            ]
            argv += ["--samples", "1", "--device", args.device, "--out", out, "--no-progress"]
            argv += ["--store", args.store, "--dtype", args.dtype]
            argv += [] if share else ["--window-rows", "8"]  # RUN 2.3's default
            assert dump_main(argv) == 0
            sizes[share] = next(iter(report(out).values()))
    print(f"store_mb_per_doc_before {sizes[False]:.3f}")
    print(f"store_mb_per_doc {sizes[True]:.3f}")
    print(f"store_ratio {sizes[True] / sizes[False]:.3f}")
    label = args.length.lower()  # the figures under the length's own name, e.g. store_mb_per_32k_doc
    print(f"store_mb_per_{label}_doc_before {sizes[False]:.3f}")
    print(f"store_mb_per_{label}_doc {sizes[True]:.3f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stores", nargs="*")
    p.add_argument(
        "--layouts", action="store_true", help="dump the same documents in both layouts and compare"
    )
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="ruler:niah_single_1")
    p.add_argument("--length", default="2k")
    p.add_argument("--depths", default="0.5")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--dtype", default="auto", help="the dump's --dtype (auto: float32 on the CPU, bfloat16 on CUDA)"
    )
    p.add_argument("--store", default="stats", help="the dump's --store, e.g. stats,keys")
    args = p.parse_args()
    if args.layouts:
        layouts(args)
    for path in args.stores:
        report(path)
    return 0


if __name__ == "__main__":
    stamp()
    sys.exit(main())
