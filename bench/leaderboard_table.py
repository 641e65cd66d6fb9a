"""kvpress's leaderboard re-scored, printed from the RESULTS of its tasks (`configs/leaderboard.yaml`,
one RESULTS.zarr per task, e.g. as `bash bench/gpu_real.sh leaderboard` brings them back):

    python bench/leaderboard_table.py niah_single_2=runs/lb/.../results.zarr ... \
        [--earlier niah_single_1=LEADERBOARD.csv,CAUSES.csv] [--csv leaderboard.csv] [--causes causes.csv] [--split 0.5,0.875]

Per setting: the policies ranked by their mean score ×100 over sparsities and tasks (RULER's
string_match on the model's own answer), each sparsity's score over every task's documents with its
95% interval, then each task's mean score; Spearman's ρ against kvpress's published order at every
sparsity (`viz.leaderboard.KVPRESS_AT_HALF`, its figure at ratio 0.5); the full cache's score per
task; and, at the `--split` sparsities, why each failed answer failed (`core.schema.CAUSES`; only
documents whose full cache answers can fail).

`--earlier TASK=LEADERBOARD.csv,CAUSES.csv` adds a task analyzed in an earlier run of the same config
whose RESULTS are not at hand, from the two CSVs this script wrote for it alone. Its scores must be
binary (one value asked for: every document scores 0 or 1), so that each cell's count of answered
documents, and of each cause, is exact; only the order of its documents is unknown, which no
unpaired interval depends on but the bootstrap's draw of them (fraction-scored pools, by a few
tenths of a point).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import intervals, schema  # noqa: E402
from viz import leaderboard  # noqa: E402


def load(pairs: list[str]) -> dict:
    out = {}
    for item in pairs:
        task, _, path = item.partition("=")
        if not path:
            sys.exit(f"leaderboard_table: {item!r} is not TASK=RESULTS.zarr")
        out[task] = schema.open_results(path).load()
    return out


def earlier(item: str) -> tuple[str, xr.Dataset]:
    """A task's RESULTS rebuilt from its own leaderboard and causes CSVs (see the module's docstring):
    per (setting, policy, sparsity), its answered documents first, then its failures by cause."""
    task, _, paths = item.partition("=")
    board_csv, _, causes_csv = paths.partition(",")
    if not (board_csv and causes_csv):
        sys.exit(f"leaderboard_table: --earlier {item!r} is not TASK=LEADERBOARD.csv,CAUSES.csv")
    board, causes = pd.read_csv(board_csv), pd.read_csv(causes_csv)
    docs = int(board.documents.max())
    settings = list(dict.fromkeys(board.setting))
    pols = list(dict.fromkeys(board.policy))
    sps = sorted(float(c) for c in board.columns if c.replace(".", "", 1).isdigit())
    answer = np.full((len(settings), len(pols), len(sps), docs), np.nan)
    cause = np.full(answer.shape, -1, dtype=np.int8)
    for a, st in enumerate(settings):
        for i, pol in enumerate(pols):
            row = board[(board.setting == st) & (board.policy == pol)].iloc[0]
            for j, sp in enumerate(sps):
                if not np.isfinite(row[f"{sp:g}"]):
                    continue
                k = row[f"{sp:g}"] * docs / 100
                if abs(k - round(k)) > 1e-3:
                    sys.exit(
                        f"leaderboard_table: {board_csv!r} scores {pol} at {sp:g} as {row[f'{sp:g}']}: not binary over {docs} documents"
                    )
                k = int(round(k))
                answer[a, i, j] = np.r_[np.ones(k), np.zeros(docs - k)]
                c = causes[(causes.setting == st) & (causes.policy == pol) & np.isclose(causes.sparsity, sp)]
                codes = np.concatenate(
                    [np.full(int(c[name].sum()), code) for code, name in enumerate(schema.CAUSES)]
                )
                cause[a, i, j, k : k + len(codes)] = codes
    dims = (schema.SETTING, schema.POLICY, "sparsity", "length", "depth", "sample")
    shape = (len(settings), len(pols), len(sps), 1, docs, 1)
    full = (
        answer[0, pols.index("full"), 0].reshape(1, docs, 1) == 1
    )  # the full cache: one answer per document
    ds = xr.Dataset(
        {
            "answer": (dims, answer.reshape(shape)),
            "cause": (dims, cause.reshape(shape)),
            "retrieved": (("length", "depth", "sample"), full),
            "done": (("length", "depth", "sample"), np.ones((1, docs, 1), dtype=bool)),
        },
        coords={
            schema.SETTING: settings,
            schema.POLICY: pols,
            "sparsity": sps,
            "length": [4096],
            "depth": np.arange(docs),
            "sample": [0],
        },
        attrs={"model": "(an earlier run)"},
    )
    return task, ds


def ranked_text(board: pd.DataFrame, sparsities: list[float], tasks: list[str]) -> str:
    cols = [f"{s:g}" for s in sparsities]
    tasks = tasks if len(tasks) > 1 else []  # one task: its scores are the columns
    rows = []
    for _, r in board.iterrows():
        cells = [
            f"{r[c]:5.1f} [{r[c + ' lo']:5.1f},{r[c + ' hi']:5.1f}]" if np.isfinite(r[c]) else "n/a".rjust(19)
            for c in cols
        ]
        per_task = []
        for t in tasks:
            vals = [r.get(f"{t} {c}", np.nan) for c in cols]
            per_task.append(f"{np.nanmean(vals):5.1f}" if np.isfinite(vals).any() else "  n/a")
        rows.append(
            f"{r['rank']:>3} {r['policy']:>29} "
            + " ".join(cells)
            + f" {r['mean']:5.1f} | "
            + " ".join(per_task)
        )
    head = (
        f"{'':>3} {'policy':>29} "
        + " ".join(c.center(19) for c in cols)
        + " mean | "
        + " ".join(t.replace("niah_", "")[:5].rjust(5) for t in tasks)
    )
    return "\n".join([head, *rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", metavar="TASK=RESULTS")
    p.add_argument(
        "--earlier",
        action="append",
        default=[],
        metavar="TASK=LEADERBOARD.csv,CAUSES.csv",
        help="a binary-scored task from an earlier run's CSVs (its RESULTS not at hand)",
    )
    p.add_argument("--csv", help="the ranked tables of every setting (leaderboard.csv)")
    p.add_argument("--causes", help="the failure causes per task, setting, policy and sparsity (CSV)")
    p.add_argument("--split", default="0.5,0.875", help="sparsities whose failure causes are printed")
    args = p.parse_args()
    measured = load(args.results)
    results = dict(earlier(item) for item in args.earlier)
    results.update(measured)
    tasks = list(results)
    first = next(iter(measured.values()))  # a task analyzed here: its sparsities, settings and model
    sparsities = [float(s) for s in first.sparsity.values]
    settings = [str(s) for s in first[schema.SETTING].values]
    docs = {t: int(ds.done.sum()) for t, ds in results.items()}
    print(f"tasks: {', '.join(f'{t} ({docs[t]} documents)' for t in tasks)}")
    print(
        f"model: {first.attrs.get('model', '?')}; score x100 = RULER string_match on the model's own answer, 95% intervals over documents"
    )
    boards = []
    for setting in settings:
        board = leaderboard.table(results, setting)
        boards.append(board.assign(setting=setting))
        full = {}
        for t, ds in results.items():
            one = schema.in_setting(ds, setting)
            ok = one.retrieved.where(one.done.astype(bool)).values
            k, n = int(np.nansum(ok)), int(np.isfinite(ok).sum())
            lo, hi = intervals.wilson(np.array([k]), np.array([n]))
            full[t] = f"{k}/{n} [{100 * lo[0]:.1f}, {100 * hi[0]:.1f}]"
        print(
            f"\n== {setting}: policies ranked by mean score; per sparsity over all tasks' documents; then each task's mean"
        )
        print(ranked_text(board, sparsities, tasks))
        print("full cache answers (the dump's own answer): " + "; ".join(f"{t} {v}" for t, v in full.items()))
        rhos = []
        for sp in sparsities:
            rho, k, _ = leaderboard.spearman_vs_kvpress(board, sp)
            rhos.append(f"{sp:g}: {rho:.2f} ({k} policies)")
        print(
            "Spearman's rho against kvpress's published order (its figure at ratio 0.5), lab scores at each sparsity: "
            + ", ".join(rhos)
        )
    if args.csv:
        pd.concat(boards, ignore_index=True).to_csv(args.csv, index=False, float_format="%.2f")
    split = pd.concat(
        [leaderboard.cause_split(ds).assign(task=t) for t, ds in results.items() if "cause" in ds],
        ignore_index=True,
    )
    if args.causes:
        split.to_csv(args.causes, index=False)
    if len(split):
        want = [float(s) for s in args.split.split(",")]
        causes = list(schema.CAUSES)
        summed = (
            split[split.sparsity.isin(want)]
            .groupby(["policy", "sparsity", "setting"], sort=False)[causes + ["failed"]]
            .sum()
        )
        order = list(dict.fromkeys(split.policy))
        print(
            f"\n== why the failed answers failed, all tasks summed ({', '.join(causes)}; failed of the documents whose full cache answers)"
        )
        print(f"{'policy':>29} " + " ".join(f"{s:g} {st}".center(19) for s in want for st in settings))
        for pol in order:
            cells = []
            for s in want:
                for st in settings:
                    if (pol, s, st) in summed.index:
                        r = summed.loc[(pol, s, st)]
                        cells.append(
                            ("/".join(str(int(r[c])) for c in causes) + f" ={int(r['failed'])}").center(19)
                        )
                    else:
                        cells.append("n/a".center(19))
            print(f"{pol:>29} " + " ".join(cells))


if __name__ == "__main__":
    main()
