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

    root = zarr.open_group(cfg.run_store, mode="r")
    done = {name: int(root[name]["done"][:].sum()) for name in sorted(root.group_keys())}
    a = cfg.analyze
    return json.dumps(
        {
            "methods": list(map(str, a.methods)),
            "sparsities": a.sparsities,
            "gqa": a.gqa,
            "seed": a.seed,
            "retrieval_heads": a.retrieval_heads,
            "done": done,
            "settings": dict(root.attrs["settings"]),
        },
        sort_keys=True,
    )


def run(cfg: Config, progress: bool = True) -> dict:
    timings = {}
    Path(cfg.out).mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    from dump.run import DumpOptions, run_dump

    d = cfg.dump
    summary = run_dump(
        DumpOptions(
            out=cfg.run_store,
            model=d.model,
            lengths=d.lengths,
            depths=d.depths,
            samples=d.samples,
            seed=d.seed,
            filler=d.filler,
            window=d.window,
            block=d.block,
            store=d.store,
            layers=d.layers,
            device=d.device,
            dtype=d.dtype,
            progress=progress,
        )
    )
    log(summary.line())
    timings["dump"] = time.perf_counter() - t

    t = time.perf_counter()
    key = analyze_key(cfg)
    results = Path(cfg.results_store)
    fresh = results.exists() and xr.open_zarr(results).attrs.get("pipeline_key") == key
    if fresh:
        log(f"analyze: {results} is up to date, skipped")
    else:
        from analyze import cluster, engine, policies
        from analyze.cli import write_results

        a = cfg.analyze
        spec = engine.Spec(
            tuple(policies.parse_method(str(m)) for m in a.methods),
            tuple(a.sparsities),
            gqa=a.gqa,
            seed=a.seed,
        )
        with cluster.client_for(cfg.dask.scheduler, cfg.dask.workers) as client:
            ds, unfinished = engine.run(
                cfg.run_store, spec, client, progress=progress, retrieval_heads=a.retrieval_heads
            )
        ds.attrs["pipeline_key"] = key
        write_results(ds, str(results))
        log(f"analyze: {len(ds.method)} methods x {len(ds.sparsity)} sparsities -> {results}")
    timings["analyze"] = time.perf_counter() - t

    t = time.perf_counter()
    from viz.report import build

    report = Path(cfg.report_dir)
    index = report / "index.html"
    if index.exists() and index.stat().st_mtime > (results / "zarr.json").stat().st_mtime and fresh:
        log(f"viz: {index} is up to date, skipped")
    else:
        build(
            str(results),
            str(report),
            store=cfg.run_store if cfg.viz.keptset else None,
            dpi=cfg.viz.dpi,
            progress=log,
        )
    timings["viz"] = time.perf_counter() - t
    log("done in " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; open {index}")
    return timings
