"""The viz stage's options, declared once: `python -m viz` flags and a config's `viz:` section are
both derived from `VizOptions` (see dump/optionkit.py)."""

from __future__ import annotations

from dataclasses import dataclass

from core.optionkit import integer, option, optional, text


@dataclass
class VizOptions:
    results: str | None = option(
        None, "RESULTS.zarr from `python -m analyze`", optional(text), positional=True, config=False
    )
    out: str | None = option(
        None,
        "report folder (default: RESULTS without .results.zarr + _report)",
        optional(text),
        config=False,
        metavar="DIR",
    )
    store: str | None = option(
        None,
        "the RUN.zarr, for kept-set pictures (default: the results' source store)",
        optional(text),
        config=False,
        metavar="PATH",
    )
    dpi: int = option(150, "PNG resolution (300 for papers)", integer(minimum=30, maximum=1200))
    keptset: bool = option(True, "no kept-set pictures (they re-read the dump)", flag=True)
    progress: bool = option(True, "no progress lines", flag=True, config=False)
