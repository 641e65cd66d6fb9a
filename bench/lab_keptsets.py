"""The lab's kept sets of a RUN.zarr as one .npz (what `bench/peer_kvpress.py` compares kvpress's to).

    python bench/lab_keptsets.py RUN.zarr --policies knorm,streaming --sparsity 0.5,0.9 --setting agnostic --out FILE.npz

Keys `LENGTH/DEPTH/SAMPLE/METHOD/SPARSITY`: (layer, kv_head, key) bool, the first query head of each
kv head's group (under --gqa kv a group shares one set), over the prompt (in the agnostic setting
the question's keys, appended after pruning, read kept).
"""

from __future__ import annotations

import argparse

import numpy as np

from analyze import keptsets, policies
from core.runstore import plan_store


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("store")
    p.add_argument("--policies", required=True)
    p.add_argument("--sparsity", required=True)
    p.add_argument("--setting", default="agnostic")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    plan = plan_store(args.store)
    methods = args.policies.split(",")
    sparsities = [float(s) for s in args.sparsity.split(",")]
    pols = [policies.parse_policy(m) for m in methods]
    g = plan.heads // plan.kv_heads
    out = {}
    for n in plan.lengths:
        for d, s in zip(*np.nonzero(plan.done[n])):
            per = {}
            for layer in range(plan.layers):
                ds = keptsets.kept_sets(
                    args.store, n, int(d), int(s), layer, pols, sparsities, setting=args.setting
                )
                for i, m in enumerate(methods):
                    for j, sp in enumerate(sparsities):
                        per.setdefault((m, sp), []).append(ds.kept.values[i, j, ::g])
            for (m, sp), layers in per.items():
                out[f"{n}/{d}/{s}/{m}/{sp:g}"] = np.stack(layers)
    np.savez_compressed(args.out, **out)
    print(f"lab_keptsets: {len(out)} kept-set arrays -> {args.out}")


if __name__ == "__main__":
    from stamp import stamp

    stamp()
    main()
