"""Why a pruned cache's answer failed: one cause per (policy, sparsity, document), where the full
cache answers (`retrieved`) and the pruned cache does not (`answer` < 1, RULER's string_match_all).

The rule, in order; the first that holds is the cause (its code: the index in `core.schema.CAUSES`):
- distracted: the answer gives a distractor needle's value (`answer_distracted`);
- partial: some of the task's values are given, not all (0 < answer < 1: multi-value and
  multi-query tasks);
- evicted: no retrieval head keeps every target value whole (one value: no retrieval head keeps a
  whole copy of it), i.e. the retrieval heads' best `needle_hit` is below 1;
- kept but unused: some retrieval head keeps every target value whole, and the answer is still wrong.

Every other cell has code -1: answered, the full cache fails (no ranking there), or not scored.
Retention (evicted) against utilisation (kept but unused, distracted, partial) is the split that
tells an eviction policy's fault from the model's."""

from __future__ import annotations

import numpy as np
import xarray as xr

from core import schema

NONE = -1


def failure_cause(
    answer: np.ndarray, full_answers: np.ndarray, distracted: np.ndarray, best_hit: np.ndarray
) -> np.ndarray:
    """int8 codes (index in `schema.CAUSES`, -1 none) of broadcastable arrays: the pruned answer's
    score, whether the full cache answers, whether the answer gives a distractor, and the best
    `needle_hit` over the retrieval heads."""
    answer, full_answers, distracted, best_hit = np.broadcast_arrays(
        answer, full_answers, distracted, best_hit
    )
    failed = np.isfinite(answer) & (answer < 1) & full_answers.astype(bool)
    code = np.full(answer.shape, NONE, dtype=np.int8)
    rules = (
        distracted.astype(bool),
        (answer > 0) & (answer < 1),
        ~(best_hit >= 1),  # NaN (no head scored) counts as not kept
        np.ones(answer.shape, dtype=bool),
    )
    taken = ~failed
    for i, holds in enumerate(rules):
        here = holds & ~taken
        code[here] = i
        taken |= here
    return code


def of_results(ds: xr.Dataset) -> xr.DataArray:
    """The `cause` of every (policy, sparsity, length, depth, sample) of one setting's RESULTS."""
    heads = ds.retrieval_head.astype(bool)
    if not bool(heads.any()):  # no head scored: every head stands in
        heads = xr.ones_like(heads)
    best = ds.needle_hit.where(heads).max(["layer", "head"])
    dims = schema.RESULT_DIMS[:5]
    args = [
        x.transpose(*[d for d in dims if d in x.dims])
        for x in (ds.answer, ds.retrieved, ds.answer_distracted, best)
    ]
    a, full, distracted, hit = xr.broadcast(*args)
    code = failure_cause(a.values, full.values, distracted.values, hit.values)
    return xr.DataArray(code, dims=a.dims, coords=a.coords).transpose(*dims)


def attrs() -> dict:
    """CF-style flag attributes of `cause`, and the rule."""
    return {
        "long_name": schema.ANSWER_VARS["cause"].long_name,
        "flag_values": list(range(len(schema.CAUSES))),
        "flag_meanings": " ".join(c.replace(" ", "_") for c in schema.CAUSES),
        "rule": "where the full cache answers and the pruned cache does not, the first that holds: "
        "distracted (the answer gives a distractor's value); partial (0 < answer < 1); evicted (no "
        "retrieval head keeps every target value whole); kept but unused (otherwise)",
    }
