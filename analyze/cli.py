"""`python -m analyze RUN.zarr`: every pruning policy × sparsity, offline, on Dask -> RESULTS.zarr."""

from __future__ import annotations

import sys

from analyze.options import AnalyzeOptions
from core import optionkit, outputs, schema
from core.errors import OneLineParser, UsageError, run_main


def build_parser():
    p = OneLineParser(
        prog="python -m analyze",
        description="Apply KV-cache pruning policies offline to a RUN.zarr from `python -m dump` and score "
        "whether each keeps the needle, per policy, sparsity, length, depth, sample, layer and head.",
    )
    optionkit.add_arguments(p, AnalyzeOptions)
    return p


def default_out(store: str) -> str:
    base = store.rstrip("/")
    return (base[: -len(".zarr")] if base.endswith(".zarr") else base) + ".results.zarr"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_main("python -m analyze", lambda: _main(args))


def _main(args) -> int:
    opt = optionkit.from_args(AnalyzeOptions, args)
    from analyze import policies

    if opt.list_policies:
        print("\n".join(policies.describe()))
        return 0
    if not opt.store:
        raise UsageError("give the RUN.zarr to analyze (python -m analyze RUN.zarr), or --list-policies")
    out = opt.out or default_out(opt.store)
    outputs.check_output(out, schema.RESULTS_KIND, inputs=(opt.store,))
    outputs.check_writable(out)
    from analyze import engine
    from core import cluster, runstore

    plan = runstore.plan_store(opt.store)
    spec = engine.spec_from(opt)
    engine.preflight(opt.store, spec, plan)  # engine.run checks again; here before the cluster starts
    if plan.unfinished:
        print(
            f"analyze: warning: {plan.unfinished} unfinished documents in {opt.store} are skipped",
            file=sys.stderr,
        )
    with cluster.client_for(opt.scheduler, opt.workers) as client:
        ds, _ = engine.run(
            opt.store, spec, client, progress=opt.progress, retrieval_heads=opt.retrieval_heads
        )
    for line in ds.attrs.get("budget_warnings", []):
        print(f"analyze: warning: {line}", file=sys.stderr)
    skipped = ds.attrs.get("skipped_corrupt", [])
    if skipped:
        print(
            f"analyze: warning: skipped {len(skipped)} corrupt document(s): " + "; ".join(skipped),
            file=sys.stderr,
        )
    outputs.write_dataset(ds, out)
    print(
        f"analyze: {ds.sizes[schema.POLICY]} policies x {len(ds.sparsity)} sparsities x "
        f"{ds.sizes[schema.SETTING]} setting(s) over {int(ds.done.sum())} documents -> {out}"
    )
    for setting in ds[schema.SETTING].values:
        one = schema.in_setting(ds, str(setting))
        print(f" setting {setting}:")
        hit = one.needle_hit_mean.sel(subset="all").mean(["length", "depth"])
        for s in one.sparsity.values:
            row = ", ".join(
                f"{m}={float(hit.sel({schema.POLICY: m, 'sparsity': s})):.2f}"
                for m in one[schema.POLICY].values
            )
            print(f"  needle_hit (all heads) @ sparsity {s:g}: {row}")
        if "answer" in one:
            print_answers(one)
    return 0


def print_answers(ds) -> None:
    from analyze import calibration

    acc = ds.answer.mean(["length", "depth", "sample"])
    full = float(ds.retrieved.where(ds.done).mean())
    print(f"  the model answers {full:.2f} of the documents with its full cache (retrieved)")
    for s in ds.sparsity.values:
        row = ", ".join(
            f"{m}={float(acc.sel({schema.POLICY: m, 'sparsity': s})):.2f}" for m in ds[schema.POLICY].values
        )
        print(f"  answer accuracy @ sparsity {s:g}: {row}")
    print("  calibration of the proxy against the answer (documents the full cache answers, pruned cells):")
    attrs = dict(ds.calibration.attrs)
    attrs["best_rule"] = ds.attrs.get("calibration_best_rule", "")
    for line in calibration.lines(ds.calibration, attrs):
        print("    " + line)
