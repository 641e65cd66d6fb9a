"""Reading a RUN.zarr for analysis: its plan (what is there and finished) and one document-layer's
statistics, checked: a missing or corrupt chunk is an error naming the document, layer and variable.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import numpy as np
import zarr

from core import schema
from core.errors import UsageError
from core.outputs import is_local, local_path

STATISTICS = tuple(schema.RUN_STATISTICS)  # the attention statistics, in the schema's order
KEYS = "key_cache"  # post-RoPE keys (kv_head, key, dim): key scorers read them (dump --store stats,keys)
# Expected Attention's query moments (per setting: `_ctx` in agnostic) and the values' norms
QUERIES = ("query_mean", "query_cov")
KEY_PARTS = (KEYS, "value_norm", *QUERIES)  # what `dump --store stats,keys,queries` adds
KVZIP = "kvzip"  # (kv_head, key) KVzip's scores (`dump --store stats,kvzip`; `_ctx` in agnostic)
# variable -> the --store part that writes it
PART_OF = {KEYS: "keys", "value_norm": "queries", **{v: "queries" for v in QUERIES}, KVZIP: "kvzip"}
READABLE = (*STATISTICS, *KEY_PARTS, KVZIP)  # what a policy may read
_GUARDED = frozenset((*STATISTICS, "final_row"))


@dataclass(frozen=True)
class DocLayer:
    """Stored statistics of one document and one layer (dims as in RUN.zarr, all query heads).

    Only the statistics some policy `reads` are loaded; the others are None. The final query row
    is always there (every metric needs it)."""

    final_row: np.ndarray  # (head, key) A[N-1, :], the answer position's attention
    block: int  # B
    kv_heads: int
    seed: int = 0  # per document-layer, for seeded policies
    observed: int = 0  # W: how many final queries window_sum sums
    colsum: np.ndarray | None = None  # (head, key) Σ_q A[q, k]
    window_sum: np.ndarray | None = None  # (head, key) Σ of the last `observed` rows of A
    window: np.ndarray | None = None  # (head, wq, key) last R rows of A; window[:, -1] is the final row
    blocks: np.ndarray | None = None  # (head, qblock, kblock) Σ of A over B×B blocks
    qpool: np.ndarray | None = None  # (head, kblock, dim) post-RoPE Q pooled per block (max L2)
    kpool: np.ndarray | None = None  # (head, kblock, dim)
    key_cache: np.ndarray | None = None  # (kv_head, key, dim) post-RoPE keys, float32 (per kv head)
    value_norm: np.ndarray | None = None  # (kv_head, key) L2 norms of the values
    query_mean: np.ndarray | None = None  # (head, dim) mean pre-RoPE query, averaged-RoPE rotated
    query_cov: np.ndarray | None = None  # (head, dim, dim) its covariance, rotated alike
    kvzip: np.ndarray | None = None  # (kv_head, key) KVzip's reconstruction scores

    hidden: frozenset = frozenset()  # fields the policy's setting hides (`core.settings`)
    full_n: int = 0  # the prompt's length when this is a context-only view (its n is the context's)

    def __getattribute__(self, name):
        if name in _GUARDED and name in object.__getattribute__(self, "hidden"):
            from core.settings import HiddenRows

            raise HiddenRows(f"{name} is hidden in this setting: a policy reading it cannot be scored here")
        return object.__getattribute__(self, name)

    def visible(self, setting) -> DocLayer:
        """This document-layer as a policy sees it under `setting` (a `core.settings.Setting`)."""
        if not setting.hides:
            return self
        view = dataclasses.replace(self, hidden=frozenset(setting.hides))
        view.__dict__["_memo"] = self.__dict__.setdefault("_memo", {})  # one memo for every view
        return view

    def memo(self, key, compute):
        """`compute()`, once per document-layer and setting: a ranking's costly scores that no budget
        changes (every sparsity, and a policy over the same scorer, reuse them). Read-only."""
        memo = self.__dict__.setdefault("_memo", {})
        key = (key, self.hidden)
        if key not in memo:
            value = compute()
            value.setflags(write=False)
            memo[key] = value
        return memo[key]

    @property
    def heads(self) -> int:
        return object.__getattribute__(self, "final_row").shape[0]

    @property
    def n(self) -> int:
        return object.__getattribute__(self, "final_row").shape[1]

    def group_mean(self) -> DocLayer:
        """Statistics of each kv head's group: means over its query heads (computed once per object:
        every policy and budget of a document-layer reuses it)."""
        cached = self.__dict__.get("_group_mean")
        if cached is not None:
            return cached
        g = self.heads // self.kv_heads

        def mean(a):
            return a.reshape(self.kv_heads, g, *a.shape[1:]).mean(axis=1)

        grouped = dataclasses.replace(
            self,
            final_row=mean(self.final_row),
            **{s: mean(getattr(self, s)) for s in STATISTICS if getattr(self, s) is not None},
        )
        object.__setattr__(self, "_group_mean", grouped)
        return grouped

    def coarsen(self, block: int) -> DocLayer:
        """Blocks of a multiple of the stored size, by summing (pooled Q/K: mean of pooled vectors)."""
        if block == self.block or self.blocks is None:
            return dataclasses.replace(self, block=block) if block != self.block else self
        f = block // self.block
        h, m, _ = self.blocks.shape
        mc = -(-m // f)
        b = np.zeros((h, mc * f, mc * f), dtype=self.blocks.dtype)
        b[:, :m, :m] = self.blocks
        pooled = {}
        for name in ("qpool", "kpool"):
            v = getattr(self, name)
            if v is not None:
                p = np.zeros((h, mc * f, v.shape[-1]), dtype=np.float32)
                p[:, :m] = v
                pooled[name] = p.reshape(h, mc, f, -1).mean(axis=2)
        return dataclasses.replace(
            self, blocks=b.reshape(h, mc, f, mc, f).sum(axis=(2, 4)), block=block, **pooled
        )


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
    if is_local(path):  # the consolidated metadata lists a group that was deleted on disk
        gone = [n for n in lengths if not (local_path(path) / schema.group_name(n) / "zarr.json").is_file()]
        if gone:
            raise UsageError(
                f"store {path!r} lists length {gone[0]} but its group {schema.group_name(gone[0])} is missing on "
                f"disk: the store is damaged; re-dump that length into it with `python -m dump` (same options)"
            )
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


def _advice(g, length: int, index: tuple) -> str:
    """How to repair the document at `index` (depth, sample, ...): the dump command that redoes it."""
    try:
        depth = f"{float(g['depth'][int(index[0])]):g}"
    except Exception:  # the coordinate itself unreadable: say the index
        depth = f"<depth {int(index[0])}>"
    return (
        f"re-dump that document (rerun its `python -m dump` command with --redo {length},{depth},{int(index[1])}) "
        f"or pass --skip-corrupt"
    )


def read_checked(g, var: str, index: tuple, path: str, length: int) -> np.ndarray:
    """`_read` for the answer pass and other readers outside this module."""
    return _read(g, var, index, path, length)


def read_floats(g, var: str, index: tuple, path: str, length: int) -> np.ndarray:
    """`_checked` for readers outside this module: a NaN (the fill value) means a missing chunk."""
    return _checked(g, var, index, path, length)


def _read(g, var: str, index: tuple, path: str, length: int) -> np.ndarray:
    """One chunk-aligned read; a checksum failure or unreadable chunk names what it was."""
    try:
        return np.asarray(g[var][index])
    except (ValueError, RuntimeError, OSError) as err:
        raise CorruptChunk(
            f"store {path!r}: variable {var} of {_where(length, index)} cannot be read "
            f"({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else 'corrupt chunk'}); "
            + _advice(g, length, index)
        ) from None


def _checked(g, var: str, index: tuple, path: str, length: int) -> np.ndarray:
    """A float statistic: NaN anywhere means its chunk is missing on disk (NaN is the fill value)."""
    a = _read(g, var, index, path, length)
    if a.dtype.kind == "f" and np.isnan(a).any():
        raise _missing(g, var, index, path, length)
    return a


def _missing(g, var: str, index: tuple, path: str, length: int) -> CorruptChunk:
    return CorruptChunk(
        f"store {path!r}: variable {var} of {_where(length, index)} is missing on disk; "
        + _advice(g, length, index)
    )


def _context_copy(g, var: str, name: str, index: tuple, path: str, length: int) -> np.ndarray:
    """The context's copy of a `schema.SHARED_ROWS` statistic: the block rows it shares with the
    prompt's copy are NaN on disk (RUN 2.4) and read from that copy, bit for bit. A chunk missing on
    disk is all NaN, which no stored copy is (the rows holding the question always differ)."""
    a = np.array(_read(g, name, index, path, length))
    shared = np.isnan(a).all(axis=tuple(i for i in range(a.ndim) if i != 1))
    if shared.any() and not shared.all():
        a[:, shared] = _checked(g, var, index, path, length)[:, shared]
    if np.isnan(a).any():
        raise _missing(g, name, index, path, length)
    return a


def has_context(path: str) -> bool:
    """Whether a RUN.zarr holds the context's own statistics (RUN schema 2.3 on)."""
    root = _open(path)
    lengths = schema.lengths_in(root)
    return bool(lengths) and "colsum" + schema.CONTEXT in root[schema.group_name(lengths[0])]


def open_document(path: str, length: int, d: int, s: int) -> tuple:
    """(the opened `len_N` group, the document's token masks): what every layer of it shares."""
    g = _open(path)[schema.group_name(length)]
    return g, document_masks(g, path, length, d, s)


def _target_spans(raw: str, masks: dict, g, path: str, length: int, doc: tuple) -> list:
    """The target needles' spans from a document's `needle_table`, checked against the prompt and
    the `target` mask (a missing or damaged chunk, or spans past the prompt, is named, never used)."""
    from core.tasks import needles_from_table

    def corrupt(what: str) -> CorruptChunk:
        return CorruptChunk(f"store {path!r}: {what} of {_where(length, doc)}; " + _advice(g, length, doc))

    if not raw.strip():
        raise corrupt("the needle table `needle_table` is empty (its chunk is missing on disk)")
    try:
        table = needles_from_table(raw)
    except (ValueError, KeyError, TypeError) as err:
        raise corrupt(
            f"the needle table `needle_table` is not readable JSON of needles ({type(err).__name__})"
        ) from None
    spans = [x.spans for x in table if x.role == "target"]
    if not spans or not all(copies for copies in spans):
        raise corrupt("the needle table `needle_table` names no target span")
    if any(not (0 <= a < b <= length) for copies in spans for a, b in copies):
        raise corrupt(f"the needle table `needle_table` has a span outside the prompt's {length} tokens")
    if "target" in masks:
        union = np.zeros(length, dtype=bool)
        for copies in spans:
            for a, b in copies:
                union[a:b] = True
        if not masks["target"].any():
            raise corrupt("the target mask `target` is empty (its chunk is missing on disk)")
        if not np.array_equal(union, masks["target"]):
            raise corrupt("the target mask `target` disagrees with the needle table's spans")
    return spans


def document_masks(g, path: str, length: int, d: int, s: int) -> dict:
    """A document's token masks (`schema.document_masks`: name -> (key,) bool) and `target_spans`:
    for every target needle, the token spans its value can be copied from. Stores before RUN 2.3
    record only the first copy of the passkey: their `target` is `needle`, with no distractors."""
    masks = {}
    for name in schema.document_masks():
        if name in g:
            masks[name] = _read(g, name, (d, s), path, length).astype(bool)
    if not masks["needle"].any():
        raise CorruptChunk(
            f"store {path!r}: the needle mask `needle` of {_where(length, (d, s))} is empty (its chunk is "
            f"missing on disk); " + _advice(g, length, (d, s))
        )
    if "needle_table" in g:
        raw = str(_read(g, "needle_table", (d, s), path, length))
        masks["target_spans"] = _target_spans(raw, masks, g, path, length, (d, s))
    else:
        from core.tasks.passkey import runs

        masks["target"] = masks["needle"]
        masks["distractor"] = np.zeros_like(masks["needle"])
        masks["target_spans"] = [runs(masks["needle"])]
    return masks


def load_doclayer(
    path: str,
    length: int,
    d: int,
    s: int,
    layer: int,
    kv_heads: int,
    seed: int,
    reads=STATISTICS,
    stored: dict | None = None,
    context_only: bool = False,
    document: tuple | None = None,
) -> tuple[DocLayer, dict]:
    """The statistics `reads` of one document-layer (float16 ones as float32), and its token masks
    (`document_masks`) with `answer_row`, the answer position's attention row (head, N) the metrics
    read. `stored` maps a statistic to the RUN variable a setting reads it from
    (`core.settings.Setting.stored`; default: its own name). `context_only`: the view of the context
    alone, cut at the question's first token C (its n is C, its final row the last context row,
    `full_n` the prompt's length): no question row or key is in it. `document`: (the opened length
    group, its token masks) from an earlier call on the same document, reused (a document's layers
    share them: `open_document`)."""
    g, masks = open_document(path, length, d, s) if document is None else document
    masks = dict(masks)  # this layer adds its answer row
    index = (d, s, layer)
    stats = {}
    for var in STATISTICS:
        name = (stored or {}).get(var, var)
        if var == "window_sum" and var in reads and name not in g:  # schema 2.0: every W row is stored
            rows = _checked(g, "window", index, path, length).astype(np.float32)
            stats[var] = rows.astype(np.float64).sum(axis=1).astype(np.float32)
        elif var in reads:
            shares = var in schema.SHARED_ROWS and name == var + schema.CONTEXT
            a = (
                _context_copy(g, var, name, index, path, length)
                if shares
                else _checked(g, name, index, path, length)
            )
            stats[var] = a.astype(np.float32) if a.dtype == np.float16 else a
    for var in PART_OF:  # keys and values of the context do not depend on the question
        if var not in reads:
            continue
        name = (stored or {}).get(var, var)  # the moments (KVzip's scores) of the setting's own prefill
        if name not in g:
            raise UsageError(
                f"store {path!r} has no {name} (a policy reads it): re-dump it with --store stats,{PART_OF[var]}"
            )
        stats[var] = _checked(g, name, index, path, length)
    if "window" in stats and not stored:
        answer_row = stats["window"][:, -1, :]
    else:
        answer_row = _checked(g, "window", (d, s, layer, slice(None), -1), path, length).astype(np.float32)
    masks["answer_row"] = answer_row
    final, full_n = answer_row, 0
    if context_only:
        c = int(np.flatnonzero(masks["question"])[0])
        block = int(g.attrs["block"])
        mc = -(-c // block)
        if "window" in stats:
            final = stats["window"][:, -1, :c]
        else:
            last = (stored or {}).get("window", "window")
            final = _checked(g, last, (d, s, layer, slice(None), -1), path, length).astype(np.float32)[:, :c]
        cut = {"colsum": np.s_[:, :c], "window_sum": np.s_[:, :c], "window": np.s_[:, :, :c]}
        cut.update({"blocks": np.s_[:, :mc, :mc], "qpool": np.s_[:, :mc], "kpool": np.s_[:, :mc]})
        cut.update({KEYS: np.s_[:, :c], "value_norm": np.s_[:, :c], KVZIP: np.s_[:, :c]})
        cut.update({q: np.s_[:] for q in QUERIES})  # per head, not per key: whole
        stats = {k: np.ascontiguousarray(v[cut[k]]) for k, v in stats.items()}
        full_n = length
    x = DocLayer(
        final_row=final,
        block=int(g.attrs["block"]),
        kv_heads=kv_heads,
        seed=seed,
        observed=int(g.attrs["window"]),
        full_n=full_n,
        **stats,
    )
    return x, masks
