"""Pruning policies by name. Adding a policy is one module in this folder plus one line in REGISTRY
(or `register(cls)` from outside): the engine reads what it needs from the class's attributes."""

from __future__ import annotations

import dataclasses

from analyze.errors import UsageError
from analyze.policies.base import DocLayer, Policy, Ranking, budget, keep, select, select_reference
from analyze.policies.block_mass import BlockMass
from analyze.policies.cab import CAB
from analyze.policies.cab_3c import CAB3C
from analyze.policies.cab_high import CABHigh
from analyze.policies.cab_hybrid import CABHybrid
from analyze.policies.full import Full
from analyze.policies.h2o import H2O
from analyze.policies.oracle import Oracle
from analyze.policies.random_keys import RandomKeys
from analyze.policies.snapkv import SnapKV
from analyze.policies.streaming import Streaming
from analyze.policies.tova import TOVA

REGISTRY: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (Full, Oracle, RandomKeys, Streaming, H2O, SnapKV, TOVA, CAB, CABHigh, CABHybrid, CAB3C, BlockMass)
}
ALL_METHODS = list(REGISTRY)


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
    "ALL_METHODS",
    "DocLayer",
    "Policy",
    "Ranking",
    "budget",
    "keep",
    "select",
    "select_reference",
    "parse_method",
    "describe",
    "register",
    "default",
]


def _convert(value: str, default):
    if isinstance(default, bool):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise ValueError
    return type(default)(value)


def parse_method(spec: str) -> Policy:
    """`h2o` or `h2o:recent_ratio=0.2:normalize=true` -> a policy instance."""
    name, *params = spec.strip().split(":")
    if name not in REGISTRY:
        raise UsageError(f"unknown method {name!r}: choose from {', '.join(REGISTRY)}")
    cls = REGISTRY[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for p in params:
        key, _, value = p.partition("=")
        if key not in fields:
            allowed = ", ".join(fields) or "none"
            raise UsageError(f"method {name!r} has no parameter {key!r}: its parameters are {allowed}")
        try:
            kwargs[key] = _convert(value, fields[key].default)
        except ValueError:
            raise UsageError(
                f"parameter {key}={value!r} of method {name!r} must be a {type(fields[key].default).__name__}"
            ) from None
    return cls(**kwargs)


def label(policy: Policy) -> str:
    """The method's coordinate in RESULTS.zarr: its name, plus any non-default parameters."""
    changed = [
        f"{f.name}={getattr(policy, f.name)}"
        for f in dataclasses.fields(policy)
        if getattr(policy, f.name) != f.default
    ]
    return ":".join([policy.name, *changed])


def describe() -> list[str]:
    lines = []
    for name, cls in REGISTRY.items():
        params = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls)) or "no parameters"
        doc = " ".join((cls.__doc__ or "").split())
        first = doc.split(". ")[0].rstrip(".") + "."
        lines.append(f"{name:<11} {first}  [{params}]")
    return lines
