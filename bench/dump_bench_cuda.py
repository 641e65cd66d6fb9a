"""GPU dump benchmark: plain forward, eager output_attentions, tiled torch statistics and the fused
Triton statistics, on random-weight models of real shapes (bf16).

    python bench/dump_bench_cuda.py [--lengths 4k,16k,32k,64k,128k] [--json bench/results/x.json]

Prints a table, achieved TFLOP/s of the statistics against a measured bf16 matmul rate,
`stats_128k_s S` and `stats_vs_sdpa_128k R` (statistics time = forward with capture - plain sdpa
forward, SmolLM2 shape, 128k; R = plain sdpa forward / statistics time; targets S <= 2.5, and R
up from 0.34), `fused_speedup_64k R` (tiled / fused statistics time at 64k), and for the Llama-3-8B
shape (`--llama8b 128k`) `capture_vs_plain_8b_128k R`: the forward with capture over the plain sdpa
forward (target <= 1.6; the statistics need one more QK pass, so about 1.2 is the floor).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch
from shapes import SHAPES  # bench/shapes.py: the model shapes, as transformers config fields

from core.lm import capture
from core.lm.kernels import triton_stats
from core.tasks.haystack import parse_lengths


def build(shape: str, max_len: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=max_len, rope_theta=500000.0)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(prev)
    return model.eval(), cfg


def timed(fn, repeats=2, warm_up=None):
    """The best of `repeats` timed runs of fn on CUDA, after a warm-up run (compilation, allocator)
    unless `warm_up` is False; by default only repeated timings warm up (the slow baselines run once, cold)."""
    if warm_up is None:
        warm_up = repeats > 1
    if warm_up:
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def try_time(fn, repeats=2):
    try:
        return timed(fn, repeats), None
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None, "OOM"


def matmul_rate():
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t = timed(lambda: [a @ b for _ in range(10)], 3)
    return 10 * 2 * 8192**3 / t / 1e12


def disk_rate(path):
    data = os.urandom(1 << 28)
    t = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(4):
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return 4 * len(data) / (time.perf_counter() - t) / 1e9


def run_shape(shape, lengths, window, tiled_max, eager_max, rows, warps=()):
    model, cfg = build(shape, max(lengths))
    L, H, D = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim
    for n in lengths:
        block = 64 if n <= 65536 else 128
        ids = torch.randint(0, cfg.vocab_size, (1, n), device="cuda")
        sink = {}

        def forward(impl, fused=None, output_attentions=False, ids=ids, block=block, sink=sink):
            def go():
                model.set_attn_implementation(impl)
                with torch.no_grad():
                    if fused is None:
                        model(ids, use_cache=False, logits_to_keep=1, output_attentions=output_attentions)
                    else:
                        rec = capture.Recorder(
                            window=window, block=block, on_layer=sink.__setitem__, fused=fused
                        )
                        with capture.recording(rec):
                            model(ids, use_cache=False, logits_to_keep=1)
                sink.clear()

            return go

        torch.cuda.reset_peak_memory_stats()
        plain, _ = try_time(forward("sdpa"))
        base_mem = torch.cuda.max_memory_allocated()
        eager, eager_note = (
            (None, "skipped") if n > eager_max else try_time(forward("eager", output_attentions=True), 1)
        )
        tiled, tiled_note = (
            (None, "skipped (time)") if n > tiled_max else try_time(forward(capture.NAME, fused=False), 1)
        )
        torch.cuda.reset_peak_memory_stats()
        fused, fused_note = try_time(forward(capture.NAME, fused=True))
        peak = torch.cuda.max_memory_allocated()
        by_warps = {}
        for (
            w
        ) in warps:  # the fused kernels launched with other warp counts (the default is triton_stats.WARPS)
            default, triton_stats.WARPS = triton_stats.WARPS, w
            try:
                by_warps[w] = try_time(forward(capture.NAME, fused=True))[0]
            finally:
                triton_stats.WARPS = default
        flops = (
            2 * H * n * n * D * L
        )  # two passes of QK over the causal half: 2 * (n^2/2 * D * 2) per head-layer
        stats_fused = fused - plain if fused and plain else None
        row = dict(
            shape=shape,
            tokens=n,
            block=block,
            plain_s=plain,
            eager_s=eager,
            eager_note=eager_note,
            tiled_s=tiled,
            tiled_note=tiled_note,
            fused_s=fused,
            fused_note=fused_note,
            stats_fused_s=stats_fused,
            stats_tiled_s=(tiled - plain) if tiled and plain else None,
            stats_tflops=flops / stats_fused / 1e12 if stats_fused else None,
            peak_gb=peak / 1e9,
            fused_s_by_warps=by_warps,
            plain_peak_gb=base_mem / 1e9,
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    model.to("meta")  # free the weights before the next shape
    torch.cuda.empty_cache()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", default="4k,16k,32k,64k,128k")
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--tiled-max", default="64k")
    p.add_argument("--eager-max", default="16k")
    p.add_argument("--llama8b", default="32k", help="length for the Llama-3-8B shape ('' to skip)")
    p.add_argument("--json", default=None)
    p.add_argument(
        "--warps",
        default="",
        help="for the Llama-3-8B shape, also time the fused kernels with these warp counts",
    )
    p.add_argument("--skip-small", action="store_true", help="only the Llama-3-8B shape")
    args = p.parse_args()
    rate = matmul_rate()
    with tempfile.TemporaryDirectory() as tmp:
        disk = disk_rate(os.path.join(tmp, "probe"))
    print(f"card {torch.cuda.get_device_name()}, bf16 matmul {rate:.0f} TFLOP/s, disk write {disk:.2f} GB/s")
    rows = []
    if not args.skip_small:
        run_shape(
            "smollm2-135m",
            parse_lengths(args.lengths),
            args.window,
            parse_lengths(args.tiled_max)[0],
            parse_lengths(args.eager_max)[0],
            rows,
        )
    if args.llama8b:
        run_shape(
            "llama3-8b",
            parse_lengths(args.llama8b),
            args.window,
            min(parse_lengths(args.llama8b)[0], parse_lengths(args.tiled_max)[0]),
            0,
            rows,
            [int(w) for w in args.warps.split(",") if w],
        )
    print(
        f"\n{'shape':<13}{'tokens':>8}{'plain':>9}{'eager':>9}{'tiled':>9}{'fused':>9}{'stats TF/s':>12}{'peak GB':>9}"
    )
    for r in rows:

        def f(v, note=None):
            return f"{v:9.2f}" if v is not None else f"{(note or '-'):>9}"

        tf = f"{r['stats_tflops']:12.1f}" if r["stats_tflops"] else f"{'-':>12}"
        print(
            f"{r['shape']:<13}{r['tokens']:>8}{f(r['plain_s'])}{f(r['eager_s'], r['eager_note'])}"
            f"{f(r['tiled_s'], r['tiled_note'])}{f(r['fused_s'], r['fused_note'])}{tf}{r['peak_gb']:9.1f}"
        )
    out = dict(
        card=torch.cuda.get_device_name(),
        matmul_bf16_tflops=rate,
        disk_write_gbps=disk,
        torch=torch.__version__,
        python=platform.python_version(),
        rows=rows,
    )
    try:
        import transformers
        import triton

        out.update(transformers=transformers.__version__, triton=triton.__version__)
    except ImportError:
        pass
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            from stamp import line

            json.dump({"provenance": line(), **out}, f, indent=1)
    r128 = [r for r in rows if r["shape"] == "smollm2-135m" and r["tokens"] == 131072]
    if r128 and r128[0]["stats_fused_s"]:  # statistics = forward with capture - plain sdpa forward
        print(f"stats_128k_s {r128[0]['stats_fused_s']:.2f}")
        print(f"stats_vs_sdpa_128k {r128[0]['plain_s'] / r128[0]['stats_fused_s']:.2f}")
    r64 = [r for r in rows if r["shape"] == "smollm2-135m" and r["tokens"] == 65536]
    if r64 and r64[0]["stats_tiled_s"] and r64[0]["stats_fused_s"]:
        print(f"fused_speedup_64k {r64[0]['stats_tiled_s'] / r64[0]['stats_fused_s']:.1f}")
    for r in rows:
        if r["shape"] == "llama3-8b" and r["plain_s"] and r["fused_s"]:
            print(f"capture_vs_plain_8b_{r['tokens'] // 1024}k {r['fused_s'] / r['plain_s']:.2f}")
            for w, t in r["fused_s_by_warps"].items():
                if t:
                    print(f"  with {w} warps: {t / r['plain_s']:.2f}")


if __name__ == "__main__":
    from stamp import stamp

    stamp()
    main()
