"""`python -m viz RESULTS.zarr --out DIR` writes the report; `python -m viz serve RESULTS.zarr` explores."""

from __future__ import annotations

import sys
from pathlib import Path

from dump.errors import OneLineParser, UsageError


def check_results(path: str) -> None:
    import xarray as xr

    try:
        ds = xr.open_zarr(path)
    except Exception:
        raise UsageError(
            f"results {path!r} do not exist or are not a RESULTS.zarr: make them with `python -m analyze`"
        ) from None
    missing = {"needle_hit", "needle_hit_heads", "retrieval_head"} - set(ds.data_vars)
    if missing:
        raise UsageError(
            f"{path!r} is not a RESULTS.zarr from `python -m analyze` (missing {', '.join(sorted(missing))})"
        )


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
        p.add_argument("results")
        p.add_argument(
            "--out", default=None, help="report folder (default: RESULTS without .results.zarr + /report)"
        )
        p.add_argument(
            "--store", default=None, help="the RUN.zarr, for kept-set pictures (default: the results' source)"
        )
        p.add_argument("--dpi", type=int, default=150, help="PNG resolution (300 for papers)")
        args = p.parse_args(argv)
    try:
        check_results(args.results)
        if serve_mode:
            from viz.app import serve

            print(f"viz: explorer on http://127.0.0.1:{args.port}")
            serve(args.results, args.port, args.show)
            return 0
        from viz.report import build

        if args.dpi < 30 or args.dpi > 1200:
            raise UsageError(f"--dpi {args.dpi} is outside 30..1200")
        out = (
            args.out
            or str(
                Path(args.results.rstrip("/").removesuffix(".zarr").removesuffix(".results")).with_suffix("")
            )
            + "_report"
        )
        store = args.store
        if store is None:
            import xarray as xr

            src = xr.open_zarr(args.results).attrs.get("source_store")
            store = src if src and Path(src).exists() else None
        build(args.results, out, store=store, dpi=args.dpi)
    except UsageError as err:
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 2
    return 0
