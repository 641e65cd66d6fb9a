"""`python -m pipelines run CONFIG.yaml`: the whole study, resumable, into one report folder."""

from __future__ import annotations

import sys

from dump.errors import OneLineParser, UsageError


def main(argv=None) -> int:
    p = OneLineParser(
        prog="python -m pipelines",
        description="Run dump -> analyze -> viz from one YAML config; "
        "each stage skips what is already done. See configs/demo.yaml.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the study of a config file")
    r.add_argument("config")
    r.add_argument("--no-progress", action="store_true")
    c = sub.add_parser("check", help="validate a config file and exit")
    c.add_argument("config")
    args = p.parse_args(argv)
    try:
        from pipelines import config

        cfg = config.load(args.config)
        if args.command == "check":
            print(f"pipelines: {args.config} is valid (output folder {cfg.out})")
            return 0
        from pipelines.run import run

        run(cfg, progress=not args.no_progress)
    except UsageError as err:
        print(f"python -m pipelines: error: {err}", file=sys.stderr)
        return 2
    return 0
