"""Every policy × sparsity × setting of one RESULTS.zarr: the model's answer and the needle proxy.

    python bench/policy_table.py runs/p17/smollm2.results.zarr

Prints, for each setting, per policy and sparsity: the answer accuracy (mean of `answer` over the
documents: the ground truth) and `needle_hit` on the retrieval heads (mean over documents of the
fraction of retrieval heads keeping a target token: a proxy); then the agnostic ranking at each
sparsity against kvpress's RULER-4k leaderboard order (KVzip > Ada-KV / Expected Attention >
KeyDiff > TOVA > SnapKV > KNorm); then the mean Jaccard of each compared pair (kept sets of a new
policy against h2o and snapkv, over every layer, head and document) and the curvature-vs-block-mass
Spearman of every CAB variant.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from core import schema

LEADERBOARD = ["kvzip", "adakv", "expected_attention", "keydiff", "tova", "snapkv", "knorm"]


def per_policy(ds, var: str) -> pd.DataFrame:
    """(policy) x (sparsity setting) means over the documents."""
    cols = {}
    for setting in map(str, ds[schema.SETTING].values):
        one = schema.in_setting(ds, setting)
        for sp in ds.sparsity.values:
            values = one[var].sel(sparsity=sp)
            if schema.SUBSET_DIM in values.dims:
                values = values.sel({schema.SUBSET_DIM: "retrieval"})
            cols[f"{sp:g} {setting}"] = values.mean(["length", "depth", "sample"]).to_pandas()
    return pd.DataFrame(cols)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("results")
    args = p.parse_args()
    ds = schema.open_results(args.results).load()
    docs = int(ds.done.sum())
    print(
        f"{args.results}: model {ds.attrs.get('model')}, lengths {list(ds.length.values)}, {docs} documents, "
        f"full-cache accuracy {float(ds.retrieved.where(ds.done).mean()):.2f}"
    )
    fmt = {"float_format": lambda v: f"{v:.2f}", "na_rep": "n/a"}
    answer = per_policy(ds, "answer")
    print("\nanswer accuracy (the model's answer under the pruned cache; mean over documents)")
    print(answer.to_string(**fmt))
    print("\nneedle_hit on the retrieval heads (proxy; mean over documents)")
    print(per_policy(ds, schema.heads_name("needle_hit")).to_string(**fmt))
    print("\nagnostic ranking by answer accuracy vs kvpress's leaderboard order " + " > ".join(LEADERBOARD))
    for sp in ds.sparsity.values:
        col = answer[f"{sp:g} agnostic"] if f"{sp:g} agnostic" in answer else None
        if col is None:
            continue
        here = col.reindex([m for m in LEADERBOARD if m in col.index]).dropna()
        order = here.sort_values(ascending=False, kind="stable")
        print(f"  {sp:g}: " + " > ".join(f"{k} {v:.2f}" for k, v in order.items()))
        inversions = [
            (a, b)
            for i, a in enumerate(here.index)
            for b in here.index[i + 1 :]
            if here[a] < here[b]  # the leaderboard ranks a above b; here b answers more
        ]
        print(
            "     pairs ranked against the leaderboard: "
            + (", ".join(f"{b} > {a}" for a, b in inversions) or "none")
        )
    if "jaccard" in ds and ds.sizes.get("pair"):
        print("\nJaccard of kept sets (mean over layers, heads, documents)")
        jac = ds.jaccard.mean(["length", "depth", "sample", "layer", "head"])
        table = {
            f"{sp:g} {st}": jac.sel({schema.SETTING: st, "sparsity": sp}).to_pandas()
            for st in map(str, ds[schema.SETTING].values)
            for sp in ds.sparsity.values
        }
        print(pd.DataFrame(table).to_string(**fmt))
    if "curvature_mass_spearman" in ds and ds.sizes.get("variant"):
        print("\ncurvature vs block-mass Spearman (mean over layers, heads, documents; aware)")
        rho = schema.in_setting(ds, "aware").curvature_mass_spearman
        for v in ds.variant.values:
            r = rho.sel(variant=v).values
            print(f"  {v}: {np.nanmean(r):+.3f} (median {np.nanmedian(r):+.3f})")


if __name__ == "__main__":
    main()
