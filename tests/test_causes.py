"""A failed answer's one cause (`analyze.causes`), on hand-built cells of each kind, and on a real
analysis: every failed answer where the full cache answers has exactly one, every other cell none."""

from __future__ import annotations

import numpy as np

from analyze import causes
from core import schema

DISTRACTED, PARTIAL, EVICTED, UNUSED = (schema.CAUSES.index(c) for c in schema.CAUSES)


def test_hand_built_cells_of_each_kind():
    # (answer, full cache answers, distractor given, best retrieval-head needle_hit) -> cause
    cells = [
        ((0.0, True, True, 1.0), DISTRACTED),  # a distractor given, the target kept
        ((0.0, True, True, 0.0), DISTRACTED),  # a distractor given wins over eviction
        ((0.5, True, False, 0.0), PARTIAL),  # two of four values given
        ((0.25, True, False, 1.0), PARTIAL),
        ((0.0, True, False, 0.0), EVICTED),  # no retrieval head keeps it
        ((0.0, True, False, 0.75), EVICTED),  # no retrieval head keeps every value
        ((0.0, True, False, np.nan), EVICTED),  # no head scored it: not kept
        ((0.0, True, False, 1.0), UNUSED),  # kept whole in a retrieval head, still wrong
        ((1.0, True, True, 0.0), -1),  # answered: no cause
        ((0.0, False, False, 0.0), -1),  # the full cache fails: no ranking, no cause
        ((np.nan, True, False, 0.0), -1),  # not scored in this setting
    ]
    got = causes.failure_cause(*(np.array([c[0][k] for c in cells]) for k in range(4)))
    assert got.tolist() == [want for _, want in cells]
    assert got.dtype == np.int8


def check_causes(ds) -> None:
    """Every RESULTS cell: a cause exactly where the full cache answers and the pruned one does not."""
    failed = (ds.answer < 1) & ds.retrieved.astype(bool) & ds.answer.notnull()
    has = ds.cause >= 0
    assert bool((failed == has).all()), "a cause where none is due, or none where one is"
    assert set(np.unique(ds.cause.values)) <= {-1, *range(len(schema.CAUSES))}
    partial = (ds.answer > 0) & (ds.answer < 1) & failed & ~ds.answer_distracted
    assert bool((ds.cause.where(partial) == PARTIAL).where(partial, True).all())
    # evicted / kept but unused follow the retrieval heads' best needle_hit
    heads = ds.retrieval_head.astype(bool)
    best = ds.needle_hit.where(heads).max(["layer", "head"])
    rest = failed & ~ds.answer_distracted & ~partial
    assert bool(((ds.cause == EVICTED) == ~(best >= 1)).where(rest, True).all())
