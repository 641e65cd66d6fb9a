"""The dump store RUN.zarr (schema in DESIGN.md; the contract between dump and analyze).

Zarr v3. One group per length `len_{N}`, readable with `xr.open_zarr(path, group="len_4096")`.
Per-layer variables are chunked one chunk per (document, layer), so a half-written document only
ever touches its own chunks: resuming rewrites it whole. `done[depth, sample]` is written last.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from dump.errors import UsageError
from dump.stats import LayerStats, num_blocks

SCHEMA_VERSION = "1.0"
# zstd level 1: on real attention rows level 5 is 2.8x slower for 8% smaller chunks
COMPRESSORS = (BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"), Crc32cCodec())
ANSWER_TOKENS = 8  # greedy tokens decoded after the prompt to check that the model finds the passkey
PER_LAYER = ("colsum", "window", "blocks", "qpool", "kpool", "qpool_mean", "kpool_mean")


class StoreMismatch(UsageError):
    """An existing store was made with other settings."""


def _torch_dtypes():
    import torch

    return {"float16": torch.float16, "float32": torch.float32}


TORCH_DTYPES = _torch_dtypes()


def group_name(length: int) -> str:
    return f"len_{length}"


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def check_writable(path: str) -> None:
    """Refuse a path we cannot create before any work is done."""
    if not is_local(path):
        return
    p = Path(path.removeprefix("file://")).expanduser().resolve()
    parent = p
    while not parent.exists():
        parent = parent.parent
    if p.exists() and not p.is_dir():
        raise UsageError(f"output path {path!r} is an existing file, not a store directory")
    try:  # the only honest test of writability (root passes os.access everywhere, /proc included)
        os.rmdir(tempfile.mkdtemp(prefix=".niah-probe-", dir=parent))
    except OSError:
        raise UsageError(
            f"output path {path!r} is not writable (cannot create anything in {parent})"
        ) from None


def diff_settings(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


class RunStore:
    """Open-or-create a RUN.zarr for one set of settings; write documents layer by layer."""

    def __init__(
        self, path: str, settings: dict, root_attrs: dict, overwrite: bool = False, background: bool = False
    ):
        """background=True overlaps compression and writes with the model (a GPU run); on a CPU the
        writer would steal the cores the forward pass spins on (measured: 2k-token documents 60% slower)."""
        self.path = path
        self.background = background
        self.settings = settings
        exists = self._exists()
        if exists and overwrite:
            self._remove()
            exists = False
        if exists:
            root = zarr.open_group(path, mode="r+")
            old = dict(root.attrs.get("settings", {}))
            if old != settings:
                changes = "; ".join(diff_settings(old, settings))
                raise StoreMismatch(
                    f"store {path!r} was made with other settings ({changes}): "
                    f"choose another --out or pass --overwrite to replace it"
                )
            self.root = root
        else:
            self.root = zarr.open_group(path, mode="w")
            self.root.attrs.update(
                {**root_attrs, "schema_version": SCHEMA_VERSION, "settings": settings, "created": _now()}
            )
        # chunks are independent files: several writers compress in parallel (GPU runs; `done` waits for all)
        self._writer = ThreadPoolExecutor(max_workers=4, thread_name_prefix="zarr-writer")
        self._pending: list[Future] = []

    def _exists(self) -> bool:
        try:
            zarr.open_group(self.path, mode="r")
            return True
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
            return False

    def _remove(self) -> None:
        if is_local(self.path):
            shutil.rmtree(Path(self.path.removeprefix("file://")).expanduser(), ignore_errors=True)
        else:
            import fsspec

            fs, root = fsspec.core.url_to_fs(self.path)
            fs.rm(root, recursive=True)

    # -- layout -----------------------------------------------------------------------------
    def length_group(
        self, length: int, cfg: dict, window: int, block: int, tile: int, full_layers: list[int]
    ):
        """The `len_{N}` group, created with all its arrays on first use."""
        name = group_name(length)
        if name in self.root:
            return self.root[name]
        s = self.settings
        nd, ns = len(s["depths"]), s["samples"]
        L, H, D = cfg["layers"], cfg["heads"], cfg["head_dim"]
        W, M = min(window, length), num_blocks(length, block)
        g = self.root.create_group(
            name, attributes={"length": length, "window": W, "block": block, "tile": tile}
        )

        def arr(var, dims, shape, dtype, chunks, fill=0, **attrs):
            g.create_array(
                var,
                shape=shape,
                dtype=dtype,
                chunks=chunks,
                compressors=COMPRESSORS,
                fill_value=fill,
                dimension_names=dims,
                attributes=attrs,
            )

        doc = ("depth", "sample")
        arr("depth", ["depth"], (nd,), "float64", (nd,), 0.0, long_name="requested needle depth (0 = start)")
        g["depth"][:] = np.asarray(s["depths"], dtype=np.float64)
        for var, n in (("sample", ns), ("layer", L), ("head", H)):
            arr(var, [var], (n,), "int32", (n,))
            g[var][:] = np.arange(n, dtype=np.int32)
        arr("input_ids", [*doc, "key"], (nd, ns, length), "int32", (1, 1, length))
        for var, meaning in (
            ("needle", "passkey tokens"),
            ("needle_sentence", "whole needle sentence"),
            ("question", "question and answer cue"),
        ):
            arr(var, [*doc, "key"], (nd, ns, length), "bool", (1, 1, length), False, long_name=meaning)
        arr("passkey", doc, (nd, ns), "int64", (1, 1))
        arr(
            "depth_actual",
            doc,
            (nd, ns),
            "float32",
            (1, 1),
            0.0,
            long_name="filler tokens before the needle / all filler tokens",
        )
        lay = (*doc, "layer", "head")
        arr("colsum", [*lay, "key"], (nd, ns, L, H, length), "float32", (1, 1, 1, H, length))
        arr(
            "window",
            [*lay, "wq", "key"],
            (nd, ns, L, H, W, length),
            "float16",
            (1, 1, 1, H, W, length),
            long_name=f"attention rows of the last {W} queries, ending at the final prompt token",
        )
        arr(
            "blocks",
            [*lay, "qblock", "kblock"],
            (nd, ns, L, H, M, M),
            "float32",
            (1, 1, 1, H, M, M),
            long_name=f"sum of attention over {block}x{block} blocks",
        )
        for var, pool in (
            ("qpool", "max_l2"),
            ("kpool", "max_l2"),
            ("qpool_mean", "mean"),
            ("kpool_mean", "mean"),
        ):
            arr(
                var,
                [*lay, "kblock", "dim"],
                (nd, ns, L, H, M, D),
                "float16",
                (1, 1, 1, H, M, D),
                pool=pool,
                long_name=f"post-RoPE {var[0]} pooled per block ({pool})",
            )
        if full_layers:
            arr("attn_layer", ["attn_layer"], (len(full_layers),), "int32", (len(full_layers),))
            g["attn_layer"][:] = np.asarray(full_layers, dtype=np.int32)
            arr(
                "attn",
                [*doc, "attn_layer", "head", "query", "key"],
                (nd, ns, len(full_layers), H, length, length),
                "float16",
                (1, 1, 1, H, tile, length),
                long_name="full causal attention matrices",
            )
        arr(
            "retrieved",
            doc,
            (nd, ns),
            "bool",
            (1, 1),
            False,
            long_name=f"the model's greedy answer ({ANSWER_TOKENS} tokens) contains the passkey",
        )
        arr("done", doc, (nd, ns), "bool", (1, 1), False, long_name="document complete (written last)")
        consolidate(self.root)  # metadata is fixed from here on: readers need no listing
        return g

    # -- progress ---------------------------------------------------------------------------
    def done(self, length: int) -> np.ndarray:
        """(depth, sample) bool. A chunk torn by a kill reads as not done."""
        g = self.root[group_name(length)]
        try:
            return np.asarray(g["done"][:], dtype=bool)
        except Exception:
            nd, ns = g["done"].shape
            out = np.zeros((nd, ns), dtype=bool)
            for i in range(nd):
                for j in range(ns):
                    try:
                        out[i, j] = bool(g["done"][i, j])
                    except Exception:
                        out[i, j] = False
            return out

    # -- writing ----------------------------------------------------------------------------
    def _submit(self, fn, *args) -> None:
        if not self.background:
            fn(*args)
            return
        while len(self._pending) >= 8:  # bounded: the forward pass never runs far ahead of the disk
            self._pending.pop(0).result()
        self._pending.append(self._writer.submit(fn, *args))

    def flush(self) -> None:
        for f in self._pending:
            f.result()
        self._pending = []

    def write_document(self, length: int, d: int, s: int, doc) -> None:
        g = self.root[group_name(length)]
        g["input_ids"][d, s] = doc.input_ids
        g["needle"][d, s] = doc.needle
        g["needle_sentence"][d, s] = doc.needle_sentence
        g["question"][d, s] = doc.question
        g["passkey"][d, s] = doc.passkey
        g["depth_actual"][d, s] = doc.depth_actual

    def write_layer(self, length: int, d: int, s: int, layer: int, stats: LayerStats) -> None:
        g = self.root[group_name(length)]
        # cast on the device: torch converts to float16 far faster than numpy does
        arrays = {
            var: getattr(stats, var).detach().to(TORCH_DTYPES[str(g[var].dtype)]).cpu().numpy()
            for var in PER_LAYER
        }
        self._submit(self._write_layer, group_name(length), d, s, layer, arrays)

    def _write_layer(self, name, d, s, layer, arrays) -> None:
        g = self.root[name]
        for var, value in arrays.items():
            g[var][d, s, layer] = value

    def write_rows(self, length: int, d: int, s: int, slot: int, q0: int, q1: int, probs) -> None:
        tile = probs.detach().to(TORCH_DTYPES["float16"]).cpu().numpy()
        g = self.root[group_name(length)]
        n = g["attn"].shape[-1]
        self._submit(self._write_rows, g, d, s, slot, q0, q1, n, tile)

    @staticmethod
    def _write_rows(g, d, s, slot, q0, q1, n, tile) -> None:
        full = np.zeros((tile.shape[0], q1 - q0, n), dtype=np.float16)
        full[:, :, : tile.shape[-1]] = tile
        g["attn"][d, s, slot, :, q0:q1, :] = full

    def mark_done(self, length: int, d: int, s: int) -> None:
        self.flush()  # every variable of the document is on disk before `done`
        self.root[group_name(length)]["done"][d, s] = True

    def close(self) -> None:
        self.flush()
        self._writer.shutdown(wait=True)

    def nbytes(self) -> int:
        if not is_local(self.path):
            return 0
        root = Path(self.path.removeprefix("file://")).expanduser()
        return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def consolidate(root) -> None:
    with warnings.catch_warnings():  # zarr 3 notes consolidated metadata is outside its spec
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(root.store, path=root.path or None)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
