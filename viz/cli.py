"""`python -m viz RESULTS.zarr --out DIR` writes the report; `python -m viz serve RESULTS.zarr` explores;
`python -m viz tasks TASK=RESULTS.zarr ... --out FILE.html` puts several tasks' heatmaps behind a
task selector."""

from __future__ import annotations

import sys
from pathlib import Path

from core import optionkit, outputs
from core.errors import OneLineParser, UsageError, run_main
from viz.options import VizOptions


def check_results(path: str) -> None:
    from core import schema

    schema.open_results(path)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    serve_mode = bool(argv) and argv[0] == "serve"
    if argv and argv[0] == "tasks":
        p = OneLineParser(
            prog="python -m viz tasks",
            description="One self-contained HTML page of heatmaps for several RESULTS.zarr (one per task), "
            "with a task selector and a setting selector.",
        )
        p.add_argument(
            "results", nargs="+", metavar="TASK=RESULTS", help="e.g. multikey:3=runs/mk.results.zarr"
        )
        p.add_argument("--out", required=True, metavar="FILE", help="the HTML page to write")
        args = p.parse_args(argv[1:])
        return run_main(p.prog, lambda: _tasks(args))
    if serve_mode:
        p = OneLineParser(
            prog="python -m viz serve", description="Interactive explorer of a RESULTS.zarr on 127.0.0.1."
        )
        p.add_argument("results")
        p.add_argument("--port", type=_port, default=5006, help="a free TCP port, 1..65535 (default 5006)")
        p.add_argument("--show", action="store_true", help="open a browser")
        args = p.parse_args(argv[1:])
    else:
        p = OneLineParser(
            prog="python -m viz",
            description="Figures of a RESULTS.zarr: interactive HTML heatmaps, curves, "
            "kept-set pictures, PNGs for papers, summary.csv and an index.html (self-contained, offline). "
            "`python -m viz serve RESULTS.zarr` starts the interactive explorer.",
        )
        optionkit.add_arguments(p, VizOptions)
        args = p.parse_args(argv)
    if serve_mode:
        return run_main(p.prog, lambda: _serve(args))
    return run_main(p.prog, lambda: _report(args))


def _port(value: str) -> int:
    import argparse

    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"--port {value!r} is not a TCP port: use 1..65535")
    return port


def _check_port_free(port: int) -> None:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise UsageError(f"--port {port} is in use on 127.0.0.1: choose another with --port") from None


def _serve(args) -> int:
    check_results(args.results)
    _check_port_free(args.port)
    from viz.app import serve

    print(f"viz: explorer on http://127.0.0.1:{args.port}")
    serve(args.results, args.port, args.show)
    return 0


def _tasks(args) -> int:
    pairs = {}
    for item in args.results:
        task, eq, path = item.partition("=")
        if not eq or not task or not path:
            raise UsageError(f"{item!r} is not TASK=RESULTS (e.g. multikey:3=runs/mk.results.zarr)")
        if task in pairs:
            raise UsageError(f"task {task!r} is given twice: give each task's RESULTS once")
        check_results(path)
        pairs[task] = path
    outputs.check_file(args.out)
    from core import schema
    from viz import tasks

    out = tasks.page({task: schema.open_results(path).load() for task, path in pairs.items()}, args.out)
    print(f"viz: {len(pairs)} tasks' heatmaps at {out}")
    return 0


def _report(args) -> int:
    opt = optionkit.from_args(VizOptions, args)
    if not opt.results:
        raise UsageError("give the RESULTS.zarr to draw (python -m viz RESULTS.zarr)")
    check_results(opt.results)
    out = opt.out or default_out(opt.results)
    import json

    import xarray as xr

    attrs = dict(xr.open_zarr(opt.results).attrs)
    store = opt.store
    if store is None and opt.keptset:
        src = attrs.get("source_store")
        store = src if src and Path(src).exists() else None
        if store is None:
            print(
                f"viz: warning: no kept-set pictures: the RUN store these results were made from "
                f"({src or 'not recorded'}) is not there; give it with --store",
                file=sys.stderr,
            )
    if opt.store is not None:  # refused now, not after the heatmaps are drawn
        from core.provenance import run_identity, same_study
        from core.runstore import plan_store

        missing = sorted(
            set(map(int, xr.open_zarr(opt.results).length.values)) - set(plan_store(opt.store).lengths)
        )
        if missing and opt.keptset:
            raise UsageError(
                f"--store {opt.store!r} holds no length {', '.join(map(str, missing))} of the results: "
                f"give the RUN.zarr the results were made from, or --no-keptset"
            )
        recorded = json.loads(attrs.get("provenance") or "{}").get("run")
        if opt.keptset and recorded and not same_study(recorded, run_identity(opt.store)):
            raise UsageError(
                f"--store {opt.store!r} is not the RUN store these results were made from "
                f"({recorded.get('path')}, created {recorded.get('created')}): its kept sets would not be the "
                f"scored ones; give that store, or --no-keptset"
            )
    outputs.check_output(out, "report", option="--out", inputs=(opt.results, store or ""))
    outputs.check_writable(out)
    from viz.report import build_atomic

    build_atomic(
        opt.results,
        out,
        store=store if opt.keptset else None,
        dpi=opt.dpi,
        progress=print if opt.progress else (lambda *_: None),
    )
    return 0


def default_out(results: str) -> str:
    """`runs/x.results.zarr` -> `runs/x_report` (a file:// results gives a plain local path)."""
    base = results.removeprefix("file://").rstrip("/").removesuffix(".zarr").removesuffix(".results")
    return str(Path(base).with_suffix("")) + "_report"
