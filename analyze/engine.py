"""Orchestration: map every policy × sparsity over the document-layers of a RUN.zarr, on Dask, into RESULTS.

One task = one (length, depth, sample, layer): it reads that chunk of the store itself (so no
process ever holds a whole store), keeps masks only in memory, and returns small metric arrays.
"""

from __future__ import annotations

import dataclasses
import datetime
import warnings

import xarray as xr

from analyze.assembly import PER_SETTING_ATTRS, assemble, fill_of, put_summary, summarize, summarize_answers  # noqa: F401
from analyze.jobs import ANSWER_TOKENS, AnswerJob, LayerJob, answer_jobs, documents_of, jobs_of  # noqa: F401
from analyze.preflight import (  # noqa: F401
    check_blocks,
    check_budgets,
    check_folds,
    check_keys,
    check_rows,
    check_setting,
    preflight,
)
from analyze.scoring import analyze_doclayer, answer_job, run_job, skipped_doclayer  # noqa: F401
from analyze.spec import RETRIEVAL_HEADS, Spec, defined_in, provenance, setting_names, spec_from  # noqa: F401
from core import schema
from core.errors import UsageError
from core.provenance import source_path
from core.runstore import StorePlan, plan_store


def run(path: str, spec: Spec, client, progress: bool = True, retrieval_heads: int = RETRIEVAL_HEADS):
    """Analyze a store with a Dask client in every setting of `spec`; returns (Dataset with a
    `setting` dimension, number of unfinished documents). A policy that reads the answer position's
    row (`Policy.reads_answer_row`: the oracle) is NaN in a setting whose policies see the context
    alone."""
    import pandas as pd

    names = setting_names(spec)
    spec = preflight(path, spec, plan_store(path))  # every setting checked before any work
    heads = plan_store(path)
    if retrieval_heads > heads.layers * heads.heads:
        raise UsageError(
            f"--retrieval-heads {retrieval_heads} is more than the model's {heads.layers * heads.heads} heads "
            f"({heads.layers} layers x {heads.heads}): give at most {heads.layers * heads.heads}"
        )
    made_from = provenance(path, spec, retrieval_heads)  # before any work: what the results will be of
    parts, by_setting, unfinished = [], {}, 0
    subs = [
        dataclasses.replace(spec, setting=name, settings=(name,), policies=defined_in(spec.policies, name))
        for name in names
    ]
    sent = [_submit(path, sub, client) for sub in subs]  # every setting queued: no idle tail between them
    for name, sub, queued in zip(names, subs, sent):
        ds, unfinished = _run_setting(path, sub, client, progress, retrieval_heads, queued)
        ds = ds.reindex(
            {
                schema.POLICY: list(spec.labels),
                "pair": [f"{a}|{b}" for a, b in spec.pairs],
                "variant": spec.curvature_variants,
            },
            fill_value={v: fill_of(ds[v]) for v in ds.data_vars},
        )
        by_setting[name] = {k: ds.attrs.pop(k) for k in PER_SETTING_ATTRS if k in ds.attrs}
        if "calibration" in ds:
            by_setting[name]["calibration_attrs"] = dict(ds.calibration.attrs)
        parts.append(ds)
    varying = [v for v in parts[0].data_vars if v not in schema.SETTING_FREE]
    out = xr.concat(
        parts,
        dim=pd.Index(list(names), name=schema.SETTING),
        data_vars=varying,
        coords="minimal",
        compat="override",
        combine_attrs="override",
    )
    for v in schema.SETTING_FREE:  # keep their attributes (the retrieval-head rule)
        if v in parts[0]:
            out[v] = parts[0][v]
    out.attrs.pop("setting", None)
    out.attrs.update(
        {
            "settings": list(names),
            "by_setting": by_setting,
            "provenance": made_from,
            "budget_warnings": sorted({w for b in by_setting.values() for w in b.get("budget_warnings", [])}),
            "budget_rule": "k = round((1 - sparsity) * N) keys per head of every prunable layer (aware); agnostic: "
            "k = round((1 - sparsity) * C) of the C context keys, the question's tokens kept on top",
        }
    )
    return out, unfinished


def model_by_length(plan: StorePlan) -> dict:
    """What each length was read with (the weights' revision, dtype and RoPE scaling, e.g. YaRN past
    the trained positions), from the RUN store: kept in RESULTS, as a study by length removes its RUN
    stores."""
    model = plan.attrs.get("model", {})
    read_with = {key: model.get(key) for key in ("source", "revision", "dtype", "rope_scaling")}
    return {str(n): read_with for n in plan.lengths}


def _submit(path: str, spec: Spec, client) -> tuple:
    """One setting's jobs handed to the cluster: (its plan, jobs, futures)."""
    plan = plan_store(path)  # its own: a corrupt document is marked unfinished in it
    jobs = jobs_of(plan, spec)
    futures = client.map(
        run_job, [path] * len(jobs), [plan] * len(jobs), [spec] * len(jobs), jobs, pure=False
    )
    return plan, jobs, futures


def _run_setting(
    path: str,
    spec: Spec,
    client,
    progress: bool = True,
    retrieval_heads: int = RETRIEVAL_HEADS,
    queued: tuple | None = None,
):
    """Analyze a store with a Dask client in one setting (`spec.setting`), its spec checked by `run`
    (`queued`: its jobs already submitted, `_submit`)."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    plan, jobs, futures = queued or _submit(path, spec, client)
    unfinished = plan.unfinished
    index = {f.key: job for f, job in zip(futures, jobs)}
    results, answers, corrupt = {}, {}, {}
    spent = {"layers": 0.0, "answers": 0.0}  # answer tasks' seconds, summed over workers
    with tqdm(total=len(jobs), desc="analyze", unit="task", disable=not progress) as bar:
        for fut in as_completed(futures):
            job, r = index[fut.key], fut.result()
            if isinstance(job, AnswerJob):
                for doc, a in r["by_document"].items():
                    if "corrupt" in a:
                        corrupt.setdefault(doc, a["corrupt"])
                    else:
                        answers[doc] = a
                results.update({tuple(layer): arrays for layer, arrays in r["layers"].items()})
                for part, t in r.get("seconds", {}).items():
                    spent[part] = spent.get(part, 0.0) + t
            elif "corrupt" in r:
                corrupt.setdefault(job.document, r["corrupt"])
            else:
                results[tuple(job)] = r
            bar.update(1)
    for doc in corrupt:  # a document is scored whole or not at all
        n, d, s = doc
        plan.done[n][d, s] = False
        results = {t: r for t, r in results.items() if t[:3] != doc}
        answers.pop(doc, None)
    if corrupt and not results:
        raise UsageError(f"every finished document of {path!r} has a missing or corrupt chunk")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices for unfinished documents
        ds = assemble(plan, spec, results, retrieval_heads, answers if spec.answers else None)
    ds.attrs.update(
        {
            schema.KIND_ATTR: schema.RESULTS_KIND,
            "schema_version": schema.RESULTS_VERSION,
            "source_store": source_path(path),
            "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
            "model": str(plan.attrs.get("model", {}).get("name", "")),
            "model_by_length": model_by_length(plan),
            "gqa": spec.gqa,
            "seed": spec.seed,
            "setting": spec.setting,
            "budget_rule": "k = round((1 - sparsity) * N) keys per head of every prunable layer",
            "prunable_rule": "a sliding-window layer whose window W is shorter than the prompt is not pruned "
            "(its cache stays whole, its metrics are NaN, it is left out of head means and retrieval heads)",
            "policies": list(spec.labels),
            "unfinished_documents": unfinished,
            "skipped_corrupt": [corrupt[key] for key in sorted(corrupt)],
            "budget_warnings": check_budgets(spec, plan),
        }
    )
    if spec.answers:  # where the answer tasks' time went (scoring layers; kept sets, prefill, decode)
        ds.attrs["answer_task_seconds"] = {part: round(t, 1) for part, t in spent.items()}
    peaks = [r["peak_gpu_bytes"] for r in answers.values() if "peak_gpu_bytes" in r]
    if peaks:  # the largest GPU memory one answer task held (its worker's model included)
        ds.attrs["answer_peak_gpu_gb"] = round(max(peaks) / 1e9, 3)
    return ds, unfinished
