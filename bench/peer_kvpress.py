"""kvpress as the peer: the documents of a RUN.zarr through kvpress's own presses, against this lab.

    make peer && .venv-peer/bin/python bench/peer_kvpress.py runs/demo/run.zarr [--ratios 0.5,0.9,0.95]
        [--presses streaming,knorm,keydiff,tova,snapkv,pyramidkv] [--settings agnostic,aware] [--documents N]

Runs in `.venv-peer` (kvpress 0.5.x pins transformers < 5.3: a venv of its own); the lab's side runs
in `.venv` through subprocesses (`--lab-python`). In one run, on one machine:

1. the lab: first, untimed, one short document dumped and analyzed (its numba kernels compile once
   per install into their on-disk cache, as kvpress's model is loaded before its clock); then
   `python -m dump` of the same documents again (settings read from the store; `--store`
   from `--lab-store`, default stats,kv: the answer pass then reads the dump's cache) and
   `python -m analyze --answers` with each press's twin at every ratio and setting; both timed;
2. kvpress: per document, setting, press and ratio, the prompt prefilled inside the press (the
   context alone in the agnostic setting, kvpress's own query-agnostic use; all but the last prompt
   token in the aware one), then the rest of the prompt fed and the answer decoded greedily for as
   many tokens as the dump's own answer; timed (the model loaded before the clock);
3. per press, setting and ratio: the kept-set agreement per layer and kv head (kvpress's kept
   positions are recovered from its pruned cache: every post-RoPE key is unique), the answer
   agreement (identical answer ids; equal RULER string_match_all score), and last
   `sweep_speedup_vs_kvpress`: kvpress seconds / lab seconds (dump + analysis);
4. with `--leaderboard`: the lab timed again on configs/leaderboard.yaml's whole grid (its --store,
   every policy, sparsity and setting, with answers) on the same documents, and
   `leaderboard_speedup_vs_kvpress`: kvpress's measured seconds per run times the grid's runs, over
   the lab's seconds (dump + analysis) for that grid.

Where kept sets cannot agree by definition the script says why and measures what can agree:
- budgets: kvpress keeps int((1 - r) n) keys, the lab round((1 - s) n); cells where they differ are
  counted apart;
- the aware setting: kvpress's prefill ends one token before the answer position (the lab's
  statistics include that row and its key), so kept sets are compared on the first n - 1 keys by
  Jaccard only;
- snapkv/pyramidkv: kvpress computes its window's attention itself from window_size queries; the
  lab reads the dump's W rows; the twins are given W as their window.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

ROOT = Path(__file__).resolve().parent.parent


def presses(window: int) -> dict:
    """press name -> (the lab's twin, a kvpress press factory taking a ratio)."""
    import kvpress as kp

    return {
        "streaming": ("streaming", lambda r: kp.StreamingLLMPress(compression_ratio=r, n_sink=4)),
        "knorm": ("knorm", lambda r: kp.KnormPress(compression_ratio=r)),
        "keydiff": ("keydiff", lambda r: kp.KeyDiffPress(compression_ratio=r)),
        "tova": ("tova", lambda r: kp.TOVAPress(compression_ratio=r)),
        "expected_attention": (
            "expected_attention",
            lambda r: kp.ExpectedAttentionPress(compression_ratio=r),
        ),
        "snapkv": (
            "snapkv",
            lambda r: kp.SnapKVPress(compression_ratio=r, window_size=window, kernel_size=5),
        ),
        "pyramidkv": (
            f"pyramidkv:window={window}",
            lambda r: kp.PyramidKVPress(compression_ratio=r, window_size=window, kernel_size=5, beta=20),
        ),
    }


def lab(cmd: list[str], python: str) -> float:
    t = time.perf_counter()
    r = subprocess.run([python, *cmd], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"peer_kvpress: the lab's `{' '.join(cmd[:3])}` failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t


def dump_argv(root, out: str, store: str | None = None, one: bool = False) -> list[str]:
    """The lab's dump of the store's documents with its settings (`store`: another --store; `one`:
    only its shortest length's first document)."""
    st = dict(root.attrs["settings"])
    lengths = sorted(int(k[4:]) for k in root.group_keys() if k.startswith("len_"))
    depths, samples = (st["depths"][:1], 1) if one else (st["depths"], st["samples"])
    argv = ["-m", "dump", "--out", out, "--model", st["model"], "--task", st.get("task", "passkey")]
    argv += ["--lengths", ",".join(map(str, lengths[:1] if one else lengths))]
    argv += ["--depths", ",".join(f"{d:g}" for d in depths)]
    argv += ["--samples", str(samples), "--seed", str(st["seed"]), "--filler", st["filler"]]
    argv += ["--window", str(st["window"]), "--block", str(st["block"])]
    return argv + ["--store", store or st.get("store", "stats"), "--device", "cpu", "--no-progress"]


class Recorder:
    """Wraps a press's `compress`: each layer's kept positions (kv_head, n) bool, from the pruned keys."""

    seconds = 0.0  # spent recovering kept sets, over every recorder: not kvpress's cost, taken off its time

    def __init__(self, press):
        self.kept: dict[int, np.ndarray] = {}
        self.scores: dict[int, np.ndarray] = {}  # a scorer press's own scores (kv_head, n): its ties
        inner = press.compress
        if hasattr(press, "score"):
            score = press.score

            def scored(module, *args):
                out = score(module, *args)
                self.scores[int(module.layer_idx)] = out[0].float().numpy()
                return out

            press.score = scored

        def compress(module, hidden_states, keys, values, attentions, kwargs):
            k2, v2 = inner(module, hidden_states, keys, values, attentions, kwargs)
            t = time.perf_counter()
            kept = np.zeros(keys.shape[1:3], dtype=bool)
            for h in range(keys.shape[1]):
                where = {row.tobytes(): j for j, row in enumerate(keys[0, h].float().numpy())}
                for row in k2[0, h].float().numpy():
                    kept[h, where[row.tobytes()]] = True
            self.kept[int(module.layer_idx)] = kept
            Recorder.seconds += time.perf_counter() - t
            return k2, v2

        press.compress = compress


def decode(model, cache, rest: torch.Tensor, start: int, steps: int) -> list[int]:
    """Feed the prompt tokens after the prefill, then greedy steps (the lab's `decode.greedy`)."""
    lengths = {layer.keys.shape[-2] for layer in cache.layers}
    if len(lengths) > 1:  # per-layer budgets (PyramidKV): one mask cannot fit every layer, feed one by one
        for t in rest[:-1]:
            model(
                t.reshape(1, 1), past_key_values=cache, position_ids=torch.tensor([[start]]), use_cache=True
            )
            start += 1
        rest = rest[-1:]
    out, tokens, at = [], rest[None], start
    for _ in range(steps):
        # position ids are the tokens' positions in the prompt; the mask's cache positions are left to
        # transformers (the pruned cache's length on): given as prompt positions past a pruned cache,
        # they would let the question's tokens see the later ones (as kvpress's own pipeline does)
        pos = at + torch.arange(tokens.shape[1])
        logits = model(tokens, past_key_values=cache, position_ids=pos[None], use_cache=True).logits
        at += tokens.shape[1]
        tokens = logits[:, -1:].argmax(-1)
        out.append(int(tokens[0, 0]))
    return out


def string_match_all(text: str, values: list[str]) -> float:
    """RULER's score: the fraction of expected values the text contains (case-insensitive)."""
    return float(np.mean([v.lower() in text.lower() for v in values])) if values else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("store")
    p.add_argument("--ratios", default="0.5,0.9,0.95")
    p.add_argument("--presses", default="streaming,knorm,keydiff,tova,snapkv,pyramidkv")
    p.add_argument("--settings", default="agnostic,aware")
    p.add_argument("--documents", type=int, default=0, help="the first N finished documents (0: all)")
    p.add_argument("--lab-python", default=str(ROOT / ".venv" / "bin" / "python"))
    p.add_argument(
        "--lab-store",
        default="stats,kv",
        help="the lab dump's --store (default stats,kv: the prompt's cache, which the answer pass reads "
        "instead of prefilling every document again, and the keys the key scorers read; with the "
        "expected_attention press, queries is added)",
    )
    p.add_argument(
        "--leaderboard",
        action="store_true",
        help="also time the lab on configs/leaderboard.yaml's whole grid (its --store, policies, sparsities and "
        "settings, with answers) on the same documents, and print leaderboard_speedup_vs_kvpress",
    )
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    root = zarr.open_group(args.store, mode="r")
    st = dict(root.attrs["settings"])
    window = int(st["window"])
    table = presses(window)
    names = args.presses.split(",")
    unknown = [n for n in names if n not in table]
    if unknown:
        sys.exit(f"peer_kvpress: no twin for {unknown[0]!r}: choose from {', '.join(table)}")
    if "expected_attention" in names and "queries" not in args.lab_store.split(","):
        args.lab_store += ",queries"  # its query moments and value norms
    ratios = [float(r) for r in args.ratios.split(",")]
    settings = args.settings.split(",")
    twins = [table[n][0] for n in names]

    with tempfile.TemporaryDirectory() as tmp:
        # 1. the lab, timed: the same documents dumped again, then analyzed with answers
        run = str(Path(tmp) / "run.zarr")
        results = str(Path(tmp) / "results.zarr")

        def analyze_argv(store: str, out: str) -> list[str]:
            return ["-m", "analyze", store, "--policies", ",".join(twins), "--sparsity", args.ratios,
                    "--setting", ",".join(settings), "--answers", "--out", out, "--no-progress"]  # fmt: skip

        # untimed, as kvpress's model is loaded before its clock: the lab's numba kernels compile once
        # per install into their on-disk cache; one short document dumped and analyzed fills it
        warm = str(Path(tmp) / "warm.zarr")
        lab(dump_argv(root, warm, args.lab_store, one=True), args.lab_python)
        lab(analyze_argv(warm, str(Path(tmp) / "warm.results.zarr")), args.lab_python)
        lab_dump = lab(dump_argv(root, run, args.lab_store), args.lab_python)
        lab_analyze = lab(analyze_argv(run, results), args.lab_python)
        lab_s = lab_dump + lab_analyze
        if args.leaderboard:  # the leaderboard's grid, on the same documents, timed as a whole
            board = leaderboard_grid()
            lb_run = str(Path(tmp) / "lb.run.zarr")
            lb_dump = lab(dump_argv(root, lb_run, board["store"]), args.lab_python)
            lb_analyze = lab(
                ["-m", "analyze", lb_run, "--policies", ",".join(board["policies"]),
                 "--sparsity", ",".join(board["sparsity"]), "--setting", ",".join(board["setting"]),
                 "--answers", "--out", str(Path(tmp) / "lb.results.zarr"), "--no-progress"],
                args.lab_python,
            )  # fmt: skip
        kept_lab = {}
        for setting in settings:
            npz = str(Path(tmp) / f"kept_{setting}.npz")
            lab(["bench/lab_keptsets.py", run, "--policies", ",".join(twins), "--sparsity", args.ratios,
                 "--setting", setting, "--out", npz], args.lab_python)  # fmt: skip
            kept_lab[setting] = dict(np.load(npz))
        res = zarr.open_group(results, mode="r")
        lab_answers = {name: Named(res[name]) for name in ("answer_ids", "answer")}
        coords = {
            c: [x.item() if hasattr(x, "item") else x for x in res[c][:]]
            for c in ("policy", "sparsity", "setting", "length")
        }
        model_dir = (
            subprocess.run(
                [
                    args.lab_python,
                    "-c",
                    f"from core.lm import models; print(models.resolve({st['model']!r})[0])",
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )

    # 2. kvpress, timed (the model loaded before the clock)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    docs = []
    for n in sorted(int(k[4:]) for k in root.group_keys() if k.startswith("len_")):
        g = root[f"len_{n}"]
        for d, s in zip(*np.nonzero(np.asarray(g["done"][:]))):
            docs.append((n, int(d), int(s), g))
    docs = docs[: args.documents] if args.documents else docs
    agree: dict = {}
    kept_scores: dict = {}
    answers: dict = {}
    t0 = time.perf_counter()
    for n, d, s, g in docs:
        ids = torch.as_tensor(np.asarray(g["input_ids"][d, s]), dtype=torch.long)
        c = int(np.flatnonzero(np.asarray(g["question"][d, s]))[0])
        steps = int((np.asarray(g["answer_ids"][d, s]) >= 0).sum())
        values = [
            e["value"] for e in json.loads(str(g["needle_table"][d, s]) or "[]") if e["role"] == "target"
        ]
        for setting in settings:
            cut = c if setting == "agnostic" else n - 1
            for name in names:
                twin, make = table[name]
                for r in ratios:
                    press = make(r)
                    rec = Recorder(press)
                    with torch.no_grad():
                        with press(model):
                            out = model(ids[None, :cut], use_cache=True)
                        got = decode(model, out.past_key_values, ids[cut:], cut, steps)
                    answers[(setting, name, r, n, d, s)] = (
                        got,
                        string_match_all(tokenizer.decode(got), values),
                    )
                    agree[(setting, name, r, n, d, s)] = rec.kept
                    kept_scores[(setting, name, r, n, d, s)] = rec.scores
    kvpress_s = time.perf_counter() - t0 - Recorder.seconds

    # 3. agreement
    print(
        f"documents: {len(docs)}; presses: {', '.join(names)}; ratios: {args.ratios}; settings: {args.settings}"
    )
    print("kept-set agreement per (document, layer, kv head); answer agreement per document")
    print(
        f"{'setting':<9} {'press':<18} {'ratio':>5}  {'identical':>9}  {'up to ties':>10}  {'widest gap':>10}  {'jaccard':>7}  {'budgets equal':>13}  {'same ids':>8}  {'same score':>10}"
    )
    for setting in settings:
        for name in names:
            twin = table[name][0]
            for r in ratios:
                same = total = tied = 0
                widest = 0.0  # the largest score gap (relative) of a head whose kept sets differ
                jac, budgets_equal, ids_same, score_same = [], 0, 0, 0
                for n, d, s, _g in docs:
                    kept_kv = agree[(setting, name, r, n, d, s)]
                    lab_kept = kept_lab[setting][f"{n}/{d}/{s}/{twin}/{r:g}"]
                    cut = next(iter(kept_kv.values())).shape[-1]
                    for layer, kv in kept_kv.items():
                        ours = lab_kept[layer][:, :cut]
                        budgets_equal += int((ours.sum(-1) == kv.sum(-1)).all())
                        for h in range(kv.shape[0]):
                            total += 1
                            equal = np.array_equal(ours[h], kv[h]) or nested(ours[h], kv[h])
                            same += int(equal)
                            scores = kept_scores[(setting, name, r, n, d, s)].get(layer)
                            gap = None if scores is None else top_set_gap(ours[h], scores[h])
                            tied += int(equal or (gap is not None and gap <= TIE))
                            if not equal and gap is not None:
                                widest = max(widest, gap)
                            inter = (ours[h] & kv[h]).sum()
                            jac.append(inter / max(1, (ours[h] | kv[h]).sum()))
                    got, score = answers[(setting, name, r, n, d, s)]
                    where = dict(setting=setting, policy=twin, sparsity=r, length=n, depth=d, sample=s)
                    ours_ids = lab_answers["answer_ids"].at(coords, **where)
                    ids_same += int(list(ours_ids[: len(got)]) == got)
                    score_same += int(abs(float(lab_answers["answer"].at(coords, **where)) - score) < 1e-6)
                layers = len(docs) * len(kept_kv)
                print(
                    f"{setting:<9} {name:<18} {r:>5g}  {same / total:>9.3f}  {tied / total:>10.3f}  {widest:>10.1e}  {np.mean(jac):>7.3f}  "
                    f"{budgets_equal / layers:>13.3f}  {ids_same / len(docs):>8.3f}  {score_same / len(docs):>10.3f}"
                )
    print(
        "identical: equal kept sets, or, where the budgets differ by one key (see 'budgets equal'), the smaller "
        "set inside the larger (the same order, one key further)"
    )
    print(
        "up to ties: identical, or the lab's kept set is a top set of kvpress's own scores (every key it keeps scores at "
        f"least as high as every key it drops, within {TIE:g} relative): what kvpress would keep at the lab's budget "
        "under another order of float32 ties (the lab scores its dump's keys, whose float32 rounding differs from "
        "kvpress's sdpa forward); 'widest gap' is the largest such relative gap over the heads that differ "
        "(presses that expose scores)"
    )
    if "aware" in settings:
        print(
            "aware: kvpress prefills n - 1 tokens (its cache ends before the answer position); the lab's "
            "kept sets also rank the last prompt key: compared on the first n - 1 keys, not identical by definition"
        )
    print(
        "budgets: kvpress keeps int((1 - r) n), the lab round((1 - s) n); 'budgets equal' is the share of "
        "(document, layer) cells where they coincide"
    )
    grid = len(names) * len(ratios) * len(docs) * len(settings)
    print(
        f"lab seconds: {lab_s:.1f} (dump --store {args.lab_store} {lab_dump:.1f} + analyze --answers {lab_analyze:.1f}) for the whole grid"
    )
    print(
        f"kvpress seconds: {kvpress_s:.1f} for {grid} (press, ratio, document, setting) runs "
        f"(without the {Recorder.seconds:.1f} s this script spent recovering kept sets)"
    )
    print(f"sweep_speedup_vs_kvpress {kvpress_s / lab_s:.2f}")
    if args.leaderboard:
        per_run = kvpress_s / grid
        runs = len(docs) * len(board["policies"]) * len(board["sparsity"]) * len(board["setting"])
        print(
            f"leaderboard grid (configs/leaderboard.yaml) on these {len(docs)} documents: {runs} (policy, sparsity, "
            f"setting, document) runs; the lab {lb_dump + lb_analyze:.1f} s (dump --store {board['store']} "
            f"{lb_dump:.1f} + analyze --answers {lb_analyze:.1f}); kvpress {per_run:.2f} s per run as measured above, "
            f"{per_run * runs:.1f} s for the grid"
        )
        print(f"leaderboard_speedup_vs_kvpress {per_run * runs / (lb_dump + lb_analyze):.2f}")


def leaderboard_grid() -> dict:
    """configs/leaderboard.yaml's dump --store and analyze grid (policies, sparsities, settings)."""
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "leaderboard.yaml").read_text())
    d, a = cfg["dump"], cfg["analyze"]
    store = str(d.get("store", "stats")) + (",kvzip" if d.get("kvzip") else "")
    return {
        "store": store,
        "policies": [str(x) for x in a["policies"]],
        "sparsity": [str(x) for x in a["sparsity"]],
        "setting": [str(x) for x in a["setting"]],
    }


TIE = 1e-5


def nested(ours: np.ndarray, theirs: np.ndarray) -> bool:
    """Budgets one apart (kvpress's int((1 - r) n) against the lab's round((1 - s) n), e.g. int(0.1 *
    490) = 48 in floating point): the same order keeps one set inside the other, one key more."""
    a, b = int(ours.sum()), int(theirs.sum())
    if abs(a - b) != 1:
        return False
    small, large = (ours, theirs) if a < b else (theirs, ours)
    return bool(np.all(large[small]))


def top_set_gap(ours: np.ndarray, scores: np.ndarray) -> float:
    """How far the lab's kept set of one head is from a top set of kvpress's scores for that head: the
    highest score it drops minus the lowest it keeps, relative to the scores' scale (0: a top set)."""
    scores = scores[: ours.shape[-1]]
    if ours.all() or not ours.any():
        return 0.0
    lo, hi = scores[ours].min(), scores[~ours].max()
    return float(max(0.0, hi - lo) / max(abs(lo), np.abs(scores).max() * 1e-3))


class Named:
    """A RESULTS array read by coordinate names (zarr's dimension names; no xarray in .venv-peer)."""

    def __init__(self, array):
        self.a = np.asarray(array[:])
        self.dims = list(array.metadata.dimension_names)

    def at(self, coords: dict, **where):
        index = []
        for dim in self.dims:
            if dim in where:
                values = coords.get(dim)
                v = where[dim]
                if values is not None and v not in values and str(v).split(":")[0] in values:
                    v = str(v).split(":")[0]  # a twin whose parameters are the defaults is labelled bare
                index.append(
                    values.index(v)
                    if values is not None and dim in ("policy", "sparsity", "setting", "length")
                    else v
                )
            else:
                index.append(slice(None))
        return self.a[tuple(index)]


if __name__ == "__main__":
    from stamp import stamp

    stamp()
    main()
