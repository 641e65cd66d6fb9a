"""dump -> analyze -> viz from one config; each stage skips what is already done."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import xarray as xr

from pipelines.config import Config


def log(msg: str) -> None:
    print(f"pipelines: {msg}", flush=True)


def check_outputs(cfg: Config) -> None:
    """The study's outputs are free or ours, before any work (a sweep's: every task's)."""
    from core import outputs, schema

    outputs.check_writable(cfg.out, option="out:")
    if cfg.tasks:
        for _, study in cfg.studies():
            check_outputs(study)
        outputs.check_file(cfg.tasks_page, option="out: (its tasks page)")
        outputs.check_file(cfg.tasks_table, option="out: (its tasks table)")
        outputs.check_file(cfg.leaderboard_table, option="out: (its leaderboard)")
        return
    outputs.check_output(cfg.run_store, schema.RUN_KIND, option="out: (its run.zarr)")
    outputs.check_output(cfg.results_store, schema.RESULTS_KIND, option="out: (its results.zarr)")
    outputs.check_output(cfg.report_dir, "report", option="out: (its report)")


def run(cfg: Config, progress: bool = True, until: str = "viz", shared=None) -> dict:
    """The study's stages in order, up to and including `until` (dump, analyze or viz). `shared`: a
    sweep's `SharedClient`, whose one cluster analyzes every task."""
    check_outputs(cfg)
    if cfg.tasks:
        return sweep(cfg, progress, until)
    timings = {}
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    dump_opt, analyze_opt, viz_opt = cfg.stage_options(progress)
    results = Path(cfg.results_store)
    if cfg.by_length:
        by_length(cfg, progress, until, shared, timings)
        if until != "viz":
            return _done(timings, str(results) if until == "analyze" else str(Path(cfg.out) / "lengths"))
        viz_opt = dataclasses.replace(viz_opt, keptset=False)  # the run stores are gone
    else:
        t = time.perf_counter()
        from dump import run_dump

        for line in run_dump(dump_opt).lines():
            log(line)
        timings["dump"] = time.perf_counter() - t
        if until == "dump":
            return _done(timings, cfg.run_store)
        from core.lm import models

        models.release()  # the answer workers load their own models: the dump's leaves the GPU to them

        t = time.perf_counter()
        analyze_store(cfg, analyze_opt, progress, shared)
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


def analyze_store(cfg: Config, a, progress: bool, shared=None) -> None:
    """The analysis of the study's run store into its results store, unless those are up to date."""
    import analyze

    spec = analyze.spec_from(a)
    key = analyze.provenance(a.store, spec, a.retrieval_heads)  # the store's documents and these settings
    results = Path(cfg.results_store)
    if results.exists() and xr.open_zarr(results).attrs.get("provenance") == key:
        log(f"analyze: {results} is up to date (same documents, same settings), skipped")
        return
    from core import outputs

    with shared or SharedClient(a.scheduler, a.workers) as clients:
        ds, unfinished = analyze.run(
            a.store, spec, clients.get(), progress=progress, retrieval_heads=a.retrieval_heads
        )
    outputs.write_dataset(ds, a.out)
    log(f"analyze: {len(ds.policy)} policies x {len(ds.sparsity)} sparsities -> {results}")
    for name, attrs in ds.attrs.get("by_setting", {}).items():
        if "answer_task_seconds" in attrs:  # summed over the workers
            parts = ", ".join(f"{part} {t:.0f} s" for part, t in attrs["answer_task_seconds"].items())
            log(f"analyze: {name}: answer tasks' time summed over workers: {parts}")


def _options_key(study: Config) -> str:
    """What a length's results were made with (its dump and analysis options): a removed run store
    can no longer vouch for its results, this record does."""
    dump_opt, analyze_opt, _ = study.stage_options(progress=False)
    return json.dumps(
        {"dump": dataclasses.asdict(dump_opt), "analyze": dataclasses.asdict(analyze_opt)},
        sort_keys=True,
        default=str,
    )


ANALYZED = "analyzed.json"  # in a length's folder: its options, once analyzed and its run store removed


def by_length(cfg: Config, progress: bool, until: str, shared, timings: dict) -> None:
    """A `by_length` study: each length dumped, analyzed, and its run store removed before the next
    length is dumped (rerun to resume: a finished length is skipped), then every length's results
    joined into the study's (`analyze.join`)."""
    from core import outputs

    a = cfg.analyze
    with shared or SharedClient(a.scheduler, a.workers) as clients:
        for n, study in cfg.length_studies():
            marker = Path(study.out) / ANALYZED
            key = _options_key(study)
            if marker.exists() and marker.read_text() == key and Path(study.results_store).exists():
                shutil.rmtree(study.run_store, ignore_errors=True)  # a removal a kill interrupted
                log(f"length {n}: analyzed, its run store removed, skipped")
                continue
            log(f"length {n} -> {study.out}")
            for stage, seconds in run(
                study, progress, "dump" if until == "dump" else "analyze", clients
            ).items():
                timings[stage] = timings.get(stage, 0.0) + seconds
            if until == "dump":
                continue
            size = sum(f.stat().st_size for f in Path(study.run_store).rglob("*") if f.is_file())
            marker.write_text(key)  # first: a kill during the removal leaves a length a rerun skips
            shutil.rmtree(study.run_store)
            log(f"length {n}: {study.run_store} removed ({size / 1e9:.2f} GB), its results kept")
    if until == "dump":
        return
    t = time.perf_counter()
    from analyze import join_lengths

    studies = [study for _, study in cfg.length_studies()]
    parts = [xr.open_zarr(s.results_store).load() for s in studies]
    ds = join_lengths(parts, [s.results_store for s in studies], a.retrieval_heads)
    outputs.write_dataset(ds, cfg.results_store)
    log(f"analyze: {len(parts)} lengths joined -> {cfg.results_store}")
    timings["join"] = time.perf_counter() - t


def sweep(cfg: Config, progress: bool = True, until: str = "viz") -> dict:
    """A task sweep: each task's study in turn (each resumable on its own), then the page of every
    task's heatmaps and the answer table across tasks and settings."""
    timings = {}
    # one cluster for every task's analysis: its workers start, and load the model for the answers,
    # once (a worker keeps the last model it loaded)
    with SharedClient(cfg.analyze.scheduler, cfg.analyze.workers) as shared:
        for task, study in cfg.studies():
            log(f"task {task} -> {study.out}")
            for stage, seconds in run(study, progress, until, shared).items():
                timings[stage] = timings.get(stage, 0.0) + seconds
    if until != "viz":
        return timings
    import pandas as pd

    from core import outputs, schema
    from viz import (
        leaderboard_table,
        leaderboard_vs_kvpress,
        tasks_answer_table,
        tasks_long_table,
        tasks_page,
        tasks_render,
    )

    t = time.perf_counter()
    results = {task: schema.open_results(study.results_store).load() for task, study in cfg.studies()}
    tasks_page(results, cfg.tasks_page)
    # the model's answer where it was decoded, else the needle proxy (named in the table's header)
    metric = "answer" if all("answer" in ds for ds in results.values()) else "needle_hit"
    table = tasks_long_table(results, metric)
    with outputs.file_output(cfg.tasks_table) as tmp:
        table.to_csv(tmp, index=False)
    for s in sorted(set(table.sparsity)):
        log("\n" + tasks_render(tasks_answer_table(results, s, metric), s, metric))
    settings = [str(x) for x in next(iter(results.values()))[schema.SETTING].values]
    ranked = {name: leaderboard_table(results, name) for name in settings}
    with outputs.file_output(cfg.leaderboard_table) as tmp:
        pd.concat([b.assign(setting=name) for name, b in ranked.items()], ignore_index=True).to_csv(
            tmp, index=False, float_format="%.2f"
        )
    for name, board in ranked.items():
        rho, k, _ = leaderboard_vs_kvpress(board, 0.5)
        order = ", ".join(f"{p} {m:.1f}" for p, m in zip(board.policy, board["mean"]))
        log(
            f"leaderboard {name} (score x100, mean over sparsities): {order}; rho vs kvpress at 0.5: {rho:.2f} ({k} policies)"
        )
    timings["tasks"] = time.perf_counter() - t
    return _done(timings, f"open {cfg.tasks_page}; the tables: {cfg.tasks_table}, {cfg.leaderboard_table}")


class SharedClient:
    """A Dask client started on first use (`core.cluster.client_for`) and closed on leaving the
    outermost `with` (a sweep's, which its studies' `with` blocks leave open)."""

    def __init__(self, scheduler: str | None, workers: int | None):
        self.scheduler, self.workers = scheduler, workers
        self._opened = None
        self._client = None
        self._depth = 0

    def get(self):
        if self._client is None:
            from core import cluster

            self._opened = cluster.client_for(self.scheduler, self.workers)
            self._client = self._opened.__enter__()
        return self._client

    def __enter__(self):
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._opened is not None and self._depth == 0:
            opened, self._opened, self._client = self._opened, None, None
            opened.__exit__(*exc)
        return False


def _done(timings: dict, what: str) -> dict:
    log("done in " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; {what}")
    return timings
