"""Pruning policies by name. Adding a policy is one module in this folder plus one line in REGISTRY
(or `register(cls)` from outside): the engine reads what it needs from the class's attributes."""

from __future__ import annotations

import dataclasses
import re

from analyze.policies.adakv import AdaKV
from analyze.policies.base import DocLayer, Policy, Ranking, budget, keep, select, select_reference
from analyze.policies.block_mass import BlockMass
from analyze.policies.cab import CAB
from analyze.policies.cab_3c import CAB3C
from analyze.policies.cab_forman import CABForman
from analyze.policies.cab_high import CABHigh
from analyze.policies.cab_hybrid import CABHybrid
from analyze.policies.duo import Duo
from analyze.policies.expected_attention import ExpectedAttention
from analyze.policies.full import Full
from analyze.policies.h2o import H2O
from analyze.policies.keydiff import KeyDiff
from analyze.policies.knorm import KNorm
from analyze.policies.kvzip import KVzip
from analyze.policies.oracle import Oracle
from analyze.policies.pyramidkv import PyramidKV
from analyze.policies.random_keys import RandomKeys
from analyze.policies.snapkv import SnapKV
from analyze.policies.streaming import Streaming
from analyze.policies.tova import TOVA
from core.errors import UsageError
from core.optionkit import boolean

REGISTRY: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (
        Full,
        Oracle,
        RandomKeys,
        Streaming,
        H2O,
        SnapKV,
        TOVA,
        CAB,
        CABHigh,
        CABHybrid,
        CAB3C,
        BlockMass,
        PyramidKV,
        AdaKV,
        KNorm,
        KeyDiff,
        CABForman,
        Duo,
        ExpectedAttention,
        KVzip,
    )
}
ALL_POLICIES = list(REGISTRY)


def register(cls: type[Policy]) -> type[Policy]:
    """Add a policy class (a frozen dataclass subclass of Policy with a unique `name`)."""
    if not (isinstance(cls, type) and issubclass(cls, Policy) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass subclass of Policy")
    REGISTRY[cls.name] = cls
    return cls


def default(name: str) -> Policy:
    """The registered policy `name` with its default parameters."""
    return REGISTRY[name]()


__all__ = [
    "REGISTRY",
    "ALL_POLICIES",
    "DocLayer",
    "Policy",
    "Ranking",
    "budget",
    "keep",
    "select",
    "select_reference",
    "parse_policy",
    "describe",
    "register",
    "default",
]


def _convert(value: str, f: dataclasses.Field):
    """A parameter's text -> its value, by its declared parser (type and range) or its default's type."""
    parse = f.metadata.get("parse")
    if parse is not None:
        return parse(value)
    if isinstance(f.default, bool):
        return boolean(value)
    try:
        return type(f.default)(value)
    except ValueError:
        raise ValueError(f"must be a {type(f.default).__name__}") from None


def parse_policy(spec: str) -> Policy:
    """`h2o` or `h2o:recent_ratio=0.2:normalize=true` -> a policy instance, every parameter checked."""
    name, *params = spec.strip().split(":")
    if name not in REGISTRY:
        raise UsageError(f"unknown policy {name!r}: choose from {', '.join(REGISTRY)}")
    cls = REGISTRY[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for p in params:
        key, eq, value = p.partition("=")
        if key not in fields or not eq:
            allowed = ", ".join(fields) or "none"
            raise UsageError(
                f"policy {name!r} has no parameter {key if eq else p!r}: its parameters are {allowed} (as {name}:key=value)"
            )
        if key in kwargs:
            raise UsageError(f"parameter {key} of policy {name!r} is given twice in {spec!r}")
        try:
            kwargs[key] = _convert(value, fields[key])
        except ValueError as err:
            raise UsageError(f"parameter {key}={value!r} of policy {name!r} {err}") from None
    policy = cls(**kwargs)
    problem = policy.check()
    if problem:
        raise UsageError(f"policy {spec!r}: {problem}")
    return policy


def label(policy: Policy) -> str:
    """The policy's coordinate in RESULTS.zarr: its name, plus any non-default parameters."""
    changed = [
        f"{f.name}={getattr(policy, f.name)}"
        for f in dataclasses.fields(policy)
        if getattr(policy, f.name) != f.default
    ]
    return ":".join([policy.name, *changed])


def describe() -> list[str]:
    lines = []
    for name, cls in REGISTRY.items():
        params = (
            ", ".join(
                f"{f.name}={f.default!r}" + (f" ({f.metadata['allowed']})" if "allowed" in f.metadata else "")
                for f in dataclasses.fields(cls)
            )
            or "no parameters"
        )
        doc = " ".join((cls.__doc__ or "").split())
        first = re.split(r"(?<!al)\. ", doc)[0].rstrip(".") + "."
        reads = ", ".join(default(name).reads) or "the answer row only"
        lines.append(f"{name:<11} {first}  [{params}] reads: {reads}")
    return lines
