"""The research question's headline table from a study's RESULTS: per length, setting, policy and
sparsity, the documents the pruned cache answers among those the full cache answers, with a 95% Wilson
interval, and why the others failed (`cause`: distracted / partial / evicted / kept but unused).

    python bench/hypothesis_table.py runs/paper/results.zarr [MORE.zarr ...] [--policies full,h2o,cab,...]
        [--sparsity 0.9,0.95,0.99] [--earlier EARLIER.csv] [--csv OUT] [--plot OUT.png]

Several RESULTS (a study run one length at a time, `bash bench/gpu_real.sh paper L`) join by length;
`--earlier` adds the lengths of a CSV this script wrote (lengths whose RESULTS are not at hand).
`--plot` draws the answer against length per setting and sparsity, one line per policy with its 95%
Wilson band.

A cell reads `k/n [lo, hi] d/p/e/k`: k answered of the n documents whose full cache answers, the
Wilson interval of k/n x100, then the failures by cause (distracted, partial, evicted, kept but
unused: `core.schema.CAUSES`). Where the full cache answers no document the cell reads `full cache
fails` and nothing is ranked.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import intervals, schema  # noqa: E402

DEFAULT_POLICIES = "full,h2o,cab,cab_high,cab_hybrid,cab_3c,cab_forman"


def cells(ds, policies, sparsities):
    """Rows of (length, setting, policy, sparsity, k, n, lo, hi, causes {name: count})."""
    rows = []
    for n_tok in ds.length.values:
        for setting in ds[schema.SETTING].values:
            one = ds.sel(length=n_tok, setting=setting)
            answered = (one.retrieved & one.done).values.astype(bool)  # (depth, sample)
            for pol in policies:
                for sp in sparsities:
                    a = one.answer.sel({schema.POLICY: pol, "sparsity": sp}).values
                    cause = one.cause.sel({schema.POLICY: pol, "sparsity": sp}).values
                    k = int(((a == 1.0) & answered).sum())
                    n = int(answered.sum())
                    lo, hi = intervals.wilson(np.array([k]), np.array([n]))
                    counts = {c: int(((cause == i) & answered).sum()) for i, c in enumerate(schema.CAUSES)}
                    rows.append(
                        (int(n_tok), str(setting), pol, float(sp), k, n, 100 * lo[0], 100 * hi[0], counts)
                    )
    return rows


def earlier(path: str, policies, sparsities) -> list:
    """The rows of a CSV this script wrote (`--csv`), for the policies and sparsities asked."""
    import csv

    with open(path) as f:
        return [
            (
                int(r["length"]),
                r["setting"],
                r["policy"],
                float(r["sparsity"]),
                int(r["answered"]),
                int(r["documents"]),
                float(r["lo"]),
                float(r["hi"]),
                {c: int(r[c]) for c in schema.CAUSES},
            )
            for r in csv.DictReader(f)
            if r["policy"] in policies and float(r["sparsity"]) in sparsities
        ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+")
    p.add_argument("--policies", default=DEFAULT_POLICIES)
    p.add_argument("--sparsity", default="0.9,0.95,0.99")
    p.add_argument(
        "--earlier", action="append", default=[], help="rows of lengths from a CSV this script wrote"
    )
    p.add_argument("--csv")
    p.add_argument("--plot")
    args = p.parse_args()
    from stamp import line

    print(line())
    studies = [schema.open_results(path).load() for path in args.results]
    ds = studies[0]
    have = set.intersection(*({str(x) for x in d[schema.POLICY].values} for d in studies))
    policies = [x for x in args.policies.split(",") if x in have]
    sparsities = [
        float(x) for x in args.sparsity.split(",") if all(float(x) in d.sparsity.values for d in studies)
    ]
    rows = sorted(
        [r for d in studies for r in cells(d, policies, sparsities)]
        + [r for path in args.earlier for r in earlier(path, policies, sparsities)],
        key=lambda r: r[0],  # by length, each study's own order within
    )
    short = {c: c[0] for c in schema.CAUSES}  # d(istracted), p(artial), e(victed), k(ept but unused)
    print(
        f"model {ds.attrs.get('model', '?')}; causes: "
        + ", ".join(f"{short[c]} = {c}" for c in schema.CAUSES)
    )
    for n_tok in sorted({r[0] for r in rows}):
        for setting in dict.fromkeys(r[1] for r in rows):
            sub = [r for r in rows if r[0] == n_tok and r[1] == setting]
            print(
                f"\n{n_tok // 1024}k, {setting}: answered / documents the full cache answers, 95% Wilson x100, causes"
            )
            print(f"{'policy':<12}" + "".join(f"{f'sparsity {sp:g}':>34}" for sp in sparsities))
            for pol in policies:
                out = f"{pol:<12}"
                for sp in sparsities:
                    r = next(x for x in sub if x[2] == pol and x[3] == sp)
                    if r[5] == 0:
                        out += f"{'full cache fails':>34}"
                        continue
                    causes = "/".join(str(r[8][c]) for c in schema.CAUSES)
                    out += f"{f'{r[4]}/{r[5]} [{r[6]:.0f}, {r[7]:.0f}] {causes}':>34}"
                print(out)
    if args.csv:
        import csv

        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                [
                    "length",
                    "setting",
                    "policy",
                    "sparsity",
                    "answered",
                    "documents",
                    "lo",
                    "hi",
                    *schema.CAUSES,
                ]
            )
            for r in rows:
                w.writerow([*r[:6], f"{r[6]:.1f}", f"{r[7]:.1f}", *[r[8][c] for c in schema.CAUSES]])
    if args.plot:
        plot(rows, policies, sparsities, args.plot, ds.attrs.get("model", "?"))


def plot(rows, policies, sparsities, out: str, model: str) -> None:
    """Answered fraction against length: a panel per (setting, sparsity), a line per policy with its
    95% Wilson band (cells whose full cache answers nothing are left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(r[1] for r in rows))
    lengths = sorted({r[0] for r in rows})
    fig, axes = plt.subplots(
        len(settings),
        len(sparsities),
        figsize=(3.2 * len(sparsities), 2.8 * len(settings) + 0.8),
        squeeze=False,
    )
    colours = plt.get_cmap("tab10")
    for i, setting in enumerate(settings):
        for j, sp in enumerate(sparsities):
            ax = axes[i, j]
            for c, pol in enumerate(policies):
                pts = [r for r in rows if r[1] == setting and r[2] == pol and r[3] == sp and r[5] > 0]
                if not pts:
                    continue
                shift = 2 ** (0.025 * (c - len(policies) / 2))  # policies that coincide stay visible
                x = [r[0] * shift for r in pts]
                style = ["-", "--", ":", "-."][c % 4]
                marker = "os^vDxP*"[c % 8]
                ax.plot(
                    x,
                    [r[4] / r[5] for r in pts],
                    style,
                    marker=marker,
                    color=colours(c % 10),
                    label=pol,
                    ms=4,
                )
                ax.fill_between(
                    x, [r[6] / 100 for r in pts], [r[7] / 100 for r in pts], color=colours(c % 10), alpha=0.08
                )
            ax.set_xscale("log", base=2)
            ax.set_xticks(lengths, [f"{n // 1024}k" for n in lengths])
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(f"{setting}, sparsity {sp:g}", fontsize=9)
            ax.set_xlabel("length", fontsize=8)
            if j == 0:
                ax.set_ylabel("answered (of full-cache answers)", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(7, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(f"{model}: the model's answer under each policy's cache, 95% Wilson bands", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(out, dpi=120)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
