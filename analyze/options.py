"""The analyze stage's options, declared once: `python -m analyze` flags and a config's `analyze:`
section are both derived from `AnalyzeOptions` (see dump/optionkit.py)."""

from __future__ import annotations

from dataclasses import dataclass

from core.optionkit import choice, comma_list, device, integer, number, option, optional, scheduler, text
from core.settings import parse_setting

DEFAULT_POLICIES = [
    "full",
    "oracle",
    "random",
    "streaming",
    "h2o",
    "snapkv",
    "tova",
    "cab",
    "cab_high",
    "cab_hybrid",
    "cab_3c",
]


def policy_spec(value: str) -> str:
    """`h2o:recent_ratio=0.2`: checked against the registry (name, parameters, their types and ranges);
    returned as its RESULTS label, so `h2o` and `h2o:recent_ratio=0.5` count as the same policy."""
    from analyze import policies

    return policies.label(policies.parse_policy(value))


def sparsity(value: str) -> float:
    s = number()(value)
    if not 0.0 <= s < 1.0:
        raise ValueError("is outside [0, 1): it is the fraction of keys evicted")
    if abs(round(s, 4) - s) > 1e-12:  # 0.5 and 0.5000001 would be two rows with one name
        raise ValueError("has more than 4 decimals: give sparsities to 0.0001 (e.g. 0.875)")
    return s


@dataclass
class AnalyzeOptions:
    store: str | None = option(
        None, "RUN.zarr (a directory or fsspec URL)", optional(text), positional=True, config=False
    )
    policies: list[str] = option(
        DEFAULT_POLICIES,
        "policies, comma-separated; parameters as name:key=value[:key=value], e.g. h2o:recent_ratio=0.2",
        comma_list(policy_spec),
        metavar="POLICIES",
        alias="methods",
    )
    sparsity: list[float] = option(
        [0.9, 0.95, 0.99], "fractions of keys evicted, each in [0, 1)", comma_list(sparsity), metavar="S"
    )
    out: str | None = option(
        None,
        "RESULTS.zarr (default: next to the store, .results.zarr)",
        optional(text),
        config=False,
        metavar="PATH",
    )
    gqa: str = option(
        "kv", "kv: one kept set per kv head (a real cache); head: per query head", choice("kv", "head")
    )
    seed: int = option(0, "seed of the random policy", integer(minimum=0, maximum=2**32 - 1))
    setting: list[str] = option(
        ["aware"],
        "settings, comma-separated (RESULTS' setting dimension): aware (the question's rows are in every "
        "statistic; the cache is pruned after the question was read) and agnostic (the context compressed "
        "before the question is known, from the context's own statistics)",
        comma_list(parse_setting),
        metavar="SETTINGS",
    )
    retrieval_heads: int = option(
        10, "how many heads count as retrieval heads", integer(minimum=1, maximum=1 << 20)
    )
    scheduler: str | None = option(
        None, "address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786", optional(scheduler)
    )
    workers: int | None = option(
        None, "local worker processes (default: min(4, cores))", optional(integer(minimum=1, maximum=1024))
    )
    answers: bool = option(
        False,
        "also decode the model's own answer under every pruned cache (the dump's model and dtype) and "
        "calibrate the proxy metrics against it",
        flag=True,
    )
    answer_device: str = option(
        "cpu",
        "where --answers decodes (in the dump's dtype): cpu, cuda, cuda:N, or auto (cuda when one is visible)",
        device,
        metavar="DEVICE",
    )
    skip_corrupt: bool = option(
        False,
        "score the documents that read cleanly and list those with missing or corrupt chunks",
        flag=True,
    )
    reference: bool = option(False, "use the plain numpy references instead of numba kernels", flag=True)
    list_policies: bool = option(
        False, "list policies with their parameters and exit", flag=True, config=False, alias="list_methods"
    )
    progress: bool = option(True, "no progress bars", flag=True, config=False)
