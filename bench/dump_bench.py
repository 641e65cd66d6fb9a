"""Capture overhead on the CPU: plain sdpa forward vs forward with statistics capture.

    python bench/dump_bench.py [--length 2048] [--repeats 3]

Prints both times (best of repeats, same process, same document), the embedded model's cached load
time, dump throughput at 1k/2k/4k with --throughput, `agnostic_overhead_ratio R`: a document's dump
(forward, capture and every layer written to a RUN store) with the context's own statistics
against the same without them (target <= 1.15), the time and size of a one-document dump with
`--store stats,keys` and with `--kvzip` (`keys_dump_ratio`, `kvzip_overhead_ratio`: against a plain
dump; KVzip stays opt-in above 2.5), and last `capture_overhead_ratio R` (target <= 1.5).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import torch

from core.lm import capture, models
from core.lm.stats import tile_rows
from core.tasks import haystack, passkey


def best(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--throughput", action="store_true", help="also time whole dumps at 1k, 2k, 4k")
    args = p.parse_args()

    models.resolve(models.DEFAULT_MODEL)  # convert once (not timed)
    t = time.perf_counter()
    lm = models.load(models.DEFAULT_MODEL, attn_implementation=capture.NAME)
    print(f"cached model load: {time.perf_counter() - t:.2f} s")
    rng = haystack.document_rng(0, args.length, 0, 0)
    doc = passkey.build_document(
        lm.tokenizer, args.length, 0.5, passkey.make_passkey(rng), haystack.filler_sentences("ruler", rng)
    )
    ids = torch.as_tensor(doc.input_ids, dtype=torch.long)[None]
    model = lm.model
    heads = lm.config["heads"]
    recorder = capture.Recorder(
        64, 64, on_layer=lambda layer, stats: None, tile=tile_rows(args.length, heads, 64)
    )

    def plain():
        model.set_attn_implementation("sdpa")
        with torch.no_grad():
            model(ids, use_cache=False, logits_to_keep=1)

    def captured():
        model.set_attn_implementation(capture.NAME)
        with torch.no_grad(), capture.recording(recorder):
            model(ids, use_cache=False, logits_to_keep=1)

    plain()  # warm-up
    t_plain = best(plain, args.repeats)
    t_capture = best(captured, args.repeats)
    print(f"threads: {torch.get_num_threads()}, tokens: {args.length}")
    print(f"plain sdpa forward:          {t_plain:.3f} s")
    print(f"forward + statistics capture: {t_capture:.3f} s")
    if args.throughput:
        from dump.run import DumpOptions, run_dump

        for n in (1024, 2048, 4096):
            with tempfile.TemporaryDirectory() as tmp:
                s = run_dump(DumpOptions(out=f"{tmp}/b.zarr", lengths=[n], depths=[0.5], progress=False))
                print(
                    f"dump {n} tokens: {s.tokens / s.seconds:,.0f} tokens/s, store {s.store_bytes / 2**20:.1f} MiB/document"
                )
    # the agnostic statistics: the same document dumped into a store with and without them
    import numpy as np

    from core import schema
    from dump.store import RunWriter

    context = int(np.flatnonzero(doc.question)[0])
    with tempfile.TemporaryDirectory() as tmp:
        settings = {"depths": [0.5], "samples": 1, "task": "passkey"}
        store = RunWriter(f"{tmp}/a.zarr", settings, {})
        store.length_group(args.length, lm.config, 64, 64, tile_rows(args.length, heads, 64), [], 8)

        def dumped(ctx):
            rec = capture.Recorder(
                64,
                64,
                on_layer=lambda layer, stats: store.write_layer(args.length, 0, 0, layer, stats),
                tile=tile_rows(args.length, heads, 64),
                context=ctx,
            )

            def run():
                model.set_attn_implementation(capture.NAME)
                with torch.no_grad(), capture.recording(rec):
                    model(ids, use_cache=False, logits_to_keep=1)
                store.flush()

            return run

        t_aware = best(dumped(None), args.repeats)
        t_both = best(dumped(context), args.repeats)
        store.close()
    print(f"dump of one document, aware statistics only:      {t_aware:.3f} s")
    print(
        f"dump of one document, + context-only statistics:  {t_both:.3f} s ({len(schema.RUN_CONTEXT)} more variables)"
    )
    # what --store keys and --kvzip cost: whole dumps of one document, each part alone (best of repeats)
    from dump.run import DumpOptions, run_dump

    parts = {}
    for store_parts in ("stats", "stats,keys", "stats,kvzip"):
        runs = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                opt = DumpOptions(out=f"{tmp}/p.zarr", lengths=[args.length], depths=[0.5], store=store_parts)
                s = run_dump(dataclasses.replace(opt, progress=False))
                runs.append((s.seconds, s.store_bytes))
        parts[store_parts] = min(runs)
        print(
            f"dump --store {store_parts:<12} one document: {parts[store_parts][0]:.2f} s, "
            f"store {parts[store_parts][1] / 2**20:.1f} MiB"
        )
    print(
        f"keys_dump_ratio {parts['stats,keys'][0] / parts['stats'][0]:.2f} (dump time with --store stats,keys / stats)"
    )
    print(
        f"kvzip_overhead_ratio {parts['stats,kvzip'][0] / parts['stats'][0]:.2f} (dump time with --kvzip / without)"
    )
    print(f"agnostic_overhead_ratio {t_both / t_aware:.3f}")
    print(f"capture_overhead_ratio {t_capture / t_plain:.2f}")


if __name__ == "__main__":
    from stamp import stamp

    stamp()
    main()
