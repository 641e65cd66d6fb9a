"""The CPU cost of a document's kept sets when its answers are decoded on a GPU: chosen twice (its
layer tasks for the metrics, then the answer task for the decode: the CPU's task layout) against once
(one answer task that scores every layer and decodes under the same masks: the GPU's layout).

    python bench/keptsets_once_bench.py RUN.zarr [--config configs/leaderboard.yaml] [--repeat 2]

Times, per setting, every document of the store with the config's policies (`duo` left out: it
calibrates on other documents) and sparsities, on one CPU core of this process: twice = every
`LayerJob` + `answers.kept_masks`; once = `scoring.analyze_document`. The decode is the same in both
and not timed. Checks that both give the same arrays and masks, then prints `keptsets_once_speedup`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analyze import answers, engine, policies, scoring  # noqa: E402
from core.runstore import plan_store  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("--config", default="configs/leaderboard.yaml")
    p.add_argument("--repeat", type=int, default=2, help="best of this many runs of each")
    args = p.parse_args()
    cfg = yaml.safe_load(open(args.config))["analyze"]
    names = [m for m in cfg["policies"] if m != "duo"]
    plan = plan_store(args.store)
    docs = engine.documents_of(plan)
    totals = {"twice": 0.0, "once": 0.0}
    for setting in ("aware", "agnostic"):
        pols = engine.defined_in(tuple(policies.parse_policy(m) for m in names), setting)
        spec = engine.Spec(pols, tuple(cfg["sparsity"]), setting=setting, answers=True)
        for doc in docs:
            best = {"twice": np.inf, "once": np.inf}
            for _ in range(args.repeat):
                t = time.perf_counter()
                layers = {
                    job: scoring.run_job(args.store, plan, spec, job)
                    for job in (engine.LayerJob(*doc, layer) for layer in range(plan.layers))
                }
                masks = answers.kept_masks(args.store, plan, doc, spec)
                best["twice"] = min(best["twice"], time.perf_counter() - t)
                t = time.perf_counter()
                once, kept = scoring.analyze_document(args.store, plan, spec, doc)
                best["once"] = min(best["once"], time.perf_counter() - t)
            for job, arrays in layers.items():
                for name, value in arrays.items():
                    np.testing.assert_array_equal(value, once[job][name], err_msg=f"{job} {name}")
            np.testing.assert_array_equal(masks, kept)
            print(
                f"{setting:>8} document {doc}: twice {best['twice']:.2f} s, once {best['once']:.2f} s "
                f"({len(pols)} policies x {len(spec.sparsities)} sparsities x {plan.layers} layers); same arrays and masks"
            )
            for k in totals:
                totals[k] += best[k]
    print(f"total: twice {totals['twice']:.2f} s, once {totals['once']:.2f} s")
    print(f"keptsets_once_speedup {totals['twice'] / totals['once']:.2f}")


if __name__ == "__main__":
    main()
