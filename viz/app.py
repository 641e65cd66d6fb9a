"""The interactive explorer (Panel), served on 127.0.0.1 only."""

from __future__ import annotations

import holoviews as hv
import panel as pn
import xarray as xr

from core import schema
from core.schema import POLICY
from viz import curves, heatmaps
from viz.select import metrics_of, subsets


def explorer(results: xr.Dataset) -> pn.viewable.Viewable:
    hv.extension("bokeh", logo=False)
    pn.extension()
    sparsity = pn.widgets.Select(name="sparsity", options=[float(s) for s in results.sparsity.values])
    metric = pn.widgets.Select(name="metric", options=list(metrics_of(results)))
    subset = pn.widgets.Select(name="heads", options=subsets(results))
    methods = pn.widgets.MultiChoice(
        name="policies",
        options=list(map(str, results[POLICY].values)),
        value=list(map(str, results[POLICY].values)),
    )

    def heatmap(s, m, h, ms):
        return pn.pane.HoloViews(heatmaps.figure(results, s, m, h, methods=ms or None), name="heatmap")

    def curve(s, m, h):
        return pn.pane.HoloViews(curves.vs_length(results, s, m, h))

    return pn.Row(
        pn.Column("## NIAH explorer", sparsity, metric, subset, methods, width=280),
        pn.Column(
            pn.bind(heatmap, sparsity, metric, subset, methods), pn.bind(curve, sparsity, metric, subset)
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
