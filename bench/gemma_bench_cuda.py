"""Long-context dump targets on one GPU, each against a baseline measured in the same run.

    python bench/gemma_bench_cuda.py [--parts sliding,gemma,smollm2] [--json bench/results/gemma_h200.json]

Prints, last:
  sliding_speedup_32k R      one Gemma-3-270M-shaped sliding-window layer (4 heads / 1 kv head, dim 256,
                             window 512) at 32k: statistics by the tiled torch path with a dense N x N band
                             mask (the fallback before banding) / by the fused banded kernels (target >= 10)
  gemma_doc_32k_s S          a whole 32k document of the real Gemma 3 270M through the dump's own code:
                             forward with statistics, 8-token greedy answer, compressed write (target <= 1.5)
  gemma_doc_32k_vs_sdpa R    that / the plain sdpa forward and the same 8-token answer of the same model
  smollm2_doc_128k_s S       (part smollm2) SmolLM2 135M stretched to 128k (--rope-scaling yarn:16),
  smollm2_doc_128k_gb G      --window 64, default block and rows: time and store size per document
                             (targets <= 10 s, <= 1 GB)
  (part lengths)             time and store size per document at every length of the real-weight studies
  fp32_vs_bf16_32k R         (part fp32) float32 / bfloat16 seconds per document, real Gemma, 32k,
                             same documents, same run (target <= 3)
  answer pass ...            (part answers) `analyze --answers --answer-device cuda` with the default
                             workers on float32 Gemma at 32k and bfloat16 at 128k (yarn:4): exit status,
                             time, and the peak GPU memory of one answer task
Document times are medians of the documents after the first (warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from core import schema
from core.lm import capture, decode, models
from core.lm.stats import attention_stats, attention_stats_fused
from dump import document, plan
from dump.options import DumpOptions


def timed(fn, repeats=3):
    fn()  # warm-up: compilation, allocator
    out = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return min(out)


def sliding_layer(n=32768, heads=4, kv_heads=1, dim=256, sliding=512, window=64, block=64):
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(heads, n, dim, device=dev, dtype=dt)
    k = torch.randn(kv_heads, n, dim, device=dev, dtype=dt)
    v = torch.randn(kv_heads, n, dim, device=dev, dtype=dt)
    scale = 256**-0.5
    pos = torch.arange(n, device=dev)
    band = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - sliding)  # what sdpa_mask built
    before = timed(lambda m=band: attention_stats(q, k, v, scale, window, block, mask=m), 1)
    del band
    torch.cuda.empty_cache()
    banded_torch = timed(lambda: attention_stats(q, k, v, scale, window, block, sliding=sliding))
    fused = timed(lambda: attention_stats_fused(q, k, v, scale, window, block, sliding=sliding))
    return dict(tokens=n, dense_mask_tiled_s=before, banded_tiled_s=banded_torch, fused_banded_s=fused)


def documents(
    model: str, n: int, docs: int, out: Path, rope_scaling=None, baseline=True, device="cuda", dtype="auto"
):
    """Dump `docs` documents of length n through the dump's own per-document code; per-document
    seconds, store bytes, and (baseline) the plain sdpa forward + 8-token answer of the same prompts."""
    opt = DumpOptions(
        out=str(out),
        model=model,
        lengths=[n],
        depths=[0.5],
        samples=docs,
        device=device,
        rope_scaling=rope_scaling,
        dtype=dtype,
        window=16,
        progress=False,
    )
    checked = plan.validate(opt)
    device = checked.device
    dtype = plan.resolve_dtype(opt.dtype, device)
    store, items = plan.open_store(checked, models.describe(model, dtype, rope_scaling), device)
    lm = models.load(
        model, dtype=dtype, device=device, attn_implementation=capture.NAME, rope_scaling=rope_scaling
    )
    times, plain, hits = [], [], 0
    for item in items:
        doc = document.build_document(lm.tokenizer, opt, item.length, item.depth, item.sample)
        torch.cuda.synchronize()
        t = time.perf_counter()
        hits += document.dump_document(store, lm, opt, doc, item)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        if baseline:
            lm.model.set_attn_implementation("sdpa")
            ids = torch.as_tensor(doc.input_ids, dtype=torch.long, device=device)[None]
            torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.no_grad():
                logits, cache = decode.prefill(lm.model, ids)
                decode.greedy(lm.model, cache, logits.argmax(-1), ids.shape[1], schema.ANSWER_TOKENS - 1)
            torch.cuda.synchronize()
            plain.append(time.perf_counter() - t)
            lm.model.set_attn_implementation(capture.NAME)
    store.close()
    size = store.nbytes()
    del lm
    torch.cuda.empty_cache()
    return dict(
        model=model,
        dtype=str(dtype).replace("torch.", ""),
        tokens=n,
        rope_scaling=rope_scaling,
        documents=docs,
        retrieved=hits,
        doc_s=statistics.median(times[1:]),
        doc_s_all=times,
        plain_s=statistics.median(plain[1:]) if baseline else None,
        store_gb_per_doc=size / docs / 1e9,
        peak_gpu_gb=torch.cuda.max_memory_allocated() / 1e9,
    )


def answer_pass(store: Path, dtype: str, n: int) -> dict:
    """`python -m analyze --answers --answer-device cuda` with its default workers (all on this one
    GPU): exit status, seconds, and the largest GPU memory one answer task held."""
    import subprocess
    import sys

    import xarray as xr

    res = store.with_suffix(".results.zarr")
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "analyze", str(store), "--answers", "--answer-device", "cuda",
         "--policies", "full,h2o,snapkv,tova,streaming", "--sparsity", "0.5,0.9", "--out", str(res),
         "--no-progress"],
        capture_output=True, text=True,
    )  # fmt: skip
    row = dict(dtype=dtype, tokens=n, rc=r.returncode, seconds=time.perf_counter() - t)
    if r.returncode == 0:
        ds = xr.open_zarr(res)
        row.update(
            workers=min(4, os.cpu_count() or 1),  # analyze's default: min(4, cores)
            peak_gpu_gb_per_worker=ds.attrs.get("answer_peak_gpu_gb"),
            full_answer=float(ds.answer.sel(policy="full").mean()),
            full_agrees_with_dump=ds.attrs.get("full_answer_agrees_with_dump"),
        )
    else:
        row["stderr"] = r.stderr[-2000:]
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--docs", type=int, default=4)
    p.add_argument(
        "--parts", default="sliding,gemma", help="sliding, gemma, smollm2, lengths (comma-separated)"
    )
    args = p.parse_args()
    parts = args.parts.split(",")
    out = dict(card=torch.cuda.get_device_name(), torch=torch.__version__)
    if "sliding" in parts:
        out["sliding"] = sliding_layer()
        print(json.dumps(out["sliding"]), flush=True)
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        if "gemma" in parts:
            out["gemma_32k"] = documents("gemma3-270m", 32768, args.docs, Path(tmp) / "g.zarr")
            print(json.dumps(out["gemma_32k"]), flush=True)
        if "lengths" in parts:  # time and store size per document at every length of the studies
            out["per_length"] = []
            for model, n, rope in [
                *(("gemma3-270m", n, None) for n in (4096, 8192, 16384, 32768)),
                *(("gemma3-270m", n, "yarn:4") for n in (65536, 131072)),
                *(("smollm2-135m", n, None) for n in (2048, 4096, 8192)),
            ]:
                row = documents(model, n, 3, Path(tmp) / f"{model}-{n}.zarr", rope_scaling=rope)
                out["per_length"].append(row)
                print(json.dumps(row), flush=True)
        if "fp32" in parts:  # the same documents in bfloat16 and float32, real Gemma, 32k
            for dt in ("bfloat16", "float32"):
                out[f"gemma_32k_{dt}"] = documents(
                    "gemma3-270m", 32768, args.docs, Path(tmp) / f"g32k_{dt}.zarr", baseline=False, dtype=dt
                )
                print(json.dumps(out[f"gemma_32k_{dt}"]), flush=True)
        if "answers" in parts:  # the answer pass on the GPU with the default workers, no OOM
            runs = [("float32", 32768, None), ("bfloat16", 131072, "yarn:4")]
            out["answers"] = []
            for dt, n, rope in runs:
                store = Path(tmp) / f"ans_{dt}_{n}.zarr"
                if not store.exists():
                    documents("gemma3-270m", n, 2, store, rope_scaling=rope, baseline=False, dtype=dt)
                out["answers"].append(answer_pass(store, dt, n))
                print(json.dumps(out["answers"][-1]), flush=True)
        if "smollm2" in parts:
            out["smollm2_128k"] = documents(
                "smollm2-135m", 131072, 3, Path(tmp) / "s.zarr", rope_scaling="yarn:16", baseline=False
            )
            print(json.dumps(out["smollm2_128k"]), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        from stamp import line

        Path(args.json).write_text(json.dumps({"provenance": line(), **out}, indent=1))
    if "sliding" in out:
        s = out["sliding"]
        print(f"sliding_speedup_32k {s['dense_mask_tiled_s'] / s['fused_banded_s']:.1f}")
    if "gemma_32k_float32" in out:
        b, f = out["gemma_32k_bfloat16"], out["gemma_32k_float32"]
        print(f"gemma_32k_bf16_doc_s {b['doc_s']:.3f}")
        print(f"gemma_32k_fp32_doc_s {f['doc_s']:.3f}")
        print(f"fp32_vs_bf16_32k {f['doc_s'] / b['doc_s']:.2f}")
    for a in out.get("answers", []):
        print(
            f"answer pass {a['dtype']} {a['tokens']}: exit {a['rc']}, {a['seconds']:.1f} s, "
            f"peak GPU per worker {a.get('peak_gpu_gb_per_worker')} GB, "
            f"full cache agrees with the dump's answer {a.get('full_agrees_with_dump')}"
        )
    if "gemma_32k" in out:
        g = out["gemma_32k"]
        print(f"gemma_doc_32k_s {g['doc_s']:.3f}")
        print(f"gemma_doc_32k_vs_sdpa {g['doc_s'] / g['plain_s']:.2f}")
    for r in out.get("per_length", []):
        print(
            f"{r['model']:<14}{r['tokens']:>8}  {r['doc_s']:6.2f} s/doc (sdpa {r['plain_s']:5.2f})  "
            f"{r['store_gb_per_doc'] * 1000:7.1f} MB/doc"
        )
    if "smollm2_128k" in out:
        print(f"smollm2_doc_128k_s {out['smollm2_128k']['doc_s']:.2f}")
        print(f"smollm2_doc_128k_gb {out['smollm2_128k']['store_gb_per_doc']:.3f}")


if __name__ == "__main__":
    from stamp import stamp

    stamp()
    main()
