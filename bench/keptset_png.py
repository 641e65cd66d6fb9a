"""Kept-set pictures of one document for a paper: which keys each policy keeps in one layer, per
head, over the whole prompt and zoomed on the needle, as one PNG.

    python bench/keptset_png.py RUN.zarr --length 32k --depth 0 --layer 20 \
        --policies h2o,cab_high --sparsity 0.99 --setting aware --png OUT.png

The kept sets are `analyze.keptsets.kept_sets`' (the code the metrics and the answers use: same
budgets, GQA rule, seed and setting). Left: the whole prompt, each pixel the fraction of its keys
kept; right: the 2 x `--zoom` keys around the needle, one key per pixel. The needle's tokens are
red, the question's blue.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analyze.keptsets import kept_sets  # noqa: E402
from dump.options import lengths  # noqa: E402
from viz.keptset import binned  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("--length", required=True, help="the document's length (e.g. 32k)")
    p.add_argument("--depth", type=int, default=0, help="depth index in the store")
    p.add_argument("--sample", type=int, default=0)
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--policies", default="h2o,cab_high")
    p.add_argument("--sparsity", type=float, default=0.99)
    p.add_argument("--setting", default="aware")
    p.add_argument("--zoom", type=int, default=256, help="keys each side of the needle in the zoomed panel")
    p.add_argument("--png", required=True)
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = lengths(args.length)[0]
    pols = args.policies.split(",")
    sets = kept_sets(
        args.store, n, args.depth, args.sample, args.layer, pols, [args.sparsity], setting=args.setting
    )
    kept = sets.kept.isel(sparsity=0).values  # (policy, head, key)
    heads = kept.shape[1]
    needle, question = sets.needle.values.astype(bool), sets.question.values.astype(bool)
    at = np.flatnonzero(needle)
    lo, hi = max(0, int(at.min()) - args.zoom), min(n, int(at.max()) + 1 + args.zoom)
    frac, width = binned(kept.reshape(-1, n), 2048)
    fig, axes = plt.subplots(1, 2, figsize=(13, 1.2 + 0.16 * len(pols) * heads), width_ratios=(3, 2))
    for ax, img, x0, x1 in ((axes[0], frac, 0, n), (axes[1], kept.reshape(-1, n)[:, lo:hi], lo, hi)):
        ax.imshow(
            img,
            aspect="auto",
            cmap="Greys",
            vmin=0,
            vmax=1,
            extent=(x0, x1, img.shape[0], 0),
            interpolation="nearest",
        )
        for mask, colour in ((needle, "red"), (question, "royalblue")):
            for k in np.flatnonzero(mask):
                if x0 <= k < x1:
                    ax.axvspan(k, k + 1, color=colour, alpha=0.25 if colour == "red" else 0.12, lw=0)
        for i in range(1, len(pols)):
            ax.axhline(i * heads, color="orange", lw=1)
        ax.set_yticks([(i + 0.5) * heads for i in range(len(pols))], pols)
        ax.set_xlabel("key position")
    axes[0].set_title(
        f"whole prompt ({width} keys per pixel); k = {int(sets.attrs['budgets'][0])} keys per head",
        fontsize=9,
    )
    axes[1].set_title(f"keys {lo}-{hi - 1} around the needle (red), one per pixel", fontsize=9)
    held = [
        f"{pol}: {int(kept[i][:, needle].all(-1).sum())}/{heads} heads keep the whole needle"
        for i, pol in enumerate(pols)
    ]
    fig.suptitle(
        f"kept keys of one {n}-token document, layer {args.layer}, sparsity {args.sparsity:g}, "
        f"{args.setting}\n" + "; ".join(held),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(args.png, dpi=150)
    print(f"keptset_png: {args.png}; " + "; ".join(held))


if __name__ == "__main__":
    main()
