"""The interactive explorer (Panel), served on 127.0.0.1 only."""

from __future__ import annotations

import holoviews as hv
import panel as pn
import xarray as xr

from core import schema
from core.schema import POLICY
from viz import curves, heatmaps
from viz.select import metrics_of, subsets


def explorer(everything: xr.Dataset) -> pn.viewable.Viewable:
    """Widgets for setting, sparsity, metric, head subset and policies over a RESULTS dataset."""
    from core.schema import in_setting

    hv.extension("bokeh", logo=False)
    pn.extension()
    names = (
        [str(x) for x in everything[schema.SETTING].values]
        if schema.SETTING in everything.dims
        else [str(everything.attrs.get("setting", "aware"))]
    )
    views = {name: in_setting(everything, name) for name in names}
    results = views[names[0]]
    setting = pn.widgets.Select(name="setting", options=names)
    sparsity = pn.widgets.Select(name="sparsity", options=[float(s) for s in results.sparsity.values])
    metric = pn.widgets.Select(name="metric", options=list(metrics_of(results)))
    subset = pn.widgets.Select(name="heads", options=subsets(results))
    shown = pn.widgets.MultiChoice(
        name="policies",
        options=list(map(str, results[POLICY].values)),
        value=list(map(str, results[POLICY].values)),
    )

    def heatmap(st, s, m, h, ms):
        return pn.pane.HoloViews(
            heatmaps.figure(views[st], s, m, h, policies_shown=ms or None), name="heatmap"
        )

    def curve(st, s, m, h):
        return pn.pane.HoloViews(curves.vs_length(views[st], s, m, h))

    return pn.Row(
        pn.Column("## NIAH explorer", setting, sparsity, metric, subset, shown, width=280),
        pn.Column(
            pn.bind(heatmap, setting, sparsity, metric, subset, shown),
            pn.bind(curve, setting, sparsity, metric, subset),
        ),
    )


def serve(results_path: str, port: int = 5006, show: bool = False):
    results = schema.open_results(results_path).load()
    return pn.serve(
        explorer(results),
        address="127.0.0.1",
        port=port,
        show=show,
        websocket_origin=[f"127.0.0.1:{port}", f"localhost:{port}"],
        title="NIAH explorer",
    )
