"""`python -m dump`: run a causal LM over NIAH passkey documents and store attention statistics.

Its flags are derived from `dump.options.DumpOptions` (the same fields are a config's `dump:` keys).
"""

from __future__ import annotations

import argparse
import sys

from dump import optionkit
from dump.errors import OneLineParser, UsageError
from dump.options import DumpOptions


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m dump",
        description="Run a causal LM once per NIAH passkey document and stream per-layer attention "
        "statistics (colsum, last-W rows, BxB block sums, pooled Q/K) into a Zarr store.",
    )
    optionkit.add_arguments(p, DumpOptions)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        opt = optionkit.from_args(DumpOptions, args)
        from dump.run import run_dump  # heavy imports after --help and option checks

        summary = run_dump(opt)
    except UsageError as err:
        print(f"python -m dump: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("python -m dump: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    print(summary.line())
    return 0
