"""Summarize a real-weight RESULTS.zarr (with --answers) into a JSON and the README's markdown tables.

    python bench/real_results.py runs/gemma3_gpu/results.zarr --json bench/results/gemma3_gpu.json

Per length: the full-cache accuracy (the dump's `retrieved`), and per policy x sparsity the answer
accuracy under the pruned cache (the ground truth), the same among documents the full cache answers,
and the proxy needle_hit on the retrieval heads; the calibration of the proxy rules is recomputed
from the stored variables (analyze.calibration), so it always follows the current rule.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import xarray as xr

from analyze import calibration
from core import schema


def summarize(path: str) -> dict:
    ds = xr.open_zarr(path).load()
    lengths = [int(n) for n in ds.length.values]
    done = ds.done.astype(bool)
    out = {
        "results": path,
        "model": ds.attrs.get("model"),
        "lengths": lengths,
        "documents": {n: int(done.sel(length=n).sum()) for n in lengths},
        "full_cache_accuracy": {n: float(ds.retrieved.where(done).sel(length=n).mean()) for n in lengths},
        "full_answer_agrees_with_dump": ds.attrs.get("full_answer_agrees_with_dump"),
        "retrieval_heads": [
            [int(layer), int(head)]
            for layer, head in zip(*np.nonzero(ds.retrieval_head.transpose("layer", "head").values))
        ],
        "policies": {},
    }
    acc = ds.answer.where(done).mean(["depth", "sample"])
    given = ds.answer.where(done & ds.retrieved.astype(bool)).mean(["depth", "sample"])
    hit = ds.needle_hit_heads.sel(subset="retrieval").where(done).mean(["depth", "sample"])
    for p in ds[schema.POLICY].values:
        out["policies"][str(p)] = {
            f"{float(s):g}": {
                n: {
                    "answer": float(acc.sel({schema.POLICY: p, "sparsity": s, "length": n})),
                    "answer_given_full": float(given.sel({schema.POLICY: p, "sparsity": s, "length": n})),
                    "needle_hit_retrieval": float(hit.sel({schema.POLICY: p, "sparsity": s, "length": n})),
                }
                for n in lengths
            }
            for s in ds.sparsity.values
        }
    table, attrs = calibration.calibrate(ds)
    out["calibration"] = {
        str(rule): {str(st): float(table.sel(rule=rule, stat=st)) for st in table.stat.values}
        for rule in table.rule.values
    }
    out["calibration_best_rule"] = attrs["best_rule"]
    return json.loads(json.dumps(out, default=str).replace("NaN", "null"))


def rewrite_calibration(path: str) -> None:
    from core.outputs import write_dataset

    ds = xr.open_zarr(path).load()
    table, attrs = calibration.calibrate(ds)
    ds["calibration"] = table
    ds["calibration"].attrs.update(attrs)
    ds.attrs["calibration_best_rule"] = attrs["best_rule"]
    write_dataset(ds, path)


def markdown(summary: dict, sparsity: str) -> str:
    n = summary["lengths"]
    head = "| policy | " + " | ".join(f"{x // 1024}k" for x in n) + " |"
    rows = [head, "|---|" + "---|" * len(n)]
    full = summary["full_cache_accuracy"]
    rows.append("| *full cache (dump)* | " + " | ".join(f"{full[str(x)]:.2f}" for x in n) + " |")
    for p, by in summary["policies"].items():
        cells = []
        for x in n:
            c = by[sparsity][str(x)]
            a, h = c["answer"], c["needle_hit_retrieval"]
            cells.append(f"{a:.2f} ({h:.2f})" if a is not None and h is not None else "-")
        rows.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results")
    p.add_argument("--json", default=None)
    p.add_argument("--sparsity", default="0.9", help="sparsity of the printed table")
    p.add_argument(
        "--rewrite",
        action="store_true",
        help="also store the recomputed calibration in the RESULTS (results made before a rule fix)",
    )
    args = p.parse_args()
    summary = summarize(args.results)
    if args.rewrite:
        rewrite_calibration(args.results)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1))
    print(f"{summary['model']}: documents per length {summary['documents']}")
    print(f"answer at sparsity {args.sparsity} (proxy needle_hit on retrieval heads):")
    print(markdown(summary, args.sparsity))
    print("calibration (held-out pruned cells of documents the full cache answers):")

    def f(v):
        return "  -  " if v is None else f"{v:.3f}"

    for rule, st in summary["calibration"].items():
        print(
            f"  {rule:<40} agree {f(st['agreement'])} prec {f(st['precision'])} "
            f"recall {f(st['recall'])} AUROC {f(st['auroc'])} cells {st['cells']:.0f}"
        )
    print(f"best rule: {summary['calibration_best_rule']}")


if __name__ == "__main__":
    main()
