"""`python -m dump`: run a causal LM over NIAH passkey documents and store attention statistics.

Its flags are derived from `dump.options.DumpOptions` (the same fields are a config's `dump:` keys).
"""

from __future__ import annotations

import argparse

from core import optionkit
from core.errors import OneLineParser, run_main
from dump.options import DumpOptions


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m dump",
        description="Run a causal LM once per NIAH document (passkey or RULER's needle tasks) and stream per-layer attention "
        "statistics (colsum, last-W rows, BxB block sums, pooled Q/K) into a Zarr store.",
    )
    optionkit.add_arguments(p, DumpOptions)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        opt = optionkit.from_args(DumpOptions, args)
        if opt.list_tasks:
            from core import tasks

            print(tasks.listing())
            return 0
        from dump.run import run_dump  # heavy imports after --help and option checks

        print("\n".join(run_dump(opt).lines()))
        return 0

    return run_main("python -m dump", body, resume="rerun the same command to resume")
