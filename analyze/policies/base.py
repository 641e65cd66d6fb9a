"""What every policy shares: the statistics of one document-layer, the budget rule, and the one
helper that turns rankings into exactly k kept keys per head.

A policy answers: at the final prompt token (the answer position), which keys stay in the cache?
It returns a `Ranking`; `keep()` applies the GQA granularity and the budget. Pure numpy in and out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numba
import numpy as np

from analyze.budgets import UNIFORM
from core.runstore import DocLayer


def budget(sparsity: float, n: int) -> int:
    """The budget rule (contract): k = round((1 - sparsity) · N) keys per head."""
    return int(round((1.0 - sparsity) * n))


@dataclass
class Ranking:
    """Order of preference over keys, per head (or one row shared by all heads).

    primary, secondary: (row, key), higher is kept first; ties go to the earlier key.
    forced: (row, key) bool, always kept (sinks, recent windows), counted inside the budget.
    """

    primary: np.ndarray
    secondary: np.ndarray | None = None
    forced: np.ndarray | None = None


def sink_mask(rows: int, n: int, count: int) -> np.ndarray:
    """(rows, n) bool: the first `count` keys of every row (attention sinks, forced inside the budget)."""
    out = np.zeros((rows, n), bool)
    out[:, : min(count, n)] = True
    return out


def recent_mask(rows: int, n: int, count: int) -> np.ndarray:
    m = np.zeros((rows, n), dtype=bool)
    if count > 0:
        m[:, n - min(count, n) :] = True
    return m


def expand_blocks(block_scores: np.ndarray, block: int, n: int) -> np.ndarray:
    """(row, kblock) -> (row, key): every key takes its block's score."""
    return np.repeat(block_scores, block, axis=-1)[..., :n]


# -- exactly k per row -------------------------------------------------------------------------
def row_budgets(k, rows: int) -> np.ndarray:
    """A budget for every row: k alone (every row keeps k) or one per row."""
    ks = np.broadcast_to(np.asarray(k, dtype=np.int64), (rows,))
    return np.ascontiguousarray(ks)


def select_reference(primary, k, forced=None, secondary=None) -> np.ndarray:
    """Obviously-correct numpy: per row r, forced keys first (earliest first if they alone exceed
    k[r]), then the others by (primary, secondary) descending, earlier key first on ties, until
    exactly k[r] (`k`: one budget for all rows, or one per row)."""
    rows, n = primary.shape
    ks = row_budgets(k, rows)
    keep = np.zeros((rows, n), dtype=bool)
    for r in range(rows):
        k = ks[r]
        f = np.zeros(n, bool) if forced is None else forced[r]
        sec = np.zeros(n) if secondary is None else secondary[r]
        rest = np.flatnonzero(~f)
        order = rest[np.lexsort((rest, -sec[rest], -primary[r][rest]))]  # the last key sorts first
        keep[r, np.concatenate([np.flatnonzero(f), order])[:k]] = True
    return keep


@numba.njit(cache=True)
def _select_kernel(primary, secondary, forced, ks, has_secondary, has_forced):
    """Same contract as select_reference, in O(N) per row: thresholds by partition instead of a sort."""
    rows, n = primary.shape
    keep = np.zeros((rows, n), dtype=np.bool_)
    free = np.empty(n, dtype=np.int64)
    ties = np.empty(n, dtype=np.int64)
    values = np.empty(n, dtype=np.float64)
    for r in range(rows):
        k = ks[r]
        taken = 0
        c = 0
        for j in range(n):
            if has_forced and forced[r, j]:
                if taken < k:
                    keep[r, j] = True
                    taken += 1
            else:
                free[c] = j
                c += 1
        need = k - taken
        if need <= 0:
            continue
        if need >= c:
            for t in range(c):
                keep[r, free[t]] = True
            continue
        # level 1: everything strictly above the need-th largest primary
        for t in range(c):
            values[t] = primary[r, free[t]]
        t1 = np.partition(values[:c], c - need)[c - need]
        nt = 0
        for t in range(c):
            j = free[t]
            if primary[r, j] > t1:
                keep[r, j] = True
                need -= 1
            elif primary[r, j] == t1:
                ties[nt] = j
                nt += 1
        if need == 0:
            continue
        if nt == need:
            for t in range(nt):
                keep[r, ties[t]] = True
            continue
        # level 2: among primary ties, by secondary; then the earliest key
        t2 = 0.0
        if has_secondary:
            for t in range(nt):
                values[t] = secondary[r, ties[t]]
            t2 = np.partition(values[:nt], nt - need)[nt - need]
            for t in range(nt):
                j = ties[t]
                if secondary[r, j] > t2:
                    keep[r, j] = True
                    need -= 1
        for t in range(nt):  # ascending key order
            if need == 0:
                break
            j = ties[t]
            if (secondary[r, j] if has_secondary else 0.0) == t2:
                keep[r, j] = True
                need -= 1
    return keep


_NONE_F = np.zeros((1, 1))
_NONE_B = np.zeros((1, 1), dtype=np.bool_)


def select(primary, k, forced=None, secondary=None) -> np.ndarray:
    """Numba twin of `select_reference` (same result, bit for bit)."""
    primary = np.ascontiguousarray(primary, dtype=np.float64)
    sec = _NONE_F if secondary is None else np.ascontiguousarray(secondary, dtype=np.float64)
    f = _NONE_B if forced is None else np.ascontiguousarray(forced, dtype=np.bool_)
    ks = row_budgets(k, primary.shape[0])
    return _select_kernel(primary, sec, f, ks, secondary is not None, forced is not None)


def keep(
    policy, x: DocLayer, k: int, gqa: str = "kv", reference: bool = False, budgets=None, setting=None
) -> np.ndarray:
    """(head, key) bool: rank -> (allocated budgets) -> select. Head h keeps exactly budgets[h] keys
    (default: `policy.budget_for(k, N)` every head; `analyze.budgets` allocates them per layer and
    head). The policy ranks with the layer's fixed budget k and sees `x` as `setting` shows it.

    The sets are shared as `policy.sets` says: "kv" (default) follows --gqa: under gqa="kv" a real
    cache stores one key per kv head, so the policy ranks the group's statistics averaged over its
    query heads and keeps one set per kv head, broadcast back (a group's heads must share a budget);
    gqa="head": one set per query head (idealized). "head": always one set per query head (the oracle,
    a ceiling). "layer": one set for every head of the layer (TOVA); its heads must share a budget.
    """
    k = policy.budget_for(k, x.n)
    budgets = row_budgets(k if budgets is None else budgets, x.heads)
    pick = select_reference if reference else select
    rank = policy.rank_reference if reference else policy.rank
    g = x.heads // x.kv_heads

    def seen(v: DocLayer) -> DocLayer:
        return v if setting is None else v.visible(setting)

    if policy.sets == "layer":
        _shared(budgets, x.heads, policy)
        r = rank(seen(x), k)
        one = pick(r.primary[:1], budgets[:1], _first(r.forced), _first(r.secondary))
        return np.repeat(one, x.heads, axis=0)
    if gqa == "kv" and g > 1 and policy.sets == "kv":
        _shared(budgets, g, policy)
        r = rank(seen(x.group_mean()), k)
        return np.repeat(pick(r.primary, budgets[::g], r.forced, r.secondary), g, axis=0)
    r = rank(seen(x), k)
    return pick(r.primary, budgets, r.forced, r.secondary)


def _first(a):
    return None if a is None else a[:1]


def _shared(budgets: np.ndarray, size: int, policy) -> None:
    """Heads that share one kept set must share one budget."""
    if (budgets.reshape(-1, size) != budgets.reshape(-1, size)[:, :1]).any():
        raise ValueError(f"{policy.name} keeps one set per {size} heads, but its budgets differ among them")


def param(default, parse, allowed: str):
    """A policy parameter: its default, its parser (text -> value, ValueError saying what is allowed)
    and a short description of the allowed values for `--list-policies`."""
    return dataclasses.field(default=default, metadata={"parse": parse, "allowed": allowed})


def fold_of(d: int, s: int) -> int:
    """A document's calibration fold (depth index + sample) % 2: a policy that learns from documents
    learns on the other fold, never on the document it scores."""
    return (d + s) % 2


class Policy:
    """Base of all policies: subclasses are frozen dataclasses with a `rank(x, k)` method.

    What the engine needs to know about a policy is declared here, never looked up by name:
    - `reads`: the RUN.zarr statistics `rank` uses (the final query row is always loaded);
    - `sets`: who shares a kept set: "kv" (follows --gqa), "head" (one set per query head even
      under `--gqa kv`: ceilings) or "layer" (one set for every head of the layer);
    - `allocation`: how the document's budget is spread over layers and heads (`analyze.budgets`;
      default: the same k for every head of every prunable layer);
    - `block`: block size it ranks whole blocks of (0 = the stored B, else a multiple of it; 0 for
      key-level policies) — the engine shows it the stored blocks coarsened to that size;
    - `block_scores`: it has `scores(x) -> (head, kblock)`, and RESULTS report their rank correlation
      with block attention mass (`curvature_mass_spearman`); `keeps_lowest`: lower scores are kept;
    - `compare_with`: registry names of policies whose kept sets RESULTS compare to this one's
      (`jaccard`, pair "this|that");
    - `reads_answer_row`: it ranks by the answer position's own row (a ceiling), which a setting whose
      policies see the context alone (`core.settings.Setting.context_only`) does not have: NaN there;
    - `calibrates_on_folds`: it learns from the documents of the other calibration fold (`fold_of`),
      so the store needs finished documents in both folds.
    """

    name = "policy"
    reads: tuple[str, ...] = ()
    sets = "kv"
    allocation = UNIFORM
    block = 0
    block_scores = False
    keeps_lowest = False
    compare_with: tuple[str, ...] = ()
    reads_answer_row = (
        False  # ranks by the answer position's row: undefined where policies see the context alone
    )
    calibrates_on_folds = False

    def check(self) -> str | None:
        """What is wrong with this combination of parameters, or None (each one alone is checked by
        its `param` declaration)."""
        return None

    def rows_needed(self, observed: int) -> int:
        """How many of the last attention rows `rank` needs stored whole, when the dump summed the last
        `observed` into `window_sum` (0: the stored statistics suffice). The engine refuses a store
        that keeps fewer (dump --window-rows)."""
        return 0

    def minimum_keys(self, observed: int) -> int:
        """The fewest keys this policy needs to be itself (its forced parts: sinks + a recent key,
        the voting window); a smaller budget is scored, warned about and recorded in RESULTS."""
        return 1

    def budget_for(self, k: int, n: int) -> int:
        """Keys this policy keeps under budget k (every policy but `full` keeps exactly k)."""
        return k

    def rank(self, x: DocLayer, k: int) -> Ranking:  # pragma: no cover - interface
        raise NotImplementedError

    def rank_reference(self, x: DocLayer, k: int) -> Ranking:
        """The plain numpy reference of `rank` (defaults to `rank` where numba does not pay)."""
        return self.rank(x, k)
