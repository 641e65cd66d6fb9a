"""The dump stage's options, declared once: `python -m dump` flags and a config's `dump:` section
are both derived from `DumpOptions` (see dump/optionkit.py)."""

from __future__ import annotations

from dataclasses import dataclass

from core import tasks
from core.lm import DEFAULT_MODEL
from core.optionkit import (
    choice,
    device,
    devices,
    integer,
    number,
    option,
    optional,
    rope_scaling,
    scheduler,
    text,
)
from core.tasks import haystack, values

DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")


def lengths(value: str) -> list[int]:
    return haystack.parse_lengths(value)


def depths(value: str) -> list[float]:
    return haystack.parse_depths(value)


def filler(value: str) -> str:
    return haystack.parse_filler(value)


MAX_LAYERS = 1024  # bounds layer numbers (checked against the model before any work)
# the largest window, block and sample count an option accepts (each checked against the run before any work)
MAX_ROWS = 1 << 16
MAX_SAMPLES = 100_000
SEED_MAX = 2**32 - 1  # numpy's seed range


def layers(value: str) -> list[int]:
    """`18,20-23` -> [18, 20, 21, 22, 23]."""
    out = []
    for item in str(value).split(","):
        item = item.strip()
        try:
            if "-" in item[1:]:
                a, b = (int(x) for x in item.split("-", 1))
                if b < a:
                    raise ValueError
            else:
                a = b = int(item)
        except ValueError:
            raise ValueError("cannot be read: use layer numbers and ranges like 18,20-23") from None
        if a < 0:
            raise ValueError("holds a negative layer: layers count from 0")
        if b >= MAX_LAYERS:
            raise ValueError(f"holds a layer of {MAX_LAYERS} or more: no model here has that many")
        out += range(a, b + 1)
    return sorted(set(out))


def block(value: str) -> int | str:
    if str(value).strip() == "auto":
        return "auto"
    return integer(minimum=1, maximum=MAX_ROWS)(value)


def store_parts(value: str) -> str:
    """`stats`, `full`, `keys`, `queries`, `kv`, `kvzip` comma-separated -> the canonical setting
    (`stats`, `full`, `stats,kv`, `stats,keys,queries`, ...)."""
    from core import schema

    parts = [p.strip() for p in str(value).split(",") if p.strip()]
    bad = [p for p in parts if p not in schema.STORE_PARTS]
    if not parts or bad:
        raise ValueError(f"is not a list of {', '.join(schema.STORE_PARTS)} (e.g. stats,kv)")
    return schema.store_label(schema.store_parts(",".join(parts)))


def document_coordinates(value: str) -> tuple[int, float, int]:
    """`4096,0.5,0` -> (4096, 0.5, 0): one document by its length, depth value and sample index."""
    parts = str(value).split(",")
    try:
        if len(parts) != 3:
            raise ValueError
        (n,), depth, sample = haystack.parse_lengths(parts[0]), float(parts[1]), int(parts[2])
    except (ValueError, haystack.HaystackError):
        raise ValueError("is not LENGTH,DEPTH,SAMPLE (e.g. 4096,0.5,0)") from None
    if sample < 0 or not 0 <= depth <= 1:
        raise ValueError("is not LENGTH,DEPTH,SAMPLE with a depth in [0, 1] and a sample index >= 0")
    return (n, round(depth, 6), sample)


@dataclass
class DumpOptions:
    out: str = option(
        "runs/run.zarr", "the store (a directory or fsspec URL)", text, config=False, metavar="PATH"
    )
    model: str = option(
        DEFAULT_MODEL,
        "embedded name (smollm2-135m; gemma3-270m: 32k context, hybrid sliding-window attention; "
        "qwen2.5-coder-0.5b or qwen2.5-coder-1.5b: 32k context, 128k with --rope-scaling yarn:4), a .gguf file, "
        "a local HF directory, or a cached HF id; never downloads",
        text,
    )
    task: str = option(
        "passkey",
        "what each document asks: passkey, single, multikey:K, multivalue:V, multiquery:Q, or ruler:NAME "
        "(RULER's configurations); see --list-tasks",
        tasks.parse_task,
    )
    needle_type: str | None = option(
        None,
        "the needles' values: word, number (7 digits) or uuid (RULER tasks)",
        optional(choice(*values.TYPES)),
    )
    haystack: str | None = option(
        None,
        "noise (RULER's repeated sentences), essay (the nature filler, or --filler's text file) or needles "
        "(needle sentences with other keys); default: --filler",
        optional(choice(*tasks.HAYSTACKS)),
    )
    lengths: list[int] = option([1024], "prompt lengths in tokens, e.g. 4k,16K,1500 (k = 1024)", lengths)
    depths: list[float] = option(
        [0.1, 0.5, 0.9], "needle depths in [0,1]: 0.1,0.5,0.9 or linspace:0,1,11 or sigmoid:0,1,11", depths
    )
    samples: int = option(
        1, "documents per (length, depth), each with its own passkey", integer(minimum=1, maximum=MAX_SAMPLES)
    )
    seed: int = option(0, "seed of passkeys and filler order", integer(minimum=0, maximum=SEED_MAX))
    filler: str = option("ruler", "haystack filler: ruler, nature, or a text file path", filler)
    window: int = option(
        64,
        "W: the last W queries, whose attention rows are summed into window_sum",
        integer(minimum=1, maximum=MAX_ROWS),
    )
    window_rows: int = option(
        1,
        "R: how many of the last W rows are stored whole (the final row, which every policy's metrics "
        "read; snapkv:window=R reads R of them, and is refused on a store with fewer); R = W stores them all",
        integer(minimum=1, maximum=MAX_ROWS),
    )
    block: int | str = option(
        "auto",
        "B: block size of block sums and pooled Q/K, or auto (64, larger only to keep at most 1024 blocks)",
        block,
    )
    store: str = option(
        "stats",
        "what is stored besides the statistics, comma-separated: full (whole attention matrices of "
        "--layers), keys (post-RoPE keys: knorm, keydiff), queries (the keys, with the queries' moments "
        "and the values' norms: expected_attention), kv (keys and values: `analyze --answers` then needs "
        "no prefill), kvzip (KVzip's scores from a reconstruction forward per setting); e.g. stats, full, "
        "stats,keys, stats,keys,queries, stats,kv,kvzip",
        store_parts,
    )
    kvzip: bool = option(
        False, "also record KVzip's scores (the same as adding kvzip to --store): an extra forward", flag=True
    )
    layers: list[int] | None = option(
        None, "layers of full matrices with --store full, e.g. 18,20-23 (default all)", optional(layers)
    )
    device: str = option("auto", "auto, cpu, cuda or cuda:N", device)
    devices: list[str] | None = option(
        None,
        "several devices on this host, e.g. cuda:0,cuda:1 or all: documents sharded one process per "
        "device (a device listed twice runs two processes)",
        optional(devices),
    )
    scheduler: str | None = option(
        None,
        "a Dask scheduler (tcp://HOST:8786): one document per task on its workers; CUDA runs need workers "
        "started with --resources GPU=1",
        optional(scheduler),
    )
    rope_scaling: str | None = option(
        None,
        "linear:F or yarn:F: stretch the RoPE of the full-attention layers by F to run beyond the "
        "trained context (recorded in provenance)",
        optional(rope_scaling),
    )
    dtype: str = option(
        "auto", "auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16", choice(*DTYPE_NAMES)
    )
    overwrite: bool = option(False, "replace a store made by dump with other settings", flag=True)
    redo: tuple | None = option(
        None,
        "re-dump one finished document, LENGTH,DEPTH,SAMPLE (e.g. 4096,0.5,0: its length, depth value and "
        "sample index), e.g. one that analyze reported missing or corrupt",
        optional(document_coordinates),
        config=False,
        metavar="L,D,S",
    )
    max_gb: float = option(20.0, "refuse --store full above this many GB", number(above=0, maximum=1e6))
    progress: bool = option(True, "no progress bars", flag=True, config=False)
    list_tasks: bool = option(
        False, "list the tasks and RULER's configurations and exit", flag=True, config=False
    )
