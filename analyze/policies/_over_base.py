"""What a budget-allocation policy (PyramidKV, Ada-KV) shares: it ranks keys exactly as its base
scorer does and changes only how many keys each layer or head keeps (`analyze.budgets`)."""

from __future__ import annotations

from dataclasses import dataclass

from analyze.policies.base import DocLayer, Policy, Ranking


def base_name(value: str) -> str:
    """A registered policy that ranks keys with the uniform budget (the base of an allocation)."""
    from analyze.policies import REGISTRY

    value = str(value).strip()
    cls = REGISTRY.get(value)
    if cls is None:
        raise ValueError(f"is not a registered policy ({', '.join(REGISTRY)})")
    if issubclass(cls, OverBase) or cls.name in ("full", "oracle"):
        raise ValueError("must be a key scorer with a uniform budget, not full, oracle or an allocation")
    return value


@dataclass(frozen=True)
class OverBase(Policy):
    """A base scorer's ranking under another allocation. Subclasses declare a `base: str` parameter
    and an `allocation` property."""

    base: str = "snapkv"
    compare_with = ("h2o", "snapkv")  # Jaccard with accumulated attention and the window's votes

    @property
    def scorer(self) -> Policy:
        from analyze.policies import default

        return default(self.base)

    @property
    def reads(self) -> tuple[str, ...]:
        return self.scorer.reads

    @property
    def sets(self) -> str:
        return self.scorer.sets

    @property
    def block(self) -> int:
        return self.scorer.block

    def rows_needed(self, observed: int) -> int:
        return self.scorer.rows_needed(observed)

    def minimum_keys(self, observed: int) -> int:
        return self.scorer.minimum_keys(observed)

    def rank(self, x: DocLayer, k: int) -> Ranking:
        return self.scorer.rank(x, k)

    def rank_reference(self, x: DocLayer, k: int) -> Ranking:
        return self.scorer.rank_reference(x, k)
