"""What one document costs in a RUN store for a model shape no machine here can dump (e.g. an 8B
model at 128k): the raw bytes of every variable, from the store's schema alone (its dims and dtypes,
`core.schema.run_vars` and `run_sizes`, as `dump` creates the arrays), and a projection of the
stored bytes by each variable's compression ratio measured on a real store.

    python bench/store_bytes_shape.py --shape llama3-8b --length 128k --block 128 --window 32 \
        [--store stats] [--measured RUN.zarr]

Raw bytes are exact (what the arrays hold before compression). The projection is not a measurement:
it applies the ratio stored/raw of each variable in `--measured` (a real model's store, any length)
to the raw bytes of the shape asked for; variables absent there are projected uncompressed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/shapes.py, also when imported

from shapes import SHAPES  # noqa: E402

from core import schema  # noqa: E402
from dump.options import lengths  # noqa: E402


def shape_config(name: str) -> dict:
    """The store's view of a shape (`bench/shapes.py`): layers, query heads, kv heads, head dim."""
    c = SHAPES[name]
    return {
        "layers": c["num_hidden_layers"],
        "heads": c["num_attention_heads"],
        "kv_heads": c["num_key_value_heads"],
        "head_dim": c["head_dim"],
    }


def raw_bytes(cfg: dict, n: int, block: int, window: int, store: str, window_rows: int = 1) -> dict:
    """{variable: raw bytes of one document} for the numeric variables with a document dimension
    (the text ones, e.g. `needle_table`, hold a few bytes of variable length)."""
    parts = schema.store_parts(store)
    sizes = schema.run_sizes(n, 1, 1, cfg, window, block, [], window_rows)
    out = {}
    for var, spec in schema.run_vars(
        False, "kv" in parts, "keys" in parts, "kvzip" in parts, "queries" in parts
    ).items():
        if spec.dims[:2] != ("depth", "sample") or np.dtype(spec.dtype).kind not in "biuf":
            continue
        out[var] = int(np.prod([sizes[d] for d in spec.dims])) * np.dtype(spec.dtype).itemsize
    return out


def measured_ratios(path: str) -> dict:
    """{variable: stored bytes / raw bytes} of a real RUN store (all its lengths)."""
    import zarr

    root = zarr.open_group(path, mode="r")
    stored, raw = {}, {}
    for n in schema.lengths_in(root):
        g = root[schema.group_name(n)]
        for var in g.array_keys():
            a = g[var]
            if a.ndim < 3:
                continue
            stored[var] = stored.get(var, 0) + a.nbytes_stored()
            raw[var] = raw.get(var, 0) + a.nbytes
    return {v: stored[v] / raw[v] for v in stored if raw[v]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    p.add_argument("--length", default="128k")
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--store", default="stats")
    p.add_argument("--measured", help="a real RUN.zarr whose compression ratios project the stored bytes")
    args = p.parse_args()
    n = lengths(args.length)[0]
    raw = raw_bytes(shape_config(args.shape), n, args.block, args.window, args.store)
    ratios = measured_ratios(args.measured) if args.measured else {}
    print(
        f"{args.shape} at {n} tokens, block {args.block}, window {args.window}, store {args.store}: one document"
    )
    print(f"{'variable':<16}{'raw MB':>12}{'ratio':>8}{'projected MB':>14}")
    total_raw = total = 0.0
    for var, b in sorted(raw.items(), key=lambda kv: -kv[1]):
        r = ratios.get(var, 1.0)
        total_raw += b
        total += b * r
        print(f"{var:<16}{b / 1e6:>12.2f}{r:>8.3f}{b * r / 1e6:>14.2f}")
    print(f"{'total':<16}{total_raw / 1e6:>12.2f}{'':>8}{total / 1e6:>14.2f}")
    print(f"raw_mb_per_doc {total_raw / 1e6:.1f}")
    if ratios:
        print(f"projected_mb_per_doc {total / 1e6:.1f}  (ratios of {args.measured}; not a measurement)")


if __name__ == "__main__":
    main()
