"""dump -> analyze -> viz from one config; each stage skips what is already done."""

from __future__ import annotations

import json
import time
from pathlib import Path

import xarray as xr

from pipelines.config import Config


def log(msg: str) -> None:
    print(f"pipelines: {msg}", flush=True)


def analyze_key(cfg: Config) -> str:
    """What the results depend on: the analyze settings and the dump's finished documents."""
    import zarr

    from core import schema

    root = zarr.open_group(cfg.run_store, mode="r")
    done = {
        schema.group_name(n): int(root[schema.group_name(n)]["done"][:].sum())
        for n in schema.lengths_in(root)
    }
    a = cfg.analyze
    return json.dumps(
        {
            "methods": list(map(str, a.methods)),
            "sparsities": a.sparsity,
            "gqa": a.gqa,
            "seed": a.seed,
            "retrieval_heads": a.retrieval_heads,
            "answers": a.answers,
            "done": done,
            "settings": dict(root.attrs["settings"]),
        },
        sort_keys=True,
    )


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
    key = analyze_key(cfg)
    results = Path(cfg.results_store)
    fresh = results.exists() and xr.open_zarr(results).attrs.get("pipeline_key") == key
    if fresh:
        log(f"analyze: {results} is up to date, skipped")
    else:
        import analyze
        from core import cluster, outputs

        a = analyze_opt
        spec = analyze.spec_from(a)
        with cluster.client_for(a.scheduler, a.workers) as client:
            ds, unfinished = analyze.run(
                a.store, spec, client, progress=progress, retrieval_heads=a.retrieval_heads
            )
        ds.attrs["pipeline_key"] = key
        outputs.write_dataset(ds, a.out)
        log(f"analyze: {len(ds.policy)} policies x {len(ds.sparsity)} sparsities -> {results}")
    timings["analyze"] = time.perf_counter() - t
    if until == "analyze":
        return _done(timings, str(results))

    t = time.perf_counter()
    from viz import build_report

    report = Path(cfg.report_dir)
    index = report / "index.html"
    if index.exists() and index.stat().st_mtime > (results / "zarr.json").stat().st_mtime and fresh:
        log(f"viz: {index} is up to date, skipped")
    else:
        v = viz_opt
        build_report(v.results, v.out, store=v.store if v.keptset else None, dpi=v.dpi, progress=log)
    timings["viz"] = time.perf_counter() - t
    return _done(timings, f"open {index}")


def _done(timings: dict, what: str) -> dict:
    log("done in " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; {what}")
    return timings
