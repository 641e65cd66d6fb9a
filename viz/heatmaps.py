"""Length × depth heatmaps, the field's standard NIAH figure: one panel per policy.

x = context length, y = needle depth (0 at the top), colour = accuracy on a fixed 0..1 scale with
the classic red -> amber -> green map, the value written in each cell.
"""

from __future__ import annotations

import holoviews as hv
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
