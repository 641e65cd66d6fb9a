"""What every stage shares: the store schema, the option kit, errors, output safety, the Dask client,
the RUN.zarr reader, the tasks, the settings, and everything that touches the model (`core.lm`)."""

from __future__ import annotations

import importlib


def exports(package: str, public: dict[str, tuple[str, str]]):
    """A stage's public names, imported on first use: `__getattr__` for its package (public maps a
    name to (module, attribute)); `import <stage>` stays cheap."""

    def __getattr__(name):
        if name in public:
            module, attr = public[name]
            return getattr(importlib.import_module(module), attr)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
