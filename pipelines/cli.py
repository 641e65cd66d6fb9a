"""`python -m pipelines run CONFIG.yaml`: the whole study, resumable, into one report folder."""

from __future__ import annotations

from core.errors import OneLineParser, run_main

STAGES = ("dump", "analyze", "viz")


def main(argv=None) -> int:
    p = OneLineParser(
        prog="python -m pipelines",
        description="Run dump -> analyze -> viz from one YAML config; "
        "each stage skips what is already done. See configs/demo.yaml.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the study of a config file")
    r.add_argument("config")
    r.add_argument(
        "--until",
        choices=STAGES,
        default="viz",
        help="last stage to run (e.g. analyze on a GPU host without plotting libraries; viz later elsewhere)",
    )
    r.add_argument("--no-progress", action="store_true")
    c = sub.add_parser("check", help="validate a config file and exit")
    c.add_argument("config")
    args = p.parse_args(argv)

    def body() -> int:
        from pipelines import config

        cfg = config.load(args.config)
        from pipelines.run import check_outputs, run

        check_outputs(cfg)
        if args.command == "check":
            from pathlib import Path

            import dump

            for study in [s for _, s in cfg.studies()] or [cfg]:
                if Path(study.run_store).exists():  # resuming: what `run` would refuse, "other settings" too
                    dump.check(study.stage_options(progress=False)[0])
            print(
                f"pipelines: {args.config} is valid (output folder {cfg.out}, `out:` read relative to the config file)"
            )
            return 0
        run(cfg, progress=not args.no_progress, until=args.until)
        return 0

    return run_main("python -m pipelines", body, resume="rerun the same command to resume")
