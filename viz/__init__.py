"""The viz stage. What other stages may use of it (imported lazily: `import viz` is cheap):
`VizOptions`, `build_report` (a report folder from a RESULTS.zarr, replaced atomically) and
`report_key` (what a report is made from, as its marker records it)."""

from __future__ import annotations

from core import exports

_PUBLIC = {
    "VizOptions": ("viz.options", "VizOptions"),
    "build_report": ("viz.report", "build_atomic"),
    "report_key": ("viz.report", "report_key"),
}
__all__ = list(_PUBLIC)

__getattr__ = exports("viz", _PUBLIC)
