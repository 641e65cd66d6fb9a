"""The answer-accuracy table of a task × setting sweep: one RESULTS.zarr per task.

    python bench/ruler_table.py --sparsity 0.9 passkey=runs/a.results.zarr multikey:3=runs/b.results.zarr ...

Prints, per policy, the answer accuracy (the mean of `answer`, RULER's string_match_all for its
tasks) at the sparsity, one column per task and setting, then the documents per cell and the
full cache's own accuracy (`retrieved`), then each column's policy ranking (best first; `full`
and the `oracle` ceiling left out).
"""

from __future__ import annotations

import argparse

import pandas as pd

from core import schema


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("results", nargs="+", help="TASK=RESULTS.zarr")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--metric", default="answer")
    args = p.parse_args()
    cols, docs = {}, {}
    for item in args.results:
        task, path = item.split("=", 1)
        ds = schema.open_results(path).load()
        for setting in map(str, ds[schema.SETTING].values):
            one = schema.in_setting(ds, setting).sel(sparsity=args.sparsity)
            values = one[args.metric]
            if "layer" in values.dims:  # a proxy: its mean over the retrieval heads
                values = one[schema.heads_name(args.metric)].sel({schema.SUBSET_DIM: "retrieval"})
            cols[f"{task} {setting}"] = values.mean(["length", "depth", "sample"]).to_pandas()
            docs[f"{task} {setting}"] = (int(one.done.sum()), float(one.retrieved.where(one.done).mean()))
    table = pd.DataFrame(cols)
    print(f"{args.metric} at sparsity {args.sparsity:g} (mean over documents)")
    print(table.to_string(float_format=lambda v: f"{v:.2f}", na_rep="n/a"))
    print(
        "documents / full-cache accuracy: " + "; ".join(f"{k}: {n} / {a:.2f}" for k, (n, a) in docs.items())
    )
    for col in table:
        order = (
            table[col]
            .drop(["full", "oracle"], errors="ignore")
            .dropna()
            .sort_values(ascending=False, kind="stable")
        )
        print(f"ranking {col}: " + " > ".join(f"{k} {v:.2f}" for k, v in order.items()))


if __name__ == "__main__":
    main()
