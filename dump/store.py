"""The dump store RUN.zarr, laid out by `core.schema` (the contract between dump and analyze).

Zarr v3. One group per length `len_{N}`, readable with `xr.open_zarr(path, group="len_4096")`.
Per-layer variables are chunked one chunk per (document, layer), so a half-written document only
ever touches its own chunks: resuming rewrites it whole. `done[depth, sample]` is written last.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import warnings
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.sync import sync

from core import schema
from core.errors import UsageError
from core.lm.stats import LayerStats
from core.outputs import is_local, local_path

# a layer's chunks are written on zarr's event loop: a run stopped by a signal leaves its pending
# writes behind (the document is rewritten on resume), which asyncio would report one by one at exit
logging.getLogger("asyncio").setLevel(logging.CRITICAL)
# and a write the signal caught before zarr's event loop awaited it is reported at exit as a coroutine
# never awaited: the document is rewritten on resume, so the one-sentence exit stays one sentence
warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)

# zstd level 1: on real attention rows level 5 is 2.8x slower for 8% smaller chunks
COMPRESSORS = (BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"), Crc32cCodec())
# the prompt's keys and values (--store ...,keys / ...,kv), stored as float32: from a float32 model they
# do not compress (measured: 0.99 and 0.92 of their size at 0.3 s a 2k document to write, 0.2 s to
# read), checksummed only; from a bfloat16 or float16 model the low 16 bits of every float32 are zero,
# which shuffled bytes gather and zstd removes (lossless, about half the size: BYTE_SHUFFLED below)
RAW = (Crc32cCodec(),)
UNCOMPRESSED = frozenset(("key_cache", "value_cache"))
# block sums (half of them exact zeros: the causal triangle) and pooled Q/K compress better with bytes
# shuffled than bits; every other statistic the other way (docs/results.md, "What a store costs")
BYTE_SHUFFLED = (BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"), Crc32cCodec())
SHUFFLE_BYTES = frozenset(v + c for v in ("blocks", "qpool", "kpool") for c in ("", "_ctx"))
SHUFFLE_HALF_KEYS = True  # the keys and values of a half-precision model bytes shuffled (else raw)
# what a chunk torn by a kill raises when read: a short Blosc frame, a crc32c mismatch, a bad header
CHUNK_ERRORS = (ValueError, RuntimeError, OSError)


def codecs_of(var: str, dtype: str) -> tuple:
    """A variable's codecs: keys and values raw from a float32 model, bytes shuffled from a half-precision
    one; block sums and pooled Q/K bytes shuffled; every other statistic bits shuffled."""
    if var in UNCOMPRESSED:
        return BYTE_SHUFFLED if SHUFFLE_HALF_KEYS and dtype in ("bfloat16", "float16") else RAW
    return BYTE_SHUFFLED if var in SHUFFLE_BYTES else COMPRESSORS


class StoreMismatch(UsageError):
    """An existing store was made with other settings."""


def _torch_dtypes():
    import torch

    return {"float16": torch.float16, "float32": torch.float32}


TORCH_DTYPES = _torch_dtypes()


def diff_run_config(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def check_run_config(path: str, old: dict, new: dict, option: str = "--out") -> None:
    """A store is resumed only with the settings it was made with (`dump`, and `pipelines check`)."""
    if old != new:
        raise StoreMismatch(
            f"store {path!r} was made with other settings ({'; '.join(diff_run_config(old, new))}): "
            f"choose another {option} or pass --overwrite to replace it"
        )


class RunWriter:
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
            root = zarr.open_group(path, mode="r+", use_consolidated=False)  # a writer sees new groups
            check_run_config(path, dict(root.attrs.get("settings", {})), settings)
            self.root = root
        else:
            self.root = zarr.open_group(path, mode="w")
            self.root.attrs.update(
                {
                    **root_attrs,
                    schema.KIND_ATTR: schema.RUN_KIND,
                    "schema_version": schema.RUN_VERSION,
                    "settings": settings,
                    "created": _now(),
                }
            )
        # chunks are independent files: several writers compress in parallel (GPU runs; `done` waits for all)
        self._writer = ThreadPoolExecutor(max_workers=4, thread_name_prefix="zarr-writer")
        self._pending: list[Future] = []
        self._opened: dict = {}

    @classmethod
    def attach(cls, path: str, background: bool = False) -> RunWriter:
        """An existing store whose layout and settings were set up by the process that planned the run
        (a Dask worker, a device shard): it only fills chunks."""
        self = cls.__new__(cls)
        self.path, self.background = path, background
        self.root = zarr.open_group(path, mode="r+", use_consolidated=False)
        self.settings = dict(self.root.attrs["settings"])
        self._writer = ThreadPoolExecutor(max_workers=4, thread_name_prefix="zarr-writer")
        self._pending = []
        self._opened = {}
        return self

    def _exists(self) -> bool:
        try:
            zarr.open_group(self.path, mode="r")
            return True
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
            return False

    def _remove(self) -> None:
        if is_local(self.path):
            shutil.rmtree(local_path(self.path), ignore_errors=True)
        else:
            import fsspec

            fs, root = fsspec.core.url_to_fs(self.path)
            fs.rm(root, recursive=True)

    # -- layout -----------------------------------------------------------------------------
    def length_group(
        self,
        length: int,
        cfg: dict,
        window: int,
        block: int,
        tile: int,
        full_layers: list[int],
        window_rows: int | None = None,
    ):
        """The `len_{N}` group, created with every variable of the schema on first use."""
        name = schema.group_name(length)
        if name in self.root:
            return self.root[name]
        s = self.settings
        from core import tasks

        sizes = schema.run_sizes(
            length,
            len(s["depths"]),
            s["samples"],
            cfg,
            window,
            block,
            full_layers,
            window_rows,
            tasks.get(s.get("task", "passkey")).answer_tokens,
        )
        attrs = {"length": length, "window": min(window, length), "window_rows": sizes["wq"]}
        g = self.root.create_group(name, attributes={**attrs, "block": block, "tile": tile})
        parts = schema.store_parts(s.get("store", "stats"))
        for var, spec in schema.run_vars(
            bool(full_layers), "kv" in parts, "keys" in parts, "kvzip" in parts, "queries" in parts
        ).items():
            g.create_array(
                var,
                shape=tuple(sizes[d] for d in spec.dims),
                dtype=spec.dtype,
                chunks=schema.chunks_of(spec, sizes, tile),
                compressors=codecs_of(var, str(s.get("dtype", "float32"))),
                fill_value=spec.fill,
                dimension_names=list(spec.dims),
                attributes={"long_name": spec.long_name},
            )
        g["depth"][:] = np.asarray(s["depths"], dtype=np.float64)
        for var in ("sample", "layer", "head"):
            g[var][:] = np.arange(sizes[var], dtype=np.int32)
        if full_layers:
            g["attn_layer"][:] = np.asarray(full_layers, dtype=np.int32)
        consolidate(self.root)  # metadata is fixed from here on: readers need no listing
        return g

    # -- progress ---------------------------------------------------------------------------
    def done(self, length: int) -> np.ndarray:
        """(depth, sample) bool. A `done` chunk torn by a kill reads as not done."""
        arr = self.root[schema.group_name(length)]["done"]
        try:
            return np.asarray(arr[:], dtype=bool)
        except CHUNK_ERRORS:
            out = np.zeros(arr.shape, dtype=bool)
            for i, j in np.ndindex(*arr.shape):
                try:
                    out[i, j] = bool(arr[i, j])
                except CHUNK_ERRORS:
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
        """Every document variable of the schema the task's document carries (the answer and `done`
        are written by `write_answer` and `mark_done`)."""
        g = self.root[schema.group_name(length)]
        for name in schema.RUN_DOCUMENT:
            if hasattr(doc, name):
                g[name][d, s] = getattr(doc, name)

    def _layer_arrays(self, length: int) -> dict:
        """The per-layer arrays of a length group, opened once (each open reads its metadata)."""
        name = schema.group_name(length)
        if name not in self._opened:
            g = self.root[name]
            names = (
                *schema.RUN_STATISTICS,
                *schema.RUN_CONTEXT,
                *schema.RUN_KV,
                *schema.RUN_QUERIES,
                *schema.RUN_KVZIP,
            )
            self._opened[name] = {var: g[var] for var in names if var in g}
        return self._opened[name]

    def write_layer(self, length: int, d: int, s: int, layer: int, stats: LayerStats) -> None:
        targets = self._layer_arrays(length)
        r = targets["window"].shape[-2]
        tensors = _layer_tensors(stats, r)
        if stats.context is not None:
            tensors.update({k + schema.CONTEXT: v for k, v in _layer_tensors(stats.context, r).items()})
        # cast on the device: torch converts to float16 far faster than numpy does
        arrays = {
            var: t.detach().to(TORCH_DTYPES[str(targets[var].dtype)]).cpu().numpy()
            for var, t in tensors.items()
        }
        if SHARE_CONTEXT_ROWS:
            for var in schema.SHARED_ROWS:
                if var + schema.CONTEXT in arrays:
                    arrays[var + schema.CONTEXT] = shared_rows_dropped(
                        arrays[var + schema.CONTEXT], arrays[var]
                    )
        self._submit(self._write_layer, targets, d, s, layer, arrays)

    @staticmethod
    def _write_layer(targets, d, s, layer, arrays) -> None:
        """One layer's chunks written together on zarr's event loop: their compression and file
        writes overlap (measured: half the time of writing them one by one)."""

        async def write_all():
            await asyncio.gather(
                *(targets[var].async_array.setitem((d, s, layer), value) for var, value in arrays.items())
            )

        sync(write_all())

    def write_kv(self, length: int, d: int, s: int, layer: int, keys, values) -> None:
        """One layer's prompt keys (and values, with --store ...,kv) (kv_head, N, dim), as float32
        (exact for every model dtype)."""
        opened = self._layer_arrays(length)
        arrays = {"key_cache": keys.detach().float().cpu().numpy()}
        if "value_norm" in opened:
            arrays["value_norm"] = values.detach().float().norm(dim=-1).cpu().numpy()
        if "value_cache" in opened:
            arrays["value_cache"] = values.detach().float().cpu().numpy()
        self._submit(self._write_layer, {v: opened[v] for v in arrays}, d, s, layer, arrays)

    def write_arrays(self, length: int, d: int, s: int, layer: int, arrays: dict) -> None:
        """Per-layer variables of one layer, {variable: tensor}, as float32: the query moments
        (`core.lm.queries.QueryMoments`), KVzip's scores."""
        opened = self._layer_arrays(length)
        values = {var: t.detach().float().cpu().numpy() for var, t in arrays.items() if var in opened}
        self._submit(self._write_layer, {v: opened[v] for v in values}, d, s, layer, values)

    def write_rows(self, length: int, d: int, s: int, slot: int, q0: int, q1: int, probs) -> None:
        tile = probs.detach().to(TORCH_DTYPES["float16"]).cpu().numpy()
        g = self.root[schema.group_name(length)]
        n = g["attn"].shape[-1]
        self._submit(self._write_rows, g, d, s, slot, q0, q1, n, tile)

    @staticmethod
    def _write_rows(g, d, s, slot, q0, q1, n, tile) -> None:
        full = np.zeros((tile.shape[0], q1 - q0, n), dtype=np.float16)
        full[:, :, : tile.shape[-1]] = tile
        g["attn"][d, s, slot, :, q0:q1, :] = full

    def write_answer(self, length: int, d: int, s: int, answer_ids: np.ndarray, retrieved: bool) -> None:
        g = self.root[schema.group_name(length)]
        g["answer_ids"][d, s] = answer_ids
        g["retrieved"][d, s] = retrieved

    def undo(self, length: int, d: int, s: int) -> None:
        """Mark one document unfinished: the next run rewrites it whole (`dump --redo`)."""
        self.root[schema.group_name(length)]["done"][d, s] = False

    def mark_done(self, length: int, d: int, s: int) -> None:
        self.flush()  # every variable of the document is on disk before `done`
        self.root[schema.group_name(length)]["done"][d, s] = True

    def close(self) -> None:
        self.flush()
        self._writer.shutdown(wait=True)

    def nbytes(self) -> int:
        if not is_local(self.path):
            return 0
        root = local_path(self.path)
        return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


# the context's copies of block sums and pooled Q/K store only the rows that differ (RUN 2.4)
SHARE_CONTEXT_ROWS = True


def shared_rows_dropped(context: np.ndarray, prompt: np.ndarray) -> np.ndarray:
    """The context's copy with NaN in every block row (axis 1) equal bit for bit to the prompt's copy
    (the rows before the question's block): NaN compresses to nothing, and the reader takes those
    rows from the prompt's copy (`core.runstore`)."""
    bits = np.dtype(f"u{context.dtype.itemsize}")
    other = tuple(i for i in range(context.ndim) if i != 1)
    same = (context.view(bits) == prompt.view(bits)).all(axis=other)
    if same.all():  # never dropped whole: a chunk of NaN alone reads as missing
        same[-1] = False
    out = np.array(context)
    out[:, same] = np.nan
    return out


def bytes_per_document(path: str) -> dict[int, dict[str, float]]:
    """Stored bytes per finished document of each variable, per length (a local store; {} otherwise):
    what each statistic costs, the figure a study's disk budget is planned from."""
    if not is_local(path):
        return {}
    root = local_path(path)
    out = {}
    for group in sorted(root.glob("len_*"), key=lambda p: int(p.name[4:])):
        done = zarr.open_group(str(group), mode="r")["done"][:] if (group / "done").exists() else None
        docs = int(np.count_nonzero(done)) if done is not None else 0
        if not docs:
            continue
        sizes = {
            var.name: sum(f.stat().st_size for f in var.rglob("*") if f.is_file()) / docs
            for var in group.iterdir()
            if var.is_dir()
        }
        out[int(group.name[4:])] = dict(sorted(sizes.items(), key=lambda kv: -kv[1]))
    return out


def sizes_line(path: str, top: int = 6) -> str:
    """One line: per length, MB per document and its largest variables."""
    parts = []
    for n, sizes in bytes_per_document(path).items():
        head = ", ".join(f"{v} {b / 1e6:.2f}" for v, b in list(sizes.items())[:top])
        parts.append(f"{n} tokens {sum(sizes.values()) / 1e6:.2f} MB ({head})")
    return "dump: per document: " + "; ".join(parts) if parts else ""


def _layer_tensors(stats: LayerStats, r: int) -> dict:
    """The stored statistics of one layer: the W rows at stored precision, their sum (SnapKV's votes)
    whole, only the last R rows kept (fewer rows than R: zero rows in front)."""
    import torch

    rows = stats.window.detach().to(TORCH_DTYPES["float16"])
    last = rows[:, max(0, rows.shape[1] - r) :]
    if last.shape[1] < r:
        last = torch.nn.functional.pad(last, (0, 0, r - last.shape[1], 0))
    return {
        "colsum": stats.colsum,
        "window_sum": rows.double().sum(dim=1),
        "window": last,
        "blocks": stats.blocks,
        "qpool": stats.qpool,
        "kpool": stats.kpool,
    }


def consolidate(root) -> None:
    with warnings.catch_warnings():  # zarr 3 notes consolidated metadata is outside its spec
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(root.store, path=root.path or None)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
