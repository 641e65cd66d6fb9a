"""Proxy vs answer: does "the needle is in the kept set" predict that the model still answers?

One point per (policy, sparsity): x = how often the best proxy rule says the needle is kept, y = how
often the model really answers, both over the documents the full cache answers. On the diagonal the
proxy is calibrated; below it the proxy is optimistic. Each policy has its own colour, and its points
are joined in order of sparsity and labelled with it.
"""

from __future__ import annotations

import holoviews as hv
import numpy as np
import xarray as xr

from analyze import proxy_rules
from core.schema import POLICY

XLABEL = "proxy says the needle is kept (share of documents)"
YLABEL = "the model answers (share of documents)"


def proxy_vs_answer(results: xr.Dataset) -> xr.Dataset:
    """(policy, sparsity) rates of the best rule's prediction and of the real answer."""
    best = results.attrs.get("calibration_best_rule") or "needle in >= 1 retrieval head"
    score = proxy_rules(results)[best]
    t = float(results.calibration.attrs.get(f"threshold: {best}", 0.5))
    answered = (results.retrieved & results.done).astype(bool)
    dims = ["length", "depth", "sample"]
    return xr.Dataset(
        {
            "proxy": (score >= t).where(answered).mean(dims),
            "answer": results.answer.where(answered).mean(dims),
        },
        attrs={"rule": best},
    )


def colours(n: int) -> list[str]:
    """n distinct colours, one per policy (Category20: 20 before any repeats)."""
    from bokeh.palettes import Category20

    palette = Category20[20][0::2] + Category20[20][1::2]  # the ten strong hues, then their light twins
    return [palette[i % len(palette)] for i in range(n)]


def figure(results: xr.Dataset, backend: str = "bokeh") -> hv.Overlay:
    """One colour per policy; its points joined in order of sparsity, each labelled with it."""
    rates = proxy_vs_answer(results)
    points = []
    for p, colour in zip(rates[POLICY].values, colours(rates.sizes[POLICY])):
        r = rates.sel({POLICY: p}).sortby("sparsity")
        data = [
            (float(x), float(y), float(s))
            for x, y, s in zip(r.proxy.values, r.answer.values, r.sparsity.values)
            if np.isfinite(x) and np.isfinite(y)
        ]
        line = hv.Curve(data, kdims=["proxy"], vdims=["answer", "sparsity"])  # unlabelled: not in the legend
        points.append(line.opts(color=colour, alpha=0.5, show_legend=False, backend=backend))
        points.append(
            hv.Scatter(data, kdims=["proxy"], vdims=["answer", "sparsity"], label=str(p)).opts(
                color=colour, backend=backend
            )
        )
        labels = hv.Labels([(x, y, f"{s:g}") for x, y, s in data], kdims=["proxy", "answer"], vdims="text")
        style = (  # the same look, in each backend's own option names
            {"color": colour, "size": 7, "show_legend": False}
            if backend == "matplotlib"
            else {"text_color": colour, "text_font_size": "8pt"}
        )
        points.append(labels.opts(xoffset=0.012, yoffset=0.012, backend=backend, **style))
    diagonal = hv.Curve([(0, 0), (1, 1)], "proxy", "answer", label="calibrated").opts(
        color="grey", backend=backend
    )
    overlay = hv.Overlay([diagonal, *points])
    title = f"proxy ({rates.attrs['rule']}) vs the model's answer, documents the full cache answers"
    if backend == "matplotlib":
        return overlay.opts(
            hv.opts.Scatter(s=40, backend="matplotlib"),
            hv.opts.Overlay(
                title=title,
                xlim=(0, 1),
                ylim=(0, 1),
                xlabel=XLABEL,
                ylabel=YLABEL,
                legend_position="right",
                legend_limit=200,  # three elements a policy: holoviews hides legends past 25
                fig_size=150,
                backend="matplotlib",
            ),
        )
    return overlay.opts(
        hv.opts.Scatter(size=9, tools=["hover"], backend="bokeh"),
        hv.opts.Overlay(
            title=title,
            width=760,
            height=480,
            xlim=(-0.02, 1.02),
            ylim=(-0.02, 1.02),
            xlabel=XLABEL,
            ylabel=YLABEL,
            legend_position="right",
            legend_limit=200,
            backend="bokeh",
        ),
    )


def table_html(results: xr.Dataset) -> str:
    t = results.calibration.to_pandas()
    note = (
        f"<p>Best rule (agreement on held-out documents): <b>{results.attrs.get('calibration_best_rule', '')}</b>. "
        f"{results.calibration.attrs.get('rule_split', '')}.</p>"
    )
    return note + t.to_html(float_format=lambda v: "nan" if np.isnan(v) else f"{v:.3f}")
