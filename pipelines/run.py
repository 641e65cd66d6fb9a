"""dump -> analyze -> viz from one config; each stage skips what is already done."""

from __future__ import annotations

import time
from pathlib import Path

import xarray as xr

from pipelines.config import Config


def log(msg: str) -> None:
    print(f"pipelines: {msg}", flush=True)


def check_outputs(cfg: Config) -> None:
    """The study's three outputs are free or ours, before any work."""
    from core import outputs, schema

    outputs.check_writable(cfg.out, option="out:")
    outputs.check_output(cfg.run_store, schema.RUN_KIND, option="out: (its run.zarr)")
    outputs.check_output(cfg.results_store, schema.RESULTS_KIND, option="out: (its results.zarr)")
    outputs.check_output(cfg.report_dir, "report", option="out: (its report)")


def run(cfg: Config, progress: bool = True, until: str = "viz") -> dict:
    """The study's stages in order, up to and including `until` (dump, analyze or viz)."""
    timings = {}
    check_outputs(cfg)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    dump_opt, analyze_opt, viz_opt = cfg.stage_options(progress)

    t = time.perf_counter()
    from dump import run_dump

    log(run_dump(dump_opt).line())
    timings["dump"] = time.perf_counter() - t
    if until == "dump":
        return _done(timings, cfg.run_store)

    t = time.perf_counter()
    import analyze

    a = analyze_opt
    spec = analyze.spec_from(a)
    key = analyze.provenance(a.store, spec, a.retrieval_heads)  # the store's documents and these settings
    results = Path(cfg.results_store)
    fresh = results.exists() and xr.open_zarr(results).attrs.get("provenance") == key
    if fresh:
        log(f"analyze: {results} is up to date (same documents, same settings), skipped")
    else:
        from core import cluster, outputs

        with cluster.client_for(a.scheduler, a.workers) as client:
            ds, unfinished = analyze.run(
                a.store, spec, client, progress=progress, retrieval_heads=a.retrieval_heads
            )
        outputs.write_dataset(ds, a.out)
        log(f"analyze: {len(ds.policy)} policies x {len(ds.sparsity)} sparsities -> {results}")
    timings["analyze"] = time.perf_counter() - t
    if until == "analyze":
        return _done(timings, str(results))

    t = time.perf_counter()
    from core.provenance import read_marker
    from viz import build_report, report_key

    report = Path(cfg.report_dir)
    index = report / "index.html"
    v = viz_opt
    store = v.store if v.keptset else None
    if index.exists() and read_marker(report) == report_key(v.results, store, v.dpi):
        log(f"viz: {index} is up to date (same results, same options), skipped")
    else:
        build_report(v.results, v.out, store=v.store if v.keptset else None, dpi=v.dpi, progress=log)
    timings["viz"] = time.perf_counter() - t
    return _done(timings, f"open {index}")


def _done(timings: dict, what: str) -> dict:
    log("done in " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; {what}")
    return timings
