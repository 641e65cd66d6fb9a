"""Reading a RUN.zarr for analysis: its plan (what is there and finished) and one document-layer's
statistics, checked: a missing or corrupt chunk is an error naming the document, layer and variable.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import zarr

from analyze.errors import UsageError
from analyze.policies.base import STATISTICS, DocLayer
from dump import schema


class CorruptChunk(UsageError):
    """A chunk of the store is missing or fails its checksum."""


@dataclass
class StorePlan:
    """What a RUN.zarr holds: its lengths, grid and model shape, and which documents are finished."""

    path: str
    kv_heads: int
    lengths: list[int]
    depths: np.ndarray
    samples: int
    layers: int
    heads: int
    done: dict  # length -> (depth, sample) bool
    retrieved: dict  # length -> (depth, sample) bool
    blocks: dict  # length -> stored block size B
    attrs: dict
    rows: dict = field(default_factory=dict)  # length -> (W summed, R stored whole)

    @property
    def windows(self) -> list[int | None]:
        """Per layer: its sliding window, or None for full attention."""
        return schema.layer_windows(self.attrs["model_config"])

    @property
    def unfinished(self) -> int:
        return sum(int((~self.done[n]).sum()) for n in self.lengths)


def plan_store(path: str) -> StorePlan:
    try:
        root = zarr.open_group(path, mode="r")
    except Exception:
        raise UsageError(
            f"store {path!r} does not exist or is not a Zarr store: give a RUN.zarr made by `python -m dump`"
        ) from None
    schema.check_version(schema.RUN_KIND, dict(root.attrs), path)
    lengths = schema.lengths_in(root)
    if not lengths:
        raise UsageError(
            f"store {path!r} holds no length groups (len_N): was the dump interrupted before its first document?"
        )
    cfg = root.attrs["model_config"]
    done, retrieved, blocks, rows = {}, {}, {}, {}
    for n in lengths:
        g = root[schema.group_name(n)]
        blocks[n] = int(g.attrs["block"])
        rows[n] = (int(g.attrs["window"]), int(g["window"].shape[-2]))
        done[n] = _read(g, "done", (), path, n).astype(bool)
        retrieved[n] = _read(g, "retrieved", (), path, n).astype(bool)
    depths = np.asarray(root[schema.group_name(lengths[0])]["depth"][:])
    return StorePlan(
        path,
        int(cfg["kv_heads"]),
        lengths,
        depths,
        done[lengths[0]].shape[1],
        int(cfg["layers"]),
        int(cfg["heads"]),
        done,
        retrieved,
        blocks,
        dict(root.attrs),
        rows,
    )


@functools.lru_cache(maxsize=8)
def _open(path: str):
    return zarr.open_group(path, mode="r")


def _where(length: int, index: tuple) -> str:
    names = ("depth", "sample", "layer")
    return f"length {length}" + "".join(f", {k} {int(v)}" for k, v in zip(names, index))


def _read(g, var: str, index: tuple, path: str, length: int) -> np.ndarray:
    """One chunk-aligned read; a checksum failure or unreadable chunk names what it was."""
    try:
        return np.asarray(g[var][index])
    except (ValueError, RuntimeError, OSError) as err:
        raise CorruptChunk(
            f"store {path!r}: variable {var} of {_where(length, index)} cannot be read "
            f"({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else 'corrupt chunk'}); "
            f"re-dump that document (delete its `done` entry) or pass --skip-corrupt"
        ) from None


def _checked(g, var: str, index: tuple, path: str, length: int) -> np.ndarray:
    """A float statistic: NaN anywhere means its chunk is missing on disk (NaN is the fill value)."""
    a = _read(g, var, index, path, length)
    if a.dtype.kind == "f" and np.isnan(a).any():
        raise CorruptChunk(
            f"store {path!r}: variable {var} of {_where(length, index)} is missing on disk; "
            f"re-dump that document (delete its `done` entry) or pass --skip-corrupt"
        )
    return a


def load_doclayer(
    path: str, length: int, d: int, s: int, layer: int, kv_heads: int, seed: int, reads=STATISTICS
) -> tuple[DocLayer, np.ndarray]:
    """The statistics `reads` of one document-layer (float16 ones as float32), and its passkey mask."""
    g = _open(path)[schema.group_name(length)]
    index = (d, s, layer)
    stats = {}
    for var in STATISTICS:
        if var == "window_sum" and var in reads and var not in g:  # schema 2.0: every W row is stored
            rows = _checked(g, "window", index, path, length).astype(np.float32)
            stats[var] = rows.astype(np.float64).sum(axis=1).astype(np.float32)
        elif var in reads:
            a = _checked(g, var, index, path, length)
            stats[var] = a.astype(np.float32) if a.dtype == np.float16 else a
    if "window" in stats:
        final = stats["window"][:, -1, :]
    else:
        final = _checked(g, "window", (d, s, layer, slice(None), -1), path, length).astype(np.float32)
    needle = _read(g, "needle", (d, s), path, length).astype(bool)
    if not needle.any():
        raise CorruptChunk(
            f"store {path!r}: the passkey mask `needle` of {_where(length, (d, s))} is empty (its chunk is "
            f"missing on disk); re-dump that document or pass --skip-corrupt"
        )
    x = DocLayer(
        final_row=final,
        block=int(g.attrs["block"]),
        kv_heads=kv_heads,
        seed=seed,
        observed=int(g.attrs["window"]),
        **stats,
    )
    return x, needle
