"""Settings: which query rows a policy may see, and when the answer pass prunes the cache.

A setting is one `Setting` subclass registered by name. It says which statistics of a
document-layer a policy may read (`hides`: `DocLayer` fields; reading one raises `HiddenRows`),
which stored variables they are read from (`stored`: e.g. statistics of the context's own rows),
and how many prompt tokens the answer pass prefills before the cache is pruned (`prune_after`).
- `aware`: the question's rows are in every statistic, and the cache is pruned after the prompt,
  the question included, was prefilled (all but its last token, which the answer pass decodes
  through the pruned cache).
- `agnostic` (kvpress's default): the cache of the context is compressed before any question is
  seen. A policy sees the context alone (`context_only`): the statistics of the context's own rows
  (RUN.zarr `*_ctx`, recorded by the same forward), cut at the question's first token C, its final
  row the last context row; no question row or key exists in its view. It keeps k = round((1 - s) C)
  context keys per head; the answer pass prefills the context, prunes, then feeds the question
  (attending to the kept context and itself) and decodes. The question's tokens are always kept.
"""

from __future__ import annotations

import numpy as np

from core import schema
from core.errors import UsageError


class HiddenRows(UsageError):
    """A policy read a statistic its setting hides."""


class Setting:
    name = "setting"
    hides: tuple[str, ...] = ()  # DocLayer fields (statistics, final_row) a policy may not read
    stored: dict = {}  # statistic -> the RUN variable it is read from in this setting (default: its name)
    context_only = False  # policies see the context alone (cut at the question's first token)

    def prune_after(self, n: int, question: np.ndarray) -> int:
        """Prompt tokens prefilled with the full cache before the kept sets apply."""
        raise NotImplementedError  # pragma: no cover - interface


class Aware(Setting):
    """Query-aware: every statistic includes the question's rows; pruned after the whole prompt."""

    name = "aware"

    def prune_after(self, n: int, question: np.ndarray) -> int:
        return n - 1


class Agnostic(Setting):
    """Query-agnostic: the context's own statistics, cut before the question; pruned before it is read."""

    name = "agnostic"
    context_only = True

    stored = {
        name: name + schema.CONTEXT for name in (*schema.RUN_STATISTICS, "query_mean", "query_cov", "kvzip")
    }

    def prune_after(self, n: int, question: np.ndarray) -> int:
        return int(np.flatnonzero(question)[0])


REGISTRY: dict[str, Setting] = {}


def register(cls: type[Setting]) -> type[Setting]:
    if not (isinstance(cls, type) and issubclass(cls, Setting)):
        raise TypeError(f"{cls!r} is not a subclass of Setting")
    REGISTRY[cls.name] = cls()
    return cls


def get(name: str) -> Setting:
    if name not in REGISTRY:
        raise UsageError(f"unknown setting {name!r}: use one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def parse_setting(value: str) -> str:
    value = str(value).strip()
    if value not in REGISTRY:
        raise ValueError(f"is not a setting: use one of {', '.join(REGISTRY)}")
    return value


register(Aware)
register(Agnostic)
