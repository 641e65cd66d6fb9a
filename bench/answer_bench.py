"""The answer pass against the dump, on the CPU: same documents, same process, same threads.

    python bench/answer_bench.py [--lengths 512,1k,2k] [--depths 0.3,0.7] [--samples 1]
                                 [--policies M,...] [--sparsity 0.5,0.9,0.95] [--setting aware]
                                 [--profile FILE]

Dumps the documents twice with `dump.run_dump` (the model loaded before the clocks start): with
`--store stats` (the baseline: the answer pass prefills every prompt again) and with
`--store stats,kv` (the dump's forward also stores the prompt's keys and values, and the answer pass
reads them instead of a prefill). After each dump it runs the answer pass of `analyze --answers` on
each document in turn (`analyze.answers.answer_document`, the function each Dask answer task runs),
with the demo's policies and sparsities by default. Prints the times, the seconds per document,
how many answers are identical on the two stores, the stores' sizes, `kv_dump_overhead` (dump with
the cache / dump without), `answer_overhead_ratio_prefill` (the baseline) and last
`answer_overhead_ratio R`: answer-pass seconds / dump seconds, both with `--store stats,kv`
(target <= 0.5).

--profile FILE writes the cProfile (top 25 by own time) of one more answer pass on each store to FILE
(the timed passes run without the profiler).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DEMO_POLICIES = "full,oracle,random,streaming,h2o,snapkv,tova,cab,cab_high,cab_hybrid,cab_3c"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", default="512,1k,2k")
    p.add_argument("--depths", default="0.3,0.7")
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--policies", default=DEMO_POLICIES)
    p.add_argument("--sparsity", default="0.5,0.9,0.95")
    p.add_argument("--setting", default="aware", help="aware or agnostic: where the answer pass prunes")
    p.add_argument("--profile", default=None, help="write both answer passes' cProfile (top 25) here")
    args = p.parse_args()

    from analyze import engine, policies
    from core.lm import capture, models, pruned
    from dump.options import depths, lengths

    print(f"torch threads: {torch.get_num_threads()}")
    models.resolve(models.DEFAULT_MODEL)  # convert once (not timed)
    models.load(models.DEFAULT_MODEL, attn_implementation=capture.NAME)  # both loads before the clocks
    models.load(models.DEFAULT_MODEL, attn_implementation=pruned.NAME)
    spec = engine.Spec(
        tuple(policies.parse_policy(m) for m in args.policies.split(",")),
        tuple(float(x) for x in args.sparsity.split(",")),
        answers=True,
        setting=args.setting,
    )
    dump_kw = dict(lengths=lengths(args.lengths), depths=depths(args.depths), samples=args.samples)
    profiles = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for store_setting in ("stats", "stats,kv"):  # the baseline first: a prefill per document
            store = str(Path(tmp) / f"{store_setting.replace(',', '_')}.zarr")
            dump_s = timed_dump(store, store_setting, dump_kw)
            answer_s, per_task, out, _ = timed_answers(store, spec, False)
            runs[store_setting] = (dump_s, answer_s, per_task, out, store)
            if args.profile:  # a pass of its own: the timed passes run without the profiler's overhead
                prof = timed_answers(store, spec, True)[3]
                profiles.write(f"=== answer pass, store {store_setting}\n")
                pstats.Stats(prof, stream=profiles).sort_stats("tottime").print_stats(25)
        alone_s, alone_tasks, alone, _ = timed_answers(runs["stats,kv"][4], spec, False, in_step=False)
        pairs = len(spec.policies) * len(spec.sparsities)
        base, kv = runs["stats"], runs["stats,kv"]
        print(
            f"documents: {len(kv[3])}; (policy, sparsity) pairs per document: {pairs}; setting {args.setting}"
        )
        for (docs, sec_b), (_, sec_k) in zip(base[2], kv[2]):
            print(
                f"  answer task, {len(docs)} document(s) of length {docs[0][0]} in step: {sec_b:.2f} s with a prefill, "
                f"{sec_k:.2f} s from the stored cache"
            )
        for docs, sec in alone_tasks:
            print(
                f"  answer task, one document (length {docs[0][0]}, depth {docs[0][1]}): {sec:.2f} s from the stored cache"
            )

        def same_ids(a: dict, b: dict) -> tuple[int, int]:
            cells = [(doc, i, j) for doc in a for i, j in np.ndindex(a[doc]["ids"].shape[:2])]
            same = sum(int(np.array_equal(a[doc]["ids"][i, j], b[doc]["ids"][i, j])) for doc, i, j in cells)
            return same, len(cells)

        same, cells = same_ids(base[3], kv[3])
        print(
            f"answer ids identical, stored cache vs prefill: {same} of {cells} (document, policy, sparsity) cells"
        )
        same, cells = same_ids(alone, kv[3])
        print(f"answer ids identical, documents in step vs one by one: {same} of {cells} cells")
        sizes = {
            k: sum(f.stat().st_size for f in Path(v[4]).rglob("*") if f.is_file()) for k, v in runs.items()
        }
        print(
            f"store size: {sizes['stats'] / 2**20:.1f} MiB (stats), {sizes['stats,kv'] / 2**20:.1f} MiB (stats,kv)"
        )
    print(f"dump seconds: {base[0]:.2f} (--store stats), {kv[0]:.2f} (--store stats,kv)")
    print(f"kv_dump_overhead {kv[0] / base[0]:.3f}")
    print(
        f"answer-pass seconds: {base[1]:.2f} (prefill), {kv[1]:.2f} (stored cache), "
        f"{alone_s:.2f} (stored cache, one document per task)"
    )
    print(f"answer_overhead_ratio_prefill {base[1] / base[0]:.3f}")
    print(f"answer_overhead_ratio_one_by_one {alone_s / kv[0]:.3f}")
    print(
        f"answer_overhead_vs_plain_dump {kv[1] / base[0]:.3f} (stored-cache answer pass / --store stats dump)"
    )
    if args.profile:
        Path(args.profile).write_text(profiles.getvalue())
        print(f"profile: {args.profile}")
    print(f"answer_overhead_ratio {kv[1] / kv[0]:.3f}")


def timed_dump(store: str, store_setting: str, dump_kw: dict) -> float:
    from dump import DumpOptions, run_dump

    opt = DumpOptions(
        out=store, window=16, block=64, device="cpu", progress=False, store=store_setting, **dump_kw
    )
    t = time.perf_counter()
    run_dump(opt)
    return time.perf_counter() - t


def timed_answers(store: str, spec, profile: bool, in_step: bool = True):
    """The answer tasks of `analyze --answers` run in turn (documents of one length decoded in step,
    `engine.answer_jobs`), or with `in_step=False` one document per task (as before)."""
    from analyze import engine
    from analyze.answers import answer_documents

    plan = engine.plan_store(store)
    spec = engine.preflight(store, spec, plan)
    jobs = [j for j in engine.jobs_of(plan, spec) if isinstance(j, engine.AnswerJob)]
    if not in_step:
        jobs = [engine.AnswerJob((doc,)) for job in jobs for doc in job.documents]
    prof = cProfile.Profile() if profile else None
    per_task, outs = [], {}
    t = time.perf_counter()
    for job in jobs:
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        outs.update(answer_documents(store, plan, list(job.documents), spec))
        if prof:
            prof.disable()
        per_task.append((job.documents, time.perf_counter() - t0))
    return time.perf_counter() - t, per_task, outs, prof


if __name__ == "__main__":
    from stamp import stamp

    stamp()
    main()
