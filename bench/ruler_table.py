"""The answer-accuracy table of a task × setting sweep: one RESULTS.zarr per task.

    python bench/ruler_table.py --sparsity 0.9 passkey=runs/a.results.zarr multikey:3=runs/b.results.zarr ...

Prints, per policy, the answer accuracy (the mean of `answer`, RULER's string_match_all for its
tasks) at the sparsity, one column per task and setting, then the documents per cell and the
full cache's own accuracy (`retrieved`), then each column's policy ranking (best first; `full`
and the `oracle` ceiling left out). A config with `tasks:` writes the same table into its folder
(`python -m pipelines run configs/ruler.yaml`).
"""

from __future__ import annotations

import argparse

from core import schema
from viz import tasks


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("results", nargs="+", help="TASK=RESULTS.zarr")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--metric", default="answer")
    args = p.parse_args()
    results = {}
    for item in args.results:
        task, path = item.split("=", 1)
        results[task] = schema.open_results(path).load()
    print(tasks.render(tasks.answer_table(results, args.sparsity, args.metric), args.sparsity, args.metric))


if __name__ == "__main__":
    main()
