"""The statistics pass of one attention layer on CUDA, against the layer's own attention in the same run.

    python bench/stats_kernel_bench.py --shape llama3-8b --length 128k [--warps 4,8] [--against OTHER.py]

Random bf16 Q, K, V of one layer of the shape (heads, kv heads, head dim) at the length; block 128 past
64k (else 64), window 32, as the dump runs it. Times, best of --repeats after a warm-up:
  - `attention`: the layer's causal attention as a plain forward runs it (sdpa, GQA);
  - `output_lse`: the capture's attention (`core.lm.stats.causal_output_lse`: the output and each row's
    log-sum-exp);
  - `stats`: the fused statistics pass (`core.lm.kernels.triton_stats.fused_stats` given that lse), at
    each warp count of --warps; with --against, the same pass of another copy of the kernels' module
    (e.g. an earlier version), whose outputs are also compared.
Prints `stats_vs_attention` (the pass's time over the layer's attention) and, per layer of the model,
the capture's extra time over a plain forward: output_lse + stats − attention.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dump_bench_cuda import timed as bench_timed  # noqa: E402
from shapes import SHAPES  # noqa: E402

from dump.options import lengths as parse_lengths  # noqa: E402


def timed(fn, repeats):
    return bench_timed(fn, repeats, warm_up=True)  # always after a warm-up run (the kernels compile)


def load(path):
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    p.add_argument("--length", default="128k")
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--warps", default="4,8", help="warp counts of the statistics kernel to time")
    p.add_argument("--against", help="another copy of core/lm/kernels/triton_stats.py to time and compare")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("stats_kernel_bench: needs CUDA")
    from core.lm.kernels import triton_stats
    from core.lm.stats import causal_output_lse

    shape = SHAPES[args.shape]
    heads, kv, dim = shape["num_attention_heads"], shape["num_key_value_heads"], shape["head_dim"]
    layers = shape["num_hidden_layers"]
    n = parse_lengths(args.length)[0]
    block = 64 if n <= 65536 else 128
    scale = dim**-0.5
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(kv, n, dim, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(kv, n, dim, device="cuda", dtype=torch.bfloat16, generator=g)

    def attention():
        torch.nn.functional.scaled_dot_product_attention(
            q[None], k[None], v[None], is_causal=True, scale=scale, enable_gqa=True
        )

    row = dict(shape=args.shape, tokens=n, block=block, window=args.window, card=torch.cuda.get_device_name())
    row["attention_s"] = timed(attention, args.repeats)
    _, lse = causal_output_lse(q, k, v, scale)
    row["output_lse_s"] = timed(lambda: causal_output_lse(q, k, v, scale), args.repeats)
    outputs = {}
    for w in [int(x) for x in args.warps.split(",")]:
        default = dict(triton_stats.STATS_WARPS)
        triton_stats.STATS_WARPS[block] = w
        try:
            row[f"stats_s_warps{w}"] = timed(
                lambda: triton_stats.fused_stats(q, k, scale, args.window, block, lse=lse), args.repeats
            )
            outputs[w] = triton_stats.fused_stats(q, k, scale, args.window, block, lse=lse)
        finally:
            triton_stats.STATS_WARPS.clear()
            triton_stats.STATS_WARPS.update(default)
    best = min(row[f"stats_s_warps{w}"] for w in outputs)
    row["stats_s"] = best
    if args.against:
        other = load(args.against)
        row["against_stats_s"] = timed(
            lambda: other.fused_stats(q, k, scale, args.window, block, lse=lse), args.repeats
        )
        theirs = other.fused_stats(q, k, scale, args.window, block, lse=lse)
        mine = next(iter(outputs.values()))
        row["against_max_diff"] = {
            name: float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
            for name, a, b in zip(("colsum", "window", "blocks"), mine, theirs)
        }
    row["stats_vs_attention"] = best / row["attention_s"]
    row["extra_per_layer_s"] = row["output_lse_s"] + best - row["attention_s"]
    row["extra_model_s"] = row["extra_per_layer_s"] * layers
    for key, val in row.items():
        print(f"{key} {val:.4f}" if isinstance(val, float) else f"{key} {val}")
    if args.against:
        print(f"stats_speedup_vs_against {row['against_stats_s'] / best:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
