"""The viz stage. What other stages may use of it (imported lazily: `import viz` is cheap):
`VizOptions` and `build_report` (a report folder from a RESULTS.zarr, replaced atomically)."""

from __future__ import annotations

import importlib

_PUBLIC = {"VizOptions": ("viz.options", "VizOptions"), "build_report": ("viz.report", "build_atomic")}
__all__ = list(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        module, attr = _PUBLIC[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'viz' has no attribute {name!r}")
