"""Length × depth heatmaps, the field's standard NIAH figure: one panel per policy.

x = context length, y = needle depth (0 at the top), colour = accuracy on a fixed 0..1 scale with
the classic red -> amber -> green map, the value written in each cell.
"""

from __future__ import annotations

import holoviews as hv
import numpy as np
import xarray as xr

from core.schema import POLICY
from viz.select import METRICS, NIAH_CMAP, cell_mean, full_cache_note, length_label, metrics_of, subsets


def _cells(grid: xr.DataArray) -> list[tuple]:
    """(length label, depth label, value) rows of one (length, depth) grid."""
    return [
        (length_label(int(n)), f"{float(d):.2f}", round(float(grid.sel(length=n, depth=d)), 2))
        for n in grid.length.values
        for d in grid.depth.values
    ]


def policy_panel(
    grid: xr.DataArray, title: str, backend: str = "bokeh", label: str = "needle_hit"
) -> hv.Element:
    hm = hv.HeatMap(
        _cells(grid), kdims=["length", "depth"], vdims=[hv.Dimension("value", label=label, range=(0, 1))]
    )
    if backend == "matplotlib":
        return hm.opts(
            cmap=NIAH_CMAP,
            clim=(0, 1),
            invert_yaxis=True,
            title=title,
            show_values=True,
            colorbar=False,
            backend="matplotlib",
        )
    hm = hm.opts(
        cmap=NIAH_CMAP,
        clim=(0, 1),
        invert_yaxis=True,
        title=title,
        tools=["hover"],
        width=260,
        height=240,
        colorbar=False,
        toolbar=None,
        backend="bokeh",
    )
    return hm * hv.Labels(hm).opts(text_font_size="9pt", text_color="black", backend="bokeh")


def figure(
    results: xr.Dataset,
    sparsity: float,
    metric: str = "needle_hit",
    subset: str = "all",
    backend: str = "bokeh",
    policies_shown=None,
) -> hv.Layout:
    """One figure per sparsity: a panel per policy."""
    cells = cell_mean(results, metric, subset).sel(sparsity=sparsity)
    policies_shown = list(policies_shown or results[POLICY].values)
    panels = [policy_panel(cells.sel({POLICY: m}), str(m), backend, metric) for m in policies_shown]
    cols = min(4, len(panels))
    heads = "" if metric in ("answer", "answer_digits") else f" ({subset} heads)"
    title = f"{metric}{heads} at sparsity {sparsity:g}; {full_cache_note(results)}"
    layout = hv.Layout(panels).cols(cols)
    if backend == "matplotlib":
        return layout.opts(hv.opts.Layout(title=title, sublabel_format="", backend="matplotlib"))
    return layout.opts(hv.opts.Layout(title=title, backend="bokeh"))


def frame_key(sparsity: float, metric: str, subset: str) -> str:
    return f"{sparsity:g}|{metric}|{subset}"


def interactive(results: xr.Dataset):
    """A Bokeh document with widgets for sparsity, metric and head subset (all / retrieval / one layer).

    Each policy's panel is drawn by HoloViews once; every (sparsity, metric, subset) frame travels as
    extra columns of the panel's data source and a widget swaps them in the browser, so the page stays
    small and needs no server (a HoloMap would render every frame as a separate plot).
    """
    from bokeh.layouts import column, gridplot, row
    from bokeh.models import CustomJS, Select

    sparsities = [float(s) for s in results.sparsity.values]
    offered = subsets(results)
    offered_metrics = metrics_of(results)
    keys = [(s, m, h) for s in sparsities for m in offered_metrics for h in offered]
    grids = {(m, h): cell_mean(results, m, h) for m in offered_metrics for h in offered}
    first = keys[0]
    rects, texts, fields, figures = [], [], [], []
    for policy in results[POLICY].values:
        plot = hv.render(
            policy_panel(grids[first[1:]].sel({POLICY: policy, "sparsity": first[0]}), str(policy))
        )
        for r in plot.renderers:
            src = r.data_source
            cells = list(zip(src.data["length"], src.data["depth"]))
            for s, m, h in keys:
                grid = grids[(m, h)].sel({POLICY: policy, "sparsity": s})
                lookup = {(a, b): v for a, b, v in _cells(grid)}
                values = [lookup[c] for c in cells]
                if "zvalues" in src.data:
                    src.data[frame_key(s, m, h)] = values
                else:
                    src.data["t:" + frame_key(s, m, h)] = [f"{v:.2f}" for v in values]
            if "zvalues" in src.data:
                rects.append(src)
            else:  # the labels glyph reads its text from a column named after the value dimension
                text = r.glyph.text
                field = text if isinstance(text, str) else getattr(text, "field", None) or text["field"]
                texts.append(src)
                fields.append(field)
        figures.append(plot)
    widgets = [
        Select(title="sparsity", value=f"{sparsities[0]:g}", options=[f"{s:g}" for s in sparsities]),
        Select(title="metric", value=offered_metrics[0], options=list(offered_metrics)),
        Select(title="heads", value=offered[0], options=offered),
    ]
    swap = CustomJS(
        args=dict(rects=rects, texts=texts, fields=fields, s=widgets[0], m=widgets[1], h=widgets[2]),
        code="""
        const key = s.value + '|' + m.value + '|' + h.value;
        for (const src of rects) { src.data['zvalues'] = src.data[key]; src.change.emit(); }
        texts.forEach((src, i) => { src.data[fields[i]] = src.data['t:' + key]; src.change.emit(); });
    """,
    )
    for w in widgets:
        w.js_on_change("value", swap)
    return column(row(*widgets), gridplot(figures, ncols=min(4, len(figures)), toolbar_location=None))


def by_task(results: dict):
    """One page of `interactive` heatmaps for several RESULTS (one per task: `{task: Dataset}`), with
    a task selector and a setting selector (every setting any of them has); the panel of the chosen
    (task, setting) is shown, the others hidden, all in the browser."""
    from bokeh.layouts import column, row
    from bokeh.models import CustomJS, Div, Select

    from core import schema

    panels, keys, settings = [], [], []
    for task, ds in results.items():
        names = [str(x) for x in ds[schema.SETTING].values] if schema.SETTING in ds.dims else ["aware"]
        for name in names:
            settings += [name] if name not in settings else []
            panel = column(
                Div(text=f"<b>{task}</b>, {name} setting"), interactive(schema.in_setting(ds, name))
            )
            panel.visible = not panels
            panels.append(panel)
            keys.append(f"{task}|{name}")
    task = Select(title="task", value=next(iter(results)), options=list(results))
    setting = Select(title="setting", value=keys[0].split("|", 1)[1], options=settings)
    show = CustomJS(
        args=dict(panels=panels, keys=keys, t=task, s=setting),
        code="const k = t.value + '|' + s.value; panels.forEach((p, i) => { p.visible = keys[i] === k; });",
    )
    task.js_on_change("value", show)
    setting.js_on_change("value", show)
    return column(row(task, setting), *panels)


__all__ = ["figure", "interactive", "by_task", "frame_key", "policy_panel", "METRICS"]


# each (length, depth) cell's outcome over its samples, for the cause map: index -> (name, colour)
OUTCOMES = (
    ("answered", "#1a9850"),
    ("distracted", "#984ea3"),  # then `core.schema.CAUSES` in order
    ("partial", "#fee08b"),
    ("evicted", "#d73027"),
    ("kept but unused", "#fc8d59"),
    ("full cache fails", "#bdbdbd"),
)
SHORT = {"answered": "ok", "distracted": "d", "partial": "p", "evicted": "e", "kept but unused": "k"}


def outcomes(answer: np.ndarray, retrieved: np.ndarray, cause: np.ndarray, done: np.ndarray) -> np.ndarray:
    """Per document (broadcastable arrays), the index in `OUTCOMES`: answered, its failure's cause
    (`analyze.causes`: distracted, partial, evicted, kept but unused), or the full cache fails; -1 for
    a document not scored."""
    answer, retrieved, cause, done = np.broadcast_arrays(answer, retrieved, cause, done)
    out = np.where(cause >= 0, cause + 1, 0).astype(np.int8)
    out[~retrieved.astype(bool)] = len(OUTCOMES) - 1
    out[~done.astype(bool) | ~np.isfinite(answer)] = -1
    return out


def cell_outcome(codes: np.ndarray) -> tuple[int, str]:
    """A cell's colour (its most frequent outcome; among equals the failure, the first cause) and text
    (each outcome's count, e.g. `e2 k1`), from the outcome codes of its samples."""
    codes = codes[codes >= 0]
    if codes.size == 0:
        return -1, ""
    counts = np.bincount(codes, minlength=len(OUTCOMES))
    order = [*range(1, len(OUTCOMES)), 0]  # ties go to a failure: a cell never looks better than it is
    top = max(order, key=lambda i: (counts[i], -order.index(i)))
    if top == len(OUTCOMES) - 1:
        return top, "full fails"
    text = " ".join(f"{SHORT[OUTCOMES[i][0]]}{counts[i]}" for i in range(len(OUTCOMES) - 1) if counts[i])
    return top, text


def cause_figure(
    results: xr.Dataset, sparsity: float, setting: str = "", policies_shown=None, dpi: int = 150
):
    """One setting's RESULTS at one sparsity: a length × depth panel per policy, each cell coloured by
    what happened to its documents' answers (answered, or why not: `analyze.causes`), its counts
    written in it. A matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    sel = results.sel(sparsity=sparsity)
    policies_shown = list(policies_shown or results[POLICY].values)
    lengths, depths = [int(n) for n in results.length.values], [float(d) for d in results.depth.values]
    cols = min(4, len(policies_shown))
    rows = -(-len(policies_shown) // cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(0.6 + max(2.4, 1.1 * len(lengths)) * cols, 1.6 + max(1.6, 0.3 * len(depths)) * rows),
        squeeze=False,
        dpi=dpi,
    )
    cmap = ListedColormap(["#ffffff"] + [c for _, c in OUTCOMES])
    for ax, pol in zip(axes.flat, policies_shown):
        one = sel.sel({POLICY: pol})
        codes = outcomes(
            one.answer.transpose("length", "depth", "sample").values,
            one.retrieved.transpose("length", "depth", "sample").values,
            one.cause.transpose("length", "depth", "sample").values,
            one.done.transpose("length", "depth", "sample").values,
        )
        grid = np.full((len(depths), len(lengths)), -1)
        for i in range(len(lengths)):
            for j in range(len(depths)):
                grid[j, i], text = cell_outcome(codes[i, j])
                ax.text(i, j, text, ha="center", va="center", fontsize=6)
        ax.imshow(grid + 1, cmap=cmap, vmin=0, vmax=len(OUTCOMES), aspect="auto")
        ax.set_xticks(range(len(lengths)), [length_label(n) for n in lengths], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths], fontsize=6)
        ax.set_title(str(pol), fontsize=8)
    for ax in list(axes.flat)[len(policies_shown) :]:
        ax.axis("off")
    fig.suptitle(
        f"why answers failed at sparsity {sparsity:g}{f', {setting}' if setting else ''}; "
        f"{full_cache_note(results)}\neach cell: its samples' most frequent outcome, each outcome's count",
        fontsize=8,
    )
    fig.legend(
        handles=[Patch(color=c, label=f"{n} ({SHORT.get(n, '-')})") for n, c in OUTCOMES],
        loc="lower center",
        ncol=3,
        fontsize=7,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.94))
    return fig
