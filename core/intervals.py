"""95% intervals that stay inside their metric's range, chosen by the metric's kind (`core.schema.KINDS`).

- a 0/1 outcome (`binary`, or a `fraction` whose every value in the cell is 0 or 1): the Wilson score
  interval of the proportion;
- a `fraction` in [0, 1] otherwise: a seeded bootstrap percentile interval of the mean over the cell's
  documents (fewer than 2 documents: no interval);
- any other quantity (`real`): Student's t interval of the mean (fewer than 2: no interval).

Every function reduces one axis of an array that holds NaN where a document is missing, and returns
the mean, the bounds and n (the documents counted). Differences between two policies on the same
documents get a paired bootstrap interval (`paired_difference`), in [-1, 1] for fractions.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

LEVEL = 0.95
Z = float(stats.norm.ppf(0.5 + LEVEL / 2))
RESAMPLES = 2000  # bootstrap resamples per cell
SEED = 0  # every bootstrap is seeded: the same inputs give the same bounds
FEWEST = 5  # below this many documents a report states n and draws no band

RULES = {
    "wilson": "Wilson score interval (0/1 outcomes)",
    "bootstrap": f"bootstrap percentile interval of the mean, {RESAMPLES} seeded resamples of the documents",
    "t": "Student's t interval of the mean",
}


def wilson(k: np.ndarray, n: np.ndarray, z: float = Z) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score bounds of k successes in n trials (NaN where n = 0)."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        lo, hi = np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)
    bad = n <= 0
    return np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)


def t_bounds(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cells, docs) with NaN -> Student's t bounds of each row's mean (NaN below 2 documents)."""
    n = np.sum(~np.isnan(x), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows of fewer than 2: NaN, as intended
        mean = np.nanmean(x, axis=1)
        sd = np.nanstd(x, axis=1, ddof=1)
        half = stats.t.ppf(0.5 + LEVEL / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(n)
    half = np.where(n > 1, half, np.nan)
    return mean - half, mean + half


def bootstrap_bounds(x: np.ndarray, seed: int = SEED, resamples: int = RESAMPLES):
    """(cells, docs) with NaN -> percentile bounds of each row's mean over its non-NaN documents,
    resampled with replacement (NaN below 2 documents). Rows with the same n share the draws."""
    lo, hi = np.full(x.shape[0], np.nan), np.full(x.shape[0], np.nan)
    n = np.sum(~np.isnan(x), axis=1)
    rng = np.random.default_rng(seed)
    alpha = (1 - LEVEL) / 2
    for count in np.unique(n):
        if count < 2:
            continue
        rows = np.nonzero(n == count)[0]
        values = np.stack([x[r][~np.isnan(x[r])] for r in rows])  # (rows, count)
        draws = rng.integers(0, count, size=(resamples, count))
        for start in range(0, len(rows), 256):  # bounded memory: 256 rows x resamples x count
            means = values[start : start + 256][:, draws].mean(axis=2)
            lo[rows[start : start + 256]] = np.quantile(means, alpha, axis=1)
            hi[rows[start : start + 256]] = np.quantile(means, 1 - alpha, axis=1)
    return lo, hi


def interval(x: np.ndarray, axis: int, kind: str, seed: int = SEED):
    """Mean, 95% bounds and n across `axis` of x (NaN = no document), by the metric's kind:
    `binary` / `fraction` / `real` (see the module's docstring). Returns four arrays shaped like x
    without `axis`; bounds are NaN where no interval exists."""
    if kind not in ("binary", "fraction", "real"):
        raise ValueError(f"unknown metric kind {kind!r}: binary, fraction or real")
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    shape = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1]) if x.size else np.zeros((int(np.prod(shape)), x.shape[-1]))
    n = np.sum(~np.isnan(flat), axis=1)
    with np.errstate(invalid="ignore"):
        mean = np.where(n > 0, np.nansum(flat, axis=1) / np.maximum(n, 1), np.nan)
    if kind == "real":
        lo, hi = t_bounds(flat)
    else:
        zero_one = np.all(np.isnan(flat) | (flat == 0) | (flat == 1), axis=1)
        if kind == "binary" and not zero_one.all():
            raise ValueError("a binary metric holds values other than 0 and 1")
        lo, hi = np.full(len(flat), np.nan), np.full(len(flat), np.nan)
        w = zero_one & (n > 0)
        lo[w], hi[w] = wilson(np.nansum(flat[w], axis=1), n[w])
        b = ~zero_one
        if b.any():
            lo[b], hi[b] = bootstrap_bounds(flat[b], seed)
            lo[b], hi[b] = np.clip(lo[b], 0.0, 1.0), np.clip(hi[b], 0.0, 1.0)
    return tuple(a.reshape(shape) for a in (mean, lo, hi)) + (n.reshape(shape),)


def paired_difference(a: np.ndarray, b: np.ndarray, axis: int, seed: int = SEED):
    """Mean of a − b over the documents both have, across `axis`, with a paired bootstrap percentile
    95% interval (the same documents resampled for both) and n. For fractions it lies in [-1, 1]."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = np.moveaxis(d, axis, -1)
    shape = d.shape[:-1]
    flat = d.reshape(-1, d.shape[-1])
    n = np.sum(~np.isnan(flat), axis=1)
    with np.errstate(invalid="ignore"):
        mean = np.where(n > 0, np.nansum(flat, axis=1) / np.maximum(n, 1), np.nan)
    lo, hi = bootstrap_bounds(flat, seed)
    return mean.reshape(shape), lo.reshape(shape), hi.reshape(shape), n.reshape(shape)


def rule_of(kind: str) -> str:
    """The interval a metric of this kind gets, in words (RESULTS attributes, reports)."""
    if kind == "real":
        return RULES["t"]
    return f"{RULES['wilson']} where every value is 0 or 1, else the {RULES['bootstrap']}"
