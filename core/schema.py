"""The contract of the two stores, in code: every stage constructs and validates through this module.

RUN.zarr (written by `dump`, read by `analyze`, `viz` and the answer pass)
    Zarr v3. Root attributes: `niah_store = "run"` (the marker: only a store carrying it may be
    overwritten or grown by dump), `schema_version`, `settings` (what makes two runs comparable),
    `model`, `model_config`, `haystack`, `capture`, `software`, `created`.
    One group per prompt length, named `len_{N}` (`group_name`), readable with
    `xr.open_zarr(path, group="len_4096")`; its attributes are `length`, `window` (W: the queries
    whose attention is summed into `window_sum`), `window_rows` (R <= W: the last R of those rows,
    stored whole), `block` (B), `tile`. The variables of a group are `RUN_VARS`: their dims, dtype, fill value and meaning.
    Chunking follows from the dims (`chunks_of`): one chunk per document (`depth`, `sample`) and per
    layer, `tile` query rows for full matrices, everything else whole. A half-written document only
    ever touches its own chunks; `done[depth, sample]` is written last.
    Float statistics have NaN as fill value: a chunk that is missing on disk reads as NaN and
    analyze refuses it, naming the document, layer and variable (never zeros standing in for data).

RESULTS.zarr (written by `analyze`, read by `viz`)
    Root attributes: `niah_store = "results"`, `schema_version`, `source_store`, `model`, `gqa`,
    `seed`, `budget_rule`, `policies`. Dims `RESULT_DIMS`; per-head metrics `METRICS`; head subsets
    `SUBSETS`; per-document means over a subset's heads `{metric}_heads`; across samples
    `{metric}_mean/_lo/_hi/_n` (`summary_name`): the mean, its 95% interval by the metric's kind
    (`KINDS`, `core.intervals`) and the documents counted. The policy dimension is called `policy` (schema 2):
    xarray reads `.sel(method=...)` as its own keyword, so a dimension named `method` silently
    selected nothing.

Compatibility rule (`check_version`): a reader accepts a store whose major version it knows.
RUN stores of schema 1 are still read (analysis does not use what changed); RESULTS of schema 1 are
refused with the command that rebuilds them (they are cheap to recompute from the dump).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from core.errors import UsageError

KIND_ATTR = "niah_store"
RUN_KIND, RESULTS_KIND = "run", "results"
# 2.1: window_sum, and only the last R (--window-rows) of the W rows stored whole
# 2.2: a document's passkey and haystack are seeded by its depth *value* (before: its index in the grid)
# 2.3: every needle (`target`, `distractor`, `needle_table`), the context's own statistics (`*_ctx`),
#      answers as long as the task's (`answer_token`)
# 2.4: the context's block sums and pooled Q/K (`blocks_ctx`, `qpool_ctx`, `kpool_ctx`) keep only the
#      block rows that differ from the prompt's own copy; a row they share is NaN there and read from it
# 2.5: the query moments and value norms (Expected Attention's) are the store part `queries` of their
#      own; `keys` writes the keys alone (`stored_parts` reads older stores' `keys` as both)
RUN_VERSION = "2.5"
# statistics whose context copy stores only the block rows (axis 1) that differ from the prompt's copy
SHARED_ROWS = ("blocks", "qpool", "kpool")
# 3.0: a `setting` dimension (aware, agnostic); needle metrics over every target span; distractor_kept
# 3.1: intervals by the metric's kind (Wilson, bootstrap, t: inside the metric's range) and `{metric}_n`
# 3.2: with answers, `answer_distracted` and each failed answer's `cause`
RESULTS_VERSION = "3.2"
READABLE_MAJOR = {RUN_KIND: ("1", "2"), RESULTS_KIND: ("3",)}

_GROUP = re.compile(r"^len_(\d+)$")


def group_name(length: int) -> str:
    """The group of one prompt length in RUN.zarr."""
    return f"len_{int(length)}"


def length_of(group: str) -> int | None:
    """`len_4096` -> 4096; None for any other name."""
    m = _GROUP.match(group)
    return int(m.group(1)) if m else None


def lengths_in(root) -> list[int]:
    """The lengths a RUN.zarr root group holds, ascending."""
    return sorted(n for n in (length_of(name) for name in root.group_keys()) if n is not None)


# -- RUN.zarr ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Var:
    dims: tuple[str, ...]
    dtype: str
    long_name: str
    fill: object = 0


NAN = math.nan
DOC = ("depth", "sample")
LAYER = (*DOC, "layer", "head")
# dims chunked one index at a time (a document, a layer); "query" by tiles of rows; the rest whole
ONE_PER_CHUNK = ("depth", "sample", "layer", "attn_layer")

RUN_COORDS: dict[str, Var] = {
    "depth": Var(("depth",), "float64", "requested needle depth (0 = start of the haystack)", 0.0),
    "sample": Var(("sample",), "int32", "document index within a (length, depth) cell"),
    "layer": Var(("layer",), "int32", "decoder layer"),
    "head": Var(("head",), "int32", "query head"),
}
RUN_DOCUMENT: dict[str, Var] = {
    "input_ids": Var((*DOC, "key"), "int32", "prompt token ids"),
    "needle": Var((*DOC, "key"), "bool", "the first target value's tokens (first copy)", False),
    "target": Var((*DOC, "key"), "bool", "every copy of every target value (what an answer copies)", False),
    "distractor": Var((*DOC, "key"), "bool", "every distractor needle's value", False),
    "needle_table": Var(DOC, "str", "every needle as JSON: key, value, role, token spans [start, end)", ""),
    "needle_sentence": Var((*DOC, "key"), "bool", "whole needle sentence", False),
    "question": Var((*DOC, "key"), "bool", "question and answer cue", False),
    "passkey": Var(DOC, "int64", "the first target value as a number (-1: not a number)"),
    "depth_actual": Var(DOC, "float32", "filler tokens before the needle / all filler tokens", NAN),
    "retrieved": Var(DOC, "bool", "the model's greedy answer contains the passkey", False),
    "answer_ids": Var((*DOC, "answer_token"), "int32", "the model's greedy answer under full attention", -1),
    "done": Var(DOC, "bool", "document complete (written last)", False),
}
RUN_STATISTICS: dict[str, Var] = {
    "colsum": Var((*LAYER, "key"), "float32", "sum over all queries of A[q, k]", NAN),
    "window_sum": Var(
        (*LAYER, "key"), "float32", "sum of the attention rows of the last W queries (SnapKV's votes)", NAN
    ),
    "window": Var((*LAYER, "wq", "key"), "float16", "attention rows of the last R queries", NAN),
    "blocks": Var((*LAYER, "qblock", "kblock"), "float32", "sum of attention over BxB blocks", NAN),
    "qpool": Var((*LAYER, "kblock", "dim"), "float16", "post-RoPE query of largest L2 norm per block", NAN),
    "kpool": Var((*LAYER, "kblock", "dim"), "float16", "post-RoPE key of largest L2 norm per block", NAN),
}
CONTEXT = "_ctx"
# the same statistics of the context's own rows: the question's rows left out (the agnostic setting)
RUN_CONTEXT: dict[str, Var] = {
    name + CONTEXT: Var(v.dims, v.dtype, v.long_name + ", context rows only (before the question)", v.fill)
    for name, v in RUN_STATISTICS.items()
}
RUN_FULL: dict[str, Var] = {  # only with --store full
    "attn_layer": Var(("attn_layer",), "int32", "layers whose full matrices are stored"),
    "attn": Var((*DOC, "attn_layer", "head", "query", "key"), "float16", "full causal attention", NAN),
}
# with --store ...,keys or ...,kv: the post-RoPE keys key scorers read (knorm, keydiff)
RUN_KEYS: dict[str, Var] = {
    "key_cache": Var(
        (*DOC, "layer", "kv_head", "key", "dim"),
        "float32",
        "post-RoPE keys of every prompt token, from the dump's forward (exact in the model's dtype)",
        NAN,
    ),
}
# with --store ...,queries: what Expected Attention reads besides the keys (`core.lm.queries`): the
# rotated moments of each setting's prefilled queries and the values' norms
RUN_QUERIES: dict[str, Var] = {
    "query_mean": Var(
        (*DOC, "layer", "head", "dim"),
        "float32",
        "mean of the pre-RoPE queries of the prompt (first 4 rows left out), rotated by RoPE averaged "
        "over the next 512 positions",
        NAN,
    ),
    "query_cov": Var(
        (*DOC, "layer", "head", "dim", "dim2"),
        "float32",
        "covariance of the same queries, rotated alike",
        NAN,
    ),
}
RUN_QUERIES.update(
    {
        name + CONTEXT: Var(
            v.dims, v.dtype, v.long_name + ", context rows only (before the question)", v.fill
        )
        for name, v in list(RUN_QUERIES.items())
    }
)
RUN_QUERIES["value_norm"] = Var(
    (*DOC, "layer", "kv_head", "key"), "float32", "L2 norm of every prompt token's value", NAN
)
# with --store ...,kv: the whole prompt cache, so the answer pass needs no prefill
RUN_KV: dict[str, Var] = {
    **RUN_KEYS,
    "value_cache": Var(
        (*DOC, "layer", "kv_head", "key", "dim"),
        "float32",
        "values of every prompt token, from the dump's forward (exact in the model's dtype)",
        NAN,
    ),
}
# with --store ...,kvzip: KVzip's scores from a reconstruction forward per setting (`core.lm.kvzip`)
RUN_KVZIP: dict[str, Var] = {
    "kvzip": Var(
        (*DOC, "layer", "kv_head", "key"),
        "float32",
        "KVzip: a key's largest attention while the model reconstructs the prompt from its cache",
        NAN,
    ),
    "kvzip" + CONTEXT: Var(
        (*DOC, "layer", "kv_head", "key"),
        "float32",
        "KVzip of the context before the question, reconstructed from its own cache (0 past it)",
        NAN,
    ),
}
STORE_PARTS = (
    "stats",
    "full",
    "keys",
    "queries",
    "kv",
    "kvzip",
)  # what `dump --store` writes: statistics always


def store_parts(store: str) -> frozenset[str]:
    """The parts a store setting names ('stats', 'full' = stats + full matrices, 'keys', 'queries' =
    Expected Attention's query moments and value norms, 'kv' = keys + values, 'kvzip' = KVzip's
    scores); `kv` and `queries` include `keys`."""
    parts = frozenset(p.strip() for p in str(store).split(",") if p.strip()) | {"stats"}
    return parts | {"keys"} if parts & {"kv", "queries"} else parts


def stored_parts(store: str, version: str) -> frozenset[str]:
    """The parts a RUN.zarr holds, from its recorded store setting and schema version: before RUN 2.5,
    `keys` wrote the query moments and value norms too."""
    parts = store_parts(store)
    try:
        old = tuple(int(x) for x in str(version).split(".")[:2]) < (2, 5)
    except ValueError:
        old = False
    return parts | {"queries"} if old and "keys" in parts else parts


def store_label(parts) -> str:
    """The canonical store setting of a set of parts (what RUN.zarr's settings record): stats or
    full, then ,kv or ,keys, then ,queries and ,kvzip."""
    parts = set(parts)
    extra = ",kv" if "kv" in parts else ",keys" if "keys" in parts else ""
    extra += ",queries" if "queries" in parts else ""
    return ("full" if "full" in parts else "stats") + extra + (",kvzip" if "kvzip" in parts else "")


ANSWER_TOKENS = 8  # greedy tokens decoded after the prompt under full attention


def document_masks() -> tuple[str, ...]:
    """The (key,) token masks of a document (`needle`, `needle_sentence`, `question`, and any a task
    adds): analyze loads them all with each document-layer and the metrics read them by name."""
    return tuple(name for name, v in RUN_DOCUMENT.items() if v.dims == (*DOC, "key") and v.dtype == "bool")


def run_vars(
    full: bool, kv: bool = False, keys: bool = False, kvzip: bool = False, queries: bool = False
) -> dict[str, Var]:
    """Every variable of a `len_{N}` group, in creation order (`kv`: keys and values; `keys`: keys;
    `queries`: the query moments and value norms; `kvzip`: KVzip's scores)."""
    return {
        **RUN_COORDS,
        **RUN_DOCUMENT,
        **RUN_STATISTICS,
        **RUN_CONTEXT,
        **(RUN_FULL if full else {}),
        **(RUN_KV if kv else RUN_KEYS if keys else {}),
        **(RUN_QUERIES if queries else {}),
        **(RUN_KVZIP if kvzip else {}),
    }


def run_sizes(
    length: int,
    depths: int,
    samples: int,
    cfg: dict,
    window: int,
    block: int,
    full_layers,
    window_rows: int | None = None,
    answer_tokens: int = 8,
) -> dict:
    """The size of every RUN dimension of one length group (`window_rows` None: all W rows;
    `answer_tokens`: the task's)."""
    return {
        "depth": depths,
        "sample": samples,
        "layer": cfg["layers"],
        "head": cfg["heads"],
        "kv_head": cfg.get("kv_heads", cfg["heads"]),
        "key": length,
        "query": length,
        "wq": min(window, length, window_rows or window),
        "qblock": -(-length // block),
        "kblock": -(-length // block),
        "dim": cfg["head_dim"],
        "dim2": cfg["head_dim"],
        "attn_layer": len(full_layers),
        "answer_token": answer_tokens,
    }


def chunks_of(var: Var, sizes: dict, tile: int) -> tuple[int, ...]:
    """One chunk per document and layer; tiles of query rows; every other dim whole. Coordinates whole."""
    if len(var.dims) == 1:
        return (sizes[var.dims[0]],)
    return tuple(
        1 if d in ONE_PER_CHUNK else min(tile, sizes[d]) if d == "query" else sizes[d] for d in var.dims
    )


# -- RESULTS.zarr ------------------------------------------------------------------------------
POLICY = "policy"
RESULT_DIMS = (POLICY, "sparsity", "length", "depth", "sample", "layer", "head")
METRICS = ("needle_hit", "needle_recall", "mass_kept", "distractor_kept", "kept")
HEAD_METRICS = (
    "needle_hit",
    "needle_recall",
    "mass_kept",
    "distractor_kept",
)  # averaged over head subsets and shown
SETTING = (
    "setting"  # aware / agnostic (`core.settings`): every variable a policy's kept sets change has it first
)
SETTING_FREE = ("needle_mass", "budget", "done", "retrieved", "retrieval_head")
SUBSETS = ("all", "retrieval")
SUMMARIES = ("mean", "lo", "hi", "n")
# what a metric's per-document value is, which decides its interval (`core.intervals.interval`) and
# the range its bounds must stay in: `binary` 0/1, `fraction` in [0, 1], `real` unbounded
KINDS = {
    "needle_hit": "fraction",  # a mean over heads of 0/1 hits (a fraction of values for several)
    "needle_recall": "fraction",
    "mass_kept": "fraction",
    "distractor_kept": "fraction",
    "kept": "real",
    "answer": "fraction",  # string_match_all: 0/1 for one value, a fraction of the values for several
    "answer_digits": "fraction",
    "retrieved": "binary",
}
RANGES = {"binary": (0.0, 1.0), "fraction": (0.0, 1.0), "real": (-math.inf, math.inf)}


def summary_dtype(stat: str) -> str:
    return "int32" if stat == "n" else "float32"


RESULT_VARS: dict[str, Var] = {
    "needle_hit": Var(
        RESULT_DIMS, "float32", "fraction of target values with one copy kept whole (1/0 for one value)", NAN
    ),
    "needle_recall": Var(RESULT_DIMS, "float32", "fraction of target-value tokens kept, every copy", NAN),
    "mass_kept": Var(RESULT_DIMS, "float32", "final query row attention mass on the kept keys", NAN),
    "distractor_kept": Var(
        RESULT_DIMS, "float32", "fraction of distractor-needle tokens kept (NaN: none)", NAN
    ),
    "kept": Var(
        RESULT_DIMS,
        "float32",
        "keys kept (the budget; agnostic: of the context, plus the question's; N for full)",
        NAN,
    ),
    "needle_mass": Var(
        RESULT_DIMS[2:], "float32", "final query row attention on the target values under full attention", NAN
    ),
    "jaccard": Var(
        ("pair", *RESULT_DIMS[1:]), "float32", "Jaccard overlap of kept sets (policy|reference)", NAN
    ),
    "curvature_mass_spearman": Var(
        ("variant", *RESULT_DIMS[2:]),
        "float32",
        "Spearman rank correlation of a block score with block attention mass (last query block); "
        "near 1 = the score is magnitude in disguise",
        NAN,
    ),
    "budget": Var(("sparsity", "length"), "int64", "keys kept per head: k = round((1 - sparsity) * N)"),
    "done": Var(("length", "depth", "sample"), "bool", "document analyzed", False),
    "retrieved": Var(("length", "depth", "sample"), "bool", "the model answered under full attention", False),
    "retrieval_head": Var(("layer", "head"), "bool", "retrieval heads (rule in attrs)", False),
}
ANSWER_VARS: dict[str, Var] = {  # with `analyze --answers`
    "answer": Var(
        RESULT_DIMS[:5],
        "float32",
        "the task's score of the model's greedy answer under the pruned cache (RULER's string_match_all: "
        "the fraction of expected values it contains; 1/0 for one value)",
        NAN,
    ),
    "answer_digits": Var(
        RESULT_DIMS[:5], "float32", "the task's finer score (passkey: its digits reproduced in place)", NAN
    ),
    "answer_distracted": Var(
        RESULT_DIMS[:5],
        "bool",
        "the answer gives a distractor needle's value (outside every target value)",
        False,
    ),
    "cause": Var(
        RESULT_DIMS[:5],
        "int8",
        "why the answer failed where the full cache answers (`CAUSES`; -1: answered, the full cache fails, "
        "or not scored)",
        -1,
    ),
    "answer_ids": Var(
        (*RESULT_DIMS[:5], "answer_token"),
        "int32",
        "greedy answer token ids under the pruned cache (-1 = none)",
        -1,
    ),
}
ANSWER_METRICS = ("answer", "answer_digits")
# a failed answer's one cause (`cause`'s codes, in order), where the full cache answers and the pruned
# cache does not (answer < 1); the first that holds wins (`analyze.causes.failure_cause`)
CAUSES = ("distracted", "partial", "evicted", "kept but unused")
SUBSET_DIM = "subset"
RESULT_COORDS = (SETTING, *RESULT_DIMS, "pair", "variant", SUBSET_DIM)


def heads_name(metric: str) -> str:
    """Per-document mean of a metric over each head subset."""
    return f"{metric}_heads"


def summary_name(metric: str, stat: str) -> str:
    """Mean, 95% interval bound or count (`SUMMARIES`) across samples of `{metric}_heads`."""
    return f"{metric}_{stat}"


def summary_dims() -> tuple[str, ...]:
    return (SUBSET_DIM, *(d for d in RESULT_DIMS if d not in ("sample", "layer", "head")))


def result_vars(answers: bool = False) -> dict[str, tuple[tuple[str, ...], str]]:
    """Every RESULTS variable -> (dims, dtype), the summaries included (`answers`: with --answers);
    all but `SETTING_FREE` have the `setting` dimension first."""
    out = _result_vars(answers)
    return {k: ((dims if k in SETTING_FREE else (SETTING, *dims)), t) for k, (dims, t) in out.items()}


def _result_vars(answers: bool) -> dict[str, tuple[tuple[str, ...], str]]:
    out = {name: (v.dims, v.dtype) for name, v in RESULT_VARS.items()}
    if answers:
        out.update({name: (v.dims, v.dtype) for name, v in ANSWER_VARS.items()})
        answer_summary = tuple(d for d in summary_dims() if d != SUBSET_DIM)
        for metric in ANSWER_METRICS:
            for stat in SUMMARIES:
                out[summary_name(metric, stat)] = (answer_summary, summary_dtype(stat))
        out["answer_given_full"] = (answer_summary, "float32")
        out["calibration"] = (("rule", "stat"), "float64")
    doc_dims = (SUBSET_DIM, *(d for d in RESULT_DIMS if d not in ("layer", "head")))
    for metric in HEAD_METRICS:
        out[heads_name(metric)] = (doc_dims, "float32")
        for stat in SUMMARIES:
            out[summary_name(metric, stat)] = (summary_dims(), summary_dtype(stat))
    return out


# -- validation --------------------------------------------------------------------------------
def check_version(kind: str, attrs: dict, path: str) -> str:
    """The store's schema version, or a UsageError saying how to get a readable store."""
    found = attrs.get(KIND_ATTR)
    version = str(attrs.get("schema_version", ""))
    if found not in (None, kind):
        raise UsageError(f"{path!r} is a {found} store, not a {kind} store")
    if version.split(".")[0] in READABLE_MAJOR[kind]:
        return version
    remedy = (
        "re-run `python -m dump` with the same options into a new --out"
        if kind == RUN_KIND
        else "re-run `python -m analyze RUN.zarr` to rebuild them"
    )
    raise UsageError(
        f"{path!r} has {kind} schema version {version or 'none'!r}; this version reads "
        f"{', '.join(m + '.x' for m in READABLE_MAJOR[kind])}: {remedy}"
    )


def seeds_by_depth_index(version: str) -> bool:
    """Stores before RUN 2.2 seeded each document by its depth's index in the plan's grid."""
    try:
        major, minor = (int(x) for x in str(version).split(".")[:2])
    except ValueError:
        return True
    return (major, minor) < (2, 2)


def layer_windows(model_config: dict) -> list[int | None]:
    """Each layer's sliding window W (it sees only the last W keys), or None for full attention,
    from `model_config.layer_types` ("full", "sliding:W"); stores without it are all full."""
    out = []
    for t in model_config.get("layer_types") or ["full"] * int(model_config["layers"]):
        out.append(
            int(t.split(":")[1]) if str(t).startswith("sliding:") and t.split(":")[1] != "None" else None
        )
    return out


def prunable(window: int | None, length: int) -> bool:
    """A layer whose window is shorter than the prompt cannot see the needle from the answer position
    unless it is among the last W keys, whatever a policy keeps: it is not pruned, not scored."""
    return window is None or window >= length


def run_group_differences(
    group, full: bool, kv: bool = False, keys: bool = False, kvzip: bool = False, queries: bool = False
) -> list[str]:
    """What in one `len_{N}` zarr group departs from RUN_VARS (empty when it matches exactly)."""
    expected = run_vars(full, kv, keys, kvzip, queries)
    found = set(group.array_keys())
    out = [f"missing variable {v}" for v in expected if v not in found]
    out += [f"unexpected variable {v}" for v in sorted(found - set(expected))]
    for name, var in expected.items():
        if name not in found:
            continue
        a = group[name]
        if tuple(a.metadata.dimension_names or ()) != var.dims:
            out.append(f"{name}: dims {a.metadata.dimension_names} != {var.dims}")
        if str(a.dtype) != var.dtype and not (var.dtype == "str" and "String" in str(a.dtype)):
            out.append(f"{name}: dtype {a.dtype} != {var.dtype}")
    return out


def results_differences(ds) -> list[str]:
    """What in a RESULTS dataset departs from the schema (empty when it matches exactly)."""
    expected = result_vars(answers="answer" in ds.data_vars)
    out = [f"missing variable {v}" for v in expected if v not in ds.data_vars]
    out += [f"unexpected variable {v}" for v in sorted(set(ds.data_vars) - set(expected))]
    for name, (dims, dtype) in expected.items():
        if name in ds.data_vars:
            if tuple(ds[name].dims) != dims:
                out.append(f"{name}: dims {tuple(ds[name].dims)} != {dims}")
            if str(ds[name].dtype) != dtype:
                out.append(f"{name}: dtype {ds[name].dtype} != {dtype}")
    return out


def open_results(path: str):
    """RESULTS.zarr as an xarray Dataset, refused with one sentence if it is not a readable one."""
    import xarray as xr

    try:
        ds = xr.open_zarr(path)
    except Exception:
        raise UsageError(
            f"results {path!r} do not exist or are not a RESULTS.zarr: make them with `python -m analyze`"
        ) from None
    if SETTING not in ds.dims and POLICY in ds.dims:
        raise UsageError(
            f"results {path!r} predate the setting dimension (RESULTS schema 2): "
            f"re-run `python -m analyze RUN.zarr` to rebuild them"
        )
    if "method" in ds.dims and POLICY not in ds.dims:
        raise UsageError(
            f"results {path!r} use schema 1 (dimension `method`, now `policy`): "
            f"re-run `python -m analyze RUN.zarr` to rebuild them"
        )
    check_version(RESULTS_KIND, dict(ds.attrs), path)
    missing = [v for v in (*HEAD_METRICS, heads_name("needle_hit"), "retrieval_head") if v not in ds]
    if missing:
        raise UsageError(
            f"{path!r} is not a RESULTS.zarr from `python -m analyze` (missing {', '.join(missing)})"
        )
    return ds


def in_setting(results, setting: str):
    """RESULTS of one setting (no `setting` dimension), with that setting's attributes."""
    if SETTING not in results.dims:  # already one setting's
        return results
    ds = results.sel({SETTING: setting})
    ds.attrs = {
        **results.attrs,
        **dict(results.attrs.get("by_setting", {}).get(setting, {})),
        "setting": setting,
    }
    cal = ds.attrs.pop("calibration_attrs", None)
    if cal is not None and "calibration" in ds:
        ds["calibration"].attrs = dict(cal)
    return ds
