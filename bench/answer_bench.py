"""The answer pass against the dump, on the CPU: same documents, same process, same threads.

    python bench/answer_bench.py [--lengths 512,1k,2k] [--depths 0.3,0.7] [--samples 1]
                                 [--methods M,...] [--sparsity 0.5,0.9,0.95] [--profile FILE]

Dumps the documents with `dump.run_dump` (the model loaded before the clock starts), then runs the
answer pass of `analyze --answers` on each of them in turn (`analyze.answers.answer_document`, the
function each Dask answer task runs; the model loaded before the clock starts), with the demo's
policies and sparsities by default. Prints both times, the seconds per document, and last
`answer_overhead_ratio R`: answer-pass seconds / dump seconds (target <= 0.5).

--profile FILE writes the cProfile of the answer pass (top 25 by own time) to FILE.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path

import torch

DEMO_METHODS = "full,oracle,random,streaming,h2o,snapkv,tova,cab,cab_high,cab_hybrid,cab_3c"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", default="512,1k,2k")
    p.add_argument("--depths", default="0.3,0.7")
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--methods", default=DEMO_METHODS)
    p.add_argument("--sparsity", default="0.5,0.9,0.95")
    p.add_argument("--profile", default=None, help="write the answer pass's cProfile (top 25) here")
    args = p.parse_args()

    from analyze import engine, policies
    from analyze.answers import answer_document
    from core.lm import capture, models, pruned
    from dump import DumpOptions, run_dump
    from dump.options import depths, lengths

    print(f"torch threads: {torch.get_num_threads()}")
    models.resolve(models.DEFAULT_MODEL)  # convert once (not timed)
    models.load(models.DEFAULT_MODEL, attn_implementation=capture.NAME)  # both loads before the clocks
    models.load(models.DEFAULT_MODEL, attn_implementation=pruned.NAME)
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "run.zarr")
        opt = DumpOptions(
            out=store, lengths=lengths(args.lengths), depths=depths(args.depths), samples=args.samples,
            window=16, block=64, device="cpu", progress=False,
        )  # fmt: skip
        t = time.perf_counter()
        run_dump(opt)
        dump_s = time.perf_counter() - t

        spec = engine.Spec(
            tuple(policies.parse_method(m) for m in args.methods.split(",")),
            tuple(float(x) for x in args.sparsity.split(",")),
            answers=True,
        )
        plan = engine.plan_store(store)
        spec = engine.preflight(store, spec, plan)
        jobs = [j for j in engine.jobs_of(plan, spec) if isinstance(j, engine.AnswerJob)]
        prof = cProfile.Profile() if args.profile else None
        per_doc = []
        t = time.perf_counter()
        for job in jobs:
            t0 = time.perf_counter()
            if prof:
                prof.enable()
            answer_document(store, plan, job, spec)
            if prof:
                prof.disable()
            per_doc.append((tuple(job), time.perf_counter() - t0))
        answer_s = time.perf_counter() - t

    pairs = len(spec.policies) * len(spec.sparsities)
    print(f"documents: {len(jobs)}; (policy, sparsity) pairs per document: {pairs}")
    for (n, d, s), sec in per_doc:
        print(f"  answer pass, length {n}, depth {d}, sample {s}: {sec:.2f} s")
    print(f"dump seconds: {dump_s:.2f}")
    print(f"answer-pass seconds: {answer_s:.2f}")
    if prof:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
        Path(args.profile).write_text(out.getvalue())
        print(f"profile: {args.profile}")
    print(f"answer_overhead_ratio {answer_s / dump_s:.3f}")


if __name__ == "__main__":
    main()
