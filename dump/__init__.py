"""The dump stage. What other stages may use of it (imported lazily: `import dump` is cheap):
`DumpOptions` and `run_dump` (the whole dump of a plan into a RUN.zarr, locked while it runs)."""

from __future__ import annotations

import importlib

_PUBLIC = {"DumpOptions": ("dump.options", "DumpOptions"), "run_dump": ("dump.run", "run_dump")}
__all__ = list(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        module, attr = _PUBLIC[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'dump' has no attribute {name!r}")
