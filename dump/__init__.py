"""The dump stage. What other stages may use of it (imported lazily: `import dump` is cheap):
`DumpOptions`, `run_dump` (the whole dump of a plan into a RUN.zarr, locked while it runs) and
`check` (what `run_dump` would refuse, without writing)."""

from __future__ import annotations

from core import exports

_PUBLIC = {
    "DumpOptions": ("dump.options", "DumpOptions"),
    "run_dump": ("dump.run", "run_dump"),
    "check": ("dump.run", "check"),
}
__all__ = list(_PUBLIC)

__getattr__ = exports("dump", _PUBLIC)
