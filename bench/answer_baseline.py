"""The full-cache baseline without statistics: the model's own greedy answer to each document of a grid,
its attention the model's own (sdpa), nothing captured or stored.

    python bench/answer_baseline.py --model qwen2.5-coder-1.5b --tasks niah_single_1,passkey \\
        --lengths 64k,128k --rope-scaling yarn:4 [--depths 0.1,0.3,0.5,0.7,0.9] [--samples 2] \\
        [--device cuda] [--workers 12] [--json OUT] [--check TASK=RUN.zarr ...]

The documents are the dump's (`core.tasks.document` with the dump's defaults: seed 0, RULER's filler),
scored by the task's own rule as the dump scores `retrieved` (RULER's string_match_all equal to 1).
At long lengths this costs one plain prefill and a few decoding steps per document, a fraction of a
dump. `--check` compares, on the documents of the given dump stores, every answer token with the
dump's own (`answer_ids`), so that the two baselines are known to be one. Prints the table of
`bench/baseline_table.py` and the seconds per document (the model's prefill and decode; the documents
are built ahead in `--workers` processes, a 128k document taking about 4 s of one core).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import runstore, tasks  # noqa: E402
from core.lm import decode, models  # noqa: E402
from core.tasks.haystack import parse_lengths  # noqa: E402


def answer(lm, doc, task, device) -> tuple[list[int], bool]:
    """The model's greedy answer (the dump's count of tokens) and whether the task's rule scores it 1."""
    ids = torch.as_tensor(doc.input_ids, dtype=torch.long, device=device)[None]
    with torch.no_grad():
        logits, cache = decode.prefill(lm.model, ids)
        first = logits.argmax(-1)
        rest = decode.greedy(lm.model, cache, first, ids.shape[1], task.answer_tokens - 1)
    got = [int(first[0])] + rest[0].tolist()
    return got, task.score(lm.tokenizer.decode(got), doc) == 1.0


_tokenizer = None


def _start_builder(model: str) -> None:
    global _tokenizer
    _tokenizer = models.load_tokenizer(model)


def _build(item: tuple) -> tasks.Document:
    spec, n, depth, d, s = item
    return tasks.document(_tokenizer, spec, 0, "ruler", n, depth, d, s)


def documents(model: str, items: list[tuple], workers: int):
    """The documents of `items` (spec, length, depth, depth index, sample), in order, built ahead of
    their use by `workers` processes (in this one when `workers` is 0)."""
    if workers <= 0:
        _start_builder(model)
        yield from map(_build, items)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, initializer=_start_builder, initargs=(model,)) as pool:
        futures = [pool.submit(_build, item) for item in items]
        for f in futures:
            yield f.result()


def spec_of(task: str) -> str:
    return f"ruler:{task}" if task.startswith("niah_") else task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b")
    p.add_argument("--tasks", default="niah_single_1")
    p.add_argument("--lengths", default="4k")
    p.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9")
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--rope-scaling", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU (the dump's)")
    p.add_argument("--at-least", type=float, default=0.9)
    p.add_argument(
        "--workers", type=int, default=4, help="processes building the documents ahead (0: build in line)"
    )
    p.add_argument("--json")
    p.add_argument(
        "--check", nargs="*", default=[], help="TASK=RUN.zarr: compare with the dump's own answers"
    )
    args = p.parse_args()
    from stamp import line

    print(line(), flush=True)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    lm = models.load(args.model, models.DTYPES[dtype], args.device, "sdpa", args.rope_scaling)
    print(
        f"model {args.model}  dtype {dtype}  rope scaling {args.rope_scaling or 'none'}  device {args.device}"
    )
    depths = [float(x) for x in args.depths.split(",")]
    cells, seconds = {}, {}
    same = total = 0

    def save() -> None:  # after every cell: a run cut short keeps what it measured
        if not args.json:
            return
        with open(args.json, "w") as f:
            json.dump(
                {
                    "provenance": line(),
                    "model": args.model,
                    "dtype": dtype,
                    "rope_scaling": args.rope_scaling,
                    "check": [same, total],
                    "cells": {f"{t}@{n}": list(v) for (t, n), v in cells.items()},
                    "seconds_per_document": {f"{t}@{n}": v for (t, n), v in seconds.items()},
                },
                f,
                indent=1,
            )

    for item in args.check:  # the dump's own documents and answers
        name, path = item.split("=", 1)
        plan = runstore.plan_store(path)
        st = plan.attrs["settings"]
        task = tasks.get(st["task"])
        for n in plan.lengths:
            g = runstore._open(path)[f"len_{n}"]
            for d, depth in enumerate(st["depths"]):
                for s in range(int(st["samples"])):
                    if not plan.done[n][d, s]:
                        continue
                    doc = tasks.document(
                        lm.tokenizer, st["task"], int(st["seed"]), st["filler"], n, float(depth), d, s
                    )
                    got, hit = answer(lm, doc, task, args.device)
                    want = [int(t) for t in np.asarray(g["answer_ids"][d, s]) if t >= 0]
                    same += got[: len(want)] == want and hit == bool(plan.retrieved[n][d, s])
                    total += 1
        print(f"check {name}: {same} of {total} documents with the dump's answer ids and verdict", flush=True)
    grid = [(name, n) for name in args.tasks.split(",") for n in parse_lengths(args.lengths)]
    items = [
        (spec_of(name), n, depth, d, s)
        for name, n in grid
        for d, depth in enumerate(depths)
        for s in range(args.samples)
    ]
    built = documents(args.model, items, args.workers)
    for name, n in grid:
        spec = spec_of(name)
        task = tasks.get(spec)
        hits, times = 0, []
        for _ in range(len(depths) * args.samples):
            doc = next(built)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            _, hit = answer(lm, doc, task, args.device)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            hits += hit
        cells[name, n] = (hits, len(times))
        seconds[name, n] = float(np.mean(times))
        print(f"{name} {n}: {hits}/{len(times)} answered, {seconds[name, n]:.2f} s per document", flush=True)
        save()
    lengths = sorted({n for _, n in cells})
    print(f"{'task':<18}" + "".join(f"{f'{n // 1024}k' if n % 1024 == 0 else n:>10}" for n in lengths))
    rankable = []
    for name in dict.fromkeys(t for t, _ in cells):
        row = f"{name:<18}"
        for n in lengths:
            a, b = cells.get((name, n), (0, 0))
            ok = b and a / b >= args.at_least
            row += f"{f'{a}/{b}' + ('*' if ok else ' ') if b else '–':>10}"
            if ok:
                rankable.append(f"{name}@{n}")
        print(row)
    print(
        f"* the full cache answers at least {args.at_least:g} of the documents: {len(rankable)} of {len(cells)} cells rankable"
    )
    save()


if __name__ == "__main__":
    main()
