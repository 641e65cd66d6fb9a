"""The full-cache baseline: how often the model answers with its whole cache, per task and length.

    python bench/baseline_table.py niah_single_1=runs/base/niah_single_1.zarr ... [--at-least 0.9]

Reads each dump store's `retrieved` (the model's greedy answer under full attention, scored by the
task's own rule) and prints answered / built documents per (task, length), the store's model,
dtype and RoPE scaling, and the cells where a study can rank policies: those whose full cache
answers at least `--at-least` of its documents. A policy cannot be ranked where the full cache
itself fails.
"""

from __future__ import annotations

import argparse
import json

from core import runstore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stores", nargs="+", help="TASK=RUN.zarr (one dump store per task)")
    p.add_argument("--at-least", type=float, default=0.9, help="the accuracy a rankable cell needs")
    p.add_argument("--json", help="also write the cells here")
    args = p.parse_args()
    cells, lengths, meta = {}, set(), set()
    for item in args.stores:
        task, path = item.split("=", 1)
        plan = runstore.plan_store(path)
        m = plan.attrs.get("model", {})
        meta.add((m.get("name", "?"), str(m.get("dtype", "?")), str(m.get("rope_scaling") or "none")))
        for n in plan.lengths:
            done = plan.done[n]
            cells[task, n] = (int((plan.retrieved[n] & done).sum()), int(done.sum()))
            lengths.add(n)
    lengths = sorted(lengths)
    tasks = list(dict.fromkeys(t for t, _ in cells))
    for m in sorted(meta):
        print(f"model {m[0]}  dtype {m[1]}  rope scaling {m[2]}")
    head = f"{'task':<18}" + "".join(f"{f'{n // 1024}k' if n % 1024 == 0 else n:>10}" for n in lengths)
    print(head)
    rankable = []
    for t in tasks:
        row = f"{t:<18}"
        for n in lengths:
            a, b = cells.get((t, n), (0, 0))
            mark = "*" if b and a / b >= args.at_least else " "
            row += f"{f'{a}/{b}{mark}' if b else '–':>10}"
            if b and a / b >= args.at_least:
                rankable.append(f"{t}@{n}")
        print(row)
    print(
        f"* the full cache answers at least {args.at_least:g} of the documents: {len(rankable)} of {len(cells)} cells rankable"
    )
    if args.json:
        with open(args.json, "w") as f:
            from stamp import line

            cells_out = {f"{t}@{n}": list(v) for (t, n), v in cells.items()}
            json.dump({"provenance": line(), **cells_out}, f, indent=1)


if __name__ == "__main__":
    from stamp import stamp

    stamp()
    main()
