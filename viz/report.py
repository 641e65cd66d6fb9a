"""The report folder: interactive HTML figures, PNGs for papers, summary.csv and index.html.

Every HTML file is self-contained (Bokeh inlined, PNGs as data URIs): it opens offline.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import holoviews as hv
import numpy as np
import pandas as pd
import xarray as xr

from analyze import kept_sets_scored
from core import intervals, schema
from viz import calibration, curves, heatmaps, keptset, leaderboard
from viz.select import cell_mean, default_metric, mean_interval, per_document

_CDN_LINK = re.compile(r'<link[^>]*href="https?://[^"]*"[^>]*>\s*')
# Panel's extension registers an ES-module shim served from its own server; a saved page needs none
_SERVER_SCRIPT = re.compile(r'<script[^>]*src="static/[^"]*"[^>]*>\s*</script>\s*')


def offline_html(path: Path) -> None:
    """Drop the favicon links Panel adds from its CDN: nothing in the page reaches the network."""
    text = path.read_text(encoding="utf-8")
    path.write_text(_SERVER_SCRIPT.sub("", _CDN_LINK.sub("", text)), encoding="utf-8")


def save_html(obj, path: Path, title: str) -> Path:
    hv.save(obj, str(path), backend="bokeh", resources="inline", title=title)
    offline_html(path)
    return path


def save_bokeh(model, path: Path, title: str) -> Path:
    from bokeh.io import save
    from bokeh.resources import INLINE

    save(model, filename=str(path), resources=INLINE, title=title)
    offline_html(path)
    return path


def plt_close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def save_png(obj, path: Path, dpi: int = 150) -> Path:
    hv.save(obj, str(path), backend="matplotlib", fmt="png", dpi=dpi)
    return path


def summary_table(results: xr.Dataset) -> pd.DataFrame:
    """One row per policy × sparsity × length: each metric's mean over the cell's documents (depths ×
    samples), its 95% interval by the metric's kind (`core.intervals`) and n."""
    cols = {}
    names = [
        *(schema.ANSWER_METRICS if "answer" in results else ()),
        *[(metric, subset) for metric in schema.HEAD_METRICS for subset in schema.SUBSETS],
    ]
    for item in names:
        metric, subset = (item, "all") if isinstance(item, str) else item
        col = metric if isinstance(item, str) else f"{metric}_{subset}"
        docs = per_document(results, metric, subset).drop_vars("subset", errors="ignore")
        mean, lo, hi, n = mean_interval(docs, ["depth"], metric)
        cols.update({col: mean, f"{col}_lo": lo, f"{col}_hi": hi, f"{col}_n": n})
        if col == "answer":
            cols["answer_given_full"] = results.answer_given_full.mean("depth")
    df = xr.Dataset(cols).to_dataframe().reset_index()
    df["documents"] = [int(results.done.sel(length=n).sum()) for n in df["length"]]
    df["budget"] = [
        int(results.budget.sel(sparsity=s, length=n)) for s, n in zip(df["sparsity"], df["length"])
    ]
    keep = [schema.POLICY, "sparsity", "length", "budget", "documents", *cols]
    return df[keep].sort_values(
        [schema.POLICY, "sparsity", "length"], key=lambda c: c.map(_order(results, c.name))
    )


def _order(results, name):
    if name == schema.POLICY:
        order = {m: i for i, m in enumerate(results[schema.POLICY].values)}
        return lambda v: order.get(v, 0)
    return lambda v: v


def report_key(results_path: str, store: str | None, dpi: int) -> dict:
    """What a report is made from: its RESULTS' identity and the viz options (the RUN store of the
    kept-set pictures by its identity). Written into the report's marker; the pipeline redraws when
    it differs."""
    from core.provenance import results_identity, run_identity

    run = run_identity(store) if store else None
    return {
        "results": results_identity(results_path),
        "options": {
            "dpi": dpi,
            "keptset_store": run and {k: run[k] for k in ("created", "settings", "documents")},
        },
    }


def build_atomic(
    results_path: str, out: str, store: str | None = None, dpi: int = 150, progress=print
) -> Path:
    """`build` into a temporary sibling folder, then swap it in: a failed or interrupted run leaves
    nothing at `out`, and an earlier report there (marked as ours) is replaced whole."""
    import shutil

    from core import outputs
    from core.errors import check_signals

    target = outputs.local_path(out)
    tmp = outputs.temporary_sibling(target)
    try:
        build(results_path, str(tmp), store=store, dpi=dpi, progress=progress)
        key = json.dumps(report_key(results_path, store, dpi), sort_keys=True)
        marker = "a report written by `python -m viz`; it may be replaced whole"
        (tmp / outputs.REPORT_MARKER).write_text(f"{marker}\n{key}\n")
        check_signals()
        outputs.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"viz: report at {target / 'index.html'}")
    return target / "index.html"


def side_by_side(everything: xr.Dataset) -> pd.DataFrame:
    """Per policy and sparsity, each setting's answer accuracy (with --answers) and needle_hit (all
    heads, retrieval heads), means over lengths, depths and samples: aware and agnostic side by side."""
    from core.schema import in_setting

    cols = {}
    for name in map(str, everything[schema.SETTING].values):
        one = in_setting(everything, name)
        metrics = (["answer"] if "answer" in one else []) + ["needle_hit"]
        for metric in metrics:
            for subset in ("all", "retrieval") if metric != "answer" else ("all",):
                label = metric if metric == "answer" else f"{metric} {subset}"
                grid = cell_mean(one, metric, subset).mean(["length", "depth"])
                cols[f"{label} ({name})"] = grid.drop_vars(["subset", schema.SETTING], errors="ignore")
    df = xr.Dataset(cols).to_dataframe().reset_index()
    return df.sort_values([schema.POLICY, "sparsity"], key=lambda c: c.map(_order(everything, c.name)))


def build(results_path: str, out: str, store: str | None = None, dpi: int = 150, progress=print) -> Path:
    from core.schema import in_setting

    hv.extension("bokeh", "matplotlib", logo=False)
    everything = schema.open_results(results_path).load()
    names = [str(x) for x in everything[schema.SETTING].values]
    results = in_setting(everything, names[0])  # the first setting drives the figures; the others follow
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, Path, str]] = []  # (title, file, explanation)
    sparsities = [float(s) for s in results.sparsity.values]

    progress("viz: heatmaps")
    save_bokeh(heatmaps.interactive(results), outdir / "heatmaps.html", "NIAH heatmaps")
    pngs = []
    if "answer" in results:  # the classic NIAH map: does the model still answer?
        for s in sparsities:
            p = save_png(
                heatmaps.figure(results, s, "answer", "all", backend="matplotlib"),
                outdir / f"heatmap_answer_s{s:g}.png",
                dpi,
            )
            pngs.append((f"answer (the model's own answer under the pruned cache), sparsity {s:g}", p))
    for s in sparsities:
        for subset in schema.SUBSETS:
            p = save_png(
                heatmaps.figure(results, s, "needle_hit", subset, backend="matplotlib"),
                outdir / f"heatmap_needle_hit_{subset}_s{s:g}.png",
                dpi,
            )
            pngs.append((f"needle_hit, {subset} heads, sparsity {s:g}", p))
    for name in names[1:]:  # every other setting: its interactive heatmaps and its answer / needle_hit maps
        other = in_setting(everything, name)
        save_bokeh(heatmaps.interactive(other), outdir / f"heatmaps_{name}.html", f"NIAH heatmaps ({name})")
        figures.append(
            (
                f"Heatmaps, {name} setting",
                outdir / f"heatmaps_{name}.html",
                f"As the heatmaps above, {name} setting.",
            )
        )
        for s in sparsities:
            metric = "answer" if "answer" in other else "needle_hit"
            p = save_png(
                heatmaps.figure(other, s, metric, "all", backend="matplotlib"),
                outdir / f"heatmap_{metric}_{name}_s{s:g}.png",
                dpi,
            )
            pngs.append((f"{metric}, {name} setting, sparsity {s:g}", p))

    if "cause" in results:  # each failed cell coloured by its cause, every setting and sparsity
        for name in names:
            for s in sparsities:
                path = outdir / f"causes_{name}_s{s:g}.png"
                fig = heatmaps.cause_figure(in_setting(everything, name), s, name, dpi=dpi)
                fig.savefig(path, dpi=dpi)
                plt_close(fig)
                pngs.append((f"why answers failed (cause per cell), {name} setting, sparsity {s:g}", path))

    progress("viz: curves")
    pols = list(results[schema.POLICY].values)
    metric = default_metric(results)
    curve_layout = hv.Layout(
        [curves.vs_length(results, s, metric) for s in sparsities] + [curves.vs_sparsity(results, metric)]
    ).cols(2)
    save_html(curve_layout, outdir / "curves.html", "Accuracy curves")
    variants = [p for p in pols if str(p).startswith("cab")]  # the CAB family against H2O
    if variants and "h2o" in pols:
        diffs = hv.Layout(
            [curves.difference(results, v, "h2o", s, metric) for v in variants for s in sparsities]
        ).cols(len(sparsities))
        save_html(diffs, outdir / "difference_cab_h2o.html", "CAB − h2o")
        for name in names:  # one PNG per setting and sparsity, every CAB variant side by side
            one = in_setting(everything, name)
            for s in sparsities:
                panels = [curves.difference(one, v, "h2o", s, metric, backend="matplotlib") for v in variants]
                p = save_png(
                    hv.Layout(panels)
                    .cols(min(3, len(panels)))
                    .opts(sublabel_format="", backend="matplotlib"),
                    outdir / f"difference_cab_h2o_{name}_s{s:g}.png",
                    dpi,
                )
                pngs.append((f"CAB − h2o, {metric} (its mean per cell), {name} setting, sparsity {s:g}", p))

    if "answer" in results:
        progress("viz: calibration")
        save_html(calibration.figure(results), outdir / "calibration.html", "Proxy vs answer")
        p = save_png(calibration.figure(results, backend="matplotlib"), outdir / "calibration.png", dpi)
        pngs.insert(len(sparsities), ("proxy vs answer (calibration)", p))
        figures.append(
            (
                "Proxy vs answer",
                outdir / "calibration.html",
                "Per policy and sparsity: how often the best proxy rule says the needle is kept (x) against how "
                "often the model really answers (y), over the documents the full cache answers.",
            )
        )

    if store:
        progress("viz: kept sets")
        n = int(results.length.values[0])
        layer = (
            int(results.layer.values[results.retrieval_head.any("head").values][0])
            if bool(results.retrieval_head.any())
            else 0
        )
        head = (
            int(np.flatnonzero(results.retrieval_head.sel(layer=layer).values)[0])
            if bool(results.retrieval_head.sel(layer=layer).any())
            else 0
        )
        d = int(np.argmin(np.abs(results.depth.values - 0.5)))
        sets = kept_sets_scored(results, store, n, d, 0, layer, sparsities=[sparsities[0]])
        save_html(
            hv.Layout([keptset.picture(sets), keptset.block_map(store, n, d, 0, layer, head)]).cols(1),
            outdir / "keptset.html",
            "Kept sets",
        )
        figures.append(
            (
                "Kept sets",
                outdir / "keptset.html",
                f"Which keys each policy keeps in one {n}-token document (layer {layer}, a retrieval layer), "
                "per head; the passkey is red, the question blue. Below: that head's block map of attention.",
            )
        )

    figures[:0] = [
        (
            "Heatmaps (interactive)",
            outdir / "heatmaps.html",
            "Needle accuracy per context length (x) and needle depth (y, 0 = start), one panel per policy; "
            "widgets choose sparsity, metric and head subset.",
        ),
        (
            "Curves",
            outdir / "curves.html",
            "Accuracy against context length (one plot per sparsity) and against sparsity, mean over depths "
            "with a 95% band across samples.",
        ),
    ]
    if (outdir / "difference_cab_h2o.html").exists():
        figures.append(
            (
                "cab − h2o",
                outdir / "difference_cab_h2o.html",
                "Head-to-head: positive (blue) where curvature keeps the needle more often than H2O.",
            )
        )

    table = pd.concat(
        [summary_table(in_setting(everything, name)).assign(setting=name) for name in names],
        ignore_index=True,
    )
    table = table[["setting", *[c for c in table.columns if c != "setting"]]]
    table.to_csv(outdir / "summary.csv", index=False, float_format="%.4f")
    settings_table = side_by_side(everything)
    settings_table.to_csv(outdir / "settings.csv", index=False, float_format="%.4f")
    ranked = {name: leaderboard.table({"study": everything}, name) for name in names}
    pd.concat([t.assign(setting=name) for name, t in ranked.items()], ignore_index=True).to_csv(
        outdir / "leaderboard.csv", index=False, float_format="%.2f"
    )
    split = None
    if "cause" in everything:
        split = leaderboard.cause_split(everything)
        split.to_csv(outdir / "causes.csv", index=False)
        save_html(leaderboard.cause_bars(split), outdir / "causes.html", "Why answers failed")
        figures.append(
            (
                "Why answers failed",
                outdir / "causes.html",
                "Per policy and sparsity, the failed answers (the full cache answers, the pruned cache does "
                "not) by cause: distracted, partial, evicted, kept but unused.",
            )
        )
    write_index(results, outdir, figures, pngs, table, ranked, split)
    return outdir / "index.html"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def leaderboard_html(ranked: dict, split: pd.DataFrame | None) -> list[str]:
    """The ranked policy × sparsity tables (one per setting), ρ against kvpress, the cause split."""
    parts = [
        "<h2>Leaderboard</h2><p>Policies ranked by their mean score ×100 over sparsities (the model's "
        "answer, RULER's string_match_all, where answers were decoded; else needle_hit), each sparsity "
        "with its 95% interval over documents; also in <a href='leaderboard.csv'>leaderboard.csv</a>. "
        "Spearman's ρ compares the order at sparsity 0.5 with kvpress's published one (Llama-3.1-8B, "
        "RULER 4k) over the policies both score.</p>"
    ]
    for name, t in ranked.items():
        rho, k, _ = leaderboard.spearman_vs_kvpress(t, 0.5)
        full = t.attrs.get("full", float("nan"))
        note = f"ρ = {rho:.2f} over {k} policies" if np.isfinite(rho) else f"ρ needs 3 shared policies ({k})"
        parts.append(f"<h3>{html.escape(name)}</h3><p>full cache {full:.1f}; vs kvpress at 0.5: {note}.</p>")
        parts.append(leaderboard.html_table(t))
    if split is not None:
        parts.append(
            "<h3>Why answers failed</h3><p>Failed answers where the full cache answers, by cause "
            "(<a href='causes.csv'>causes.csv</a>): <i>distracted</i> gives a distractor's value; "
            "<i>partial</i> some of the values; <i>evicted</i>: no retrieval head keeps every target "
            "value whole; <i>kept but unused</i>: one does, the answer is still wrong.</p>"
        )
        parts.append(split[split.failed > 0].to_html(index=False))
    return parts


def write_index(results, outdir: Path, figures, pngs, table: pd.DataFrame, ranked=None, split=None) -> None:
    rho = results.curvature_mass_spearman.mean(["length", "depth", "sample", "layer", "head"]).to_pandas()
    jac = results.jaccard.mean(["length", "depth", "sample", "layer", "head"]).to_pandas()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>NIAH pruning report</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
        "h2{margin-top:2em}</style></head><body>",
        "<h1>Do KV-cache pruning policies keep the needle?</h1>",
        f"<p>Model <b>{html.escape(str(results.attrs.get('model', '')))}</b>, store "
        f"<code>{html.escape(str(results.attrs.get('source_store', '')))}</code>. Budget rule: "
        f"{html.escape(str(results.attrs.get('budget_rule', '')))}; kept sets per {html.escape(str(results.attrs.get('gqa', '')))} head. "
        f"Retrieval heads: {html.escape(str(results.retrieval_head.attrs.get('rule', '')))}.</p>",
        f"<p>The model itself answered in {int(results.retrieved.sum())} of "
        f"{int(results.done.sum())} documents under full attention. Figures below are of the "
        f"<b>{html.escape(str(results.attrs.get('setting', 'aware')))}</b> setting unless they say otherwise.</p>",
    ]
    if ranked:
        parts.append(
            "<p>Settings: aware: the question's rows are in every statistic and the cache is pruned after "
            "the question; agnostic: the context is compressed before the question is known (each "
            "setting's means side by side: <a href='settings.csv'>settings.csv</a>).</p>"
        )
        parts += leaderboard_html(ranked, split)
    parts.append("<h2>Interactive figures</h2><ul>")
    parts += [f"<li><a href='{f.name}'>{html.escape(t)}</a>: {html.escape(e)}</li>" for t, f, e in figures]
    parts.append("</ul><h2>Heatmaps</h2>")
    for title, p in pngs:
        parts.append(f"<h3>{html.escape(title)}</h3>{_img(p)}")
    parts.append(
        "<h2>Is curvature magnitude in disguise?</h2><p>Spearman correlation of each curvature score "
        "with block attention mass (1 = same ranking as magnitude):</p>"
    )
    parts.append(rho.to_frame("spearman").to_html(float_format="%.3f"))
    parts.append("<p>Jaccard overlap of kept sets:</p>" + jac.to_html(float_format="%.3f"))
    if "calibration" in results:
        parts.append("<h2>How far the proxy can be trusted</h2>" + calibration.table_html(results))
    parts.append(
        "<h2>Summary</h2><p>Also in <a href='summary.csv'>summary.csv</a>. Each mean is over the "
        "documents of its cell (depths × samples) and has its 95% interval (`_lo`, `_hi`) and its "
        "count (`_n`): Wilson's for 0/1 outcomes, a seeded bootstrap for fractions.</p>"
    )
    few = [c for c in table.columns if c.endswith("_n") and (table[c] < intervals.FEWEST).any()]
    if few:
        least = int(min(table[c].min() for c in few))
        parts.append(
            f"<p><b>Few documents:</b> some cells count as few as {least} (fewer than "
            f"{intervals.FEWEST}); their intervals are wide, and the curves draw no band there.</p>"
        )
    parts.append(table.to_html(index=False, float_format="%.3f"))
    parts.append("</body></html>")
    (outdir / "index.html").write_text("\n".join(parts), encoding="utf-8")
