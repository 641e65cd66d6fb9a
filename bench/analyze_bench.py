"""Policy speed: numba kernels vs the plain numpy references, on a real dump.

    python bench/analyze_bench.py [--store bench/out/smollm2_4k_keys_kvzip.zarr]

Without --store it first dumps SmolLM2 at 4k tokens, 5 depths x 2 samples, with the post-RoPE keys,
value norms and query moments (`--store stats,keys,queries`: knorm, keydiff, expected_attention) and KVzip's
scores (`--kvzip`); resumable, and the documents finished so far are what it times. Prints per policy (every
registered one) the time of both paths over every document-layer at 3 sparsities, then the wall time
of the whole analysis with 1 and 2 local workers, and last `analyze_speedup R` (target >= 5). A policy
with a budget allocation (pyramidkv, adakv, duo) is timed with its allocation, document by document.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from analyze import engine, keptsets, policies
from analyze.budgets import UNIFORM
from analyze.policies import budget, keep
from core import runstore
from core.cluster import client_for

SPARSITIES = (0.9, 0.95, 0.99)


def ensure_store(path: str) -> str:
    if not os.path.exists(path):
        from dump.run import DumpOptions, run_dump

        print(f"dumping {path} (SmolLM2, 4k tokens, 5 depths x 2 samples)...")
        s = run_dump(
            DumpOptions(
                out=path,
                lengths=[4096],
                depths=[0.1, 0.3, 0.5, 0.7, 0.9],
                samples=2,
                store="stats,keys,queries,kvzip",
            )
        )
        print(s.line())
    return path


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--store", default="bench/out/smollm2_4k_keys_kvzip.zarr")
    p.add_argument(
        "--layers", type=int, default=0, help="time only the first L layers per document (0 = all)"
    )
    args = p.parse_args()
    store = ensure_store(args.store)
    plan = runstore.plan_store(store)
    tasks = [(*doc, layer) for doc in engine.documents_of(plan) for layer in range(plan.layers)]
    if args.layers:
        tasks = [t for t in tasks if t[3] < args.layers]
    docs = [
        runstore.load_doclayer(store, n, int(d), int(s), int(layer), plan.kv_heads, 0, runstore.READABLE)[0]
        for n, d, s, layer in tasks
    ]
    print(f"{len(docs)} document-layers, N = {docs[0].n}, heads = {docs[0].heads}, sparsities {SPARSITIES}")
    for x in docs:  # kv-group means are computed once per document-layer and shared: not a policy's cost
        x.group_mean()
    totals = {"numba": 0.0, "numpy": 0.0}
    by_doc: dict = {}
    for (n, d, s, layer), x in zip(tasks, docs):
        by_doc.setdefault((n, int(d), int(s)), {})[int(layer)] = x
    for name in policies.ALL_POLICIES:
        policy = policies.parse_policy(name)
        times = {}
        for path, ref in (("numba", False), ("numpy", True)):
            keep(policy, docs[0], budget(0.9, docs[0].n), reference=ref)  # compile / warm
            t = time.perf_counter()
            if policy.allocation is UNIFORM:
                for x in docs:
                    for sp in SPARSITIES:
                        keep(policy, x, budget(sp, x.n), reference=ref)
            else:  # the allocation over the document's layers, then each layer's kept sets
                for (n, d, s), layers in by_doc.items():
                    doc = keptsets.document_of(plan, n, layers.__getitem__, (d, s))
                    doc.prunable = tuple(layers)
                    for layer, x in layers.items():
                        for _ in keptsets.iter_kept(x, [policy], SPARSITIES, "kv", ref, doc, layer):
                            pass
            times[path] = time.perf_counter() - t
            totals[path] += times[path]
        print(
            f"{name:<11} numba {times['numba']:8.3f} s   numpy {times['numpy']:8.3f} s   "
            f"x{times['numpy'] / times['numba']:6.1f}"
        )
    spec = engine.Spec(tuple(policies.parse_policy(m) for m in policies.ALL_POLICIES), SPARSITIES)
    for workers in (1, 2):
        with client_for(workers=workers, verbose=False) as client:
            client.run(lambda: __import__("analyze.engine"))  # start-up is not analysis
            t = time.perf_counter()
            engine.run(store, spec, client, progress=False)
            print(f"whole analysis, {workers} local worker(s): {time.perf_counter() - t:.2f} s")
    print(f"analyze_speedup {totals['numpy'] / totals['numba']:.2f}")
    np.seterr(all="ignore")


if __name__ == "__main__":
    from stamp import stamp

    stamp()
    main()
