"""`python -m viz RESULTS.zarr --out DIR` writes the report; `python -m viz serve RESULTS.zarr` explores."""

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
    if serve_mode:
        p = OneLineParser(
            prog="python -m viz serve", description="Interactive explorer of a RESULTS.zarr on 127.0.0.1."
        )
        p.add_argument("results")
        p.add_argument("--port", type=int, default=5006)
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


def _serve(args) -> int:
    check_results(args.results)
    from viz.app import serve

    print(f"viz: explorer on http://127.0.0.1:{args.port}")
    serve(args.results, args.port, args.show)
    return 0


def _report(args) -> int:
    opt = optionkit.from_args(VizOptions, args)
    if not opt.results:
        raise UsageError("give the RESULTS.zarr to draw (python -m viz RESULTS.zarr)")
    check_results(opt.results)
    out = opt.out or default_out(opt.results)
    store = opt.store
    if store is None and opt.keptset:
        import xarray as xr

        src = xr.open_zarr(opt.results).attrs.get("source_store")
        store = src if src and Path(src).exists() else None
    if opt.store is not None:
        from core.runstore import plan_store

        plan_store(opt.store)  # refused now, not after the heatmaps are drawn
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
    return (
        str(Path(results.rstrip("/").removesuffix(".zarr").removesuffix(".results")).with_suffix(""))
        + "_report"
    )
