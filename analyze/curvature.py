"""Forman-Ricci curvature on the block graph of attention.

The block graph: node = block of B tokens, edge weight A[i, j] = attention mass from query block i
to key block j (`blocks`), or the pooled affinity ReLU(Q̄ K̄ᵀ / √d) (`qpool`/`kpool`). The graph is
causal: key block j > query block i does not exist, and is masked to zero explicitly here.

Two families, both documented so the difference is visible:

* The seed's block formulas (docs/cab.md), on the min-max normalised graph:
    seed_forman     F(i, j) = 4·A[i, j] − S_i − S_j + 3·T[i, j],   S = row sums, T = A·A (2-hop)
    seed_additive   F(i, j) = A[i, j] − λ·T[i, j] / M
  For the answer position only the last query block's row is needed: T[i, :] = A[i, :]·A costs M²,
  not the M³ of forming A·A (the numba kernels below do this; the numpy references form A·A).

* Textbook curvature of an undirected graph (edge u–v present where weight > 0):
    weighted Forman (Sreejith et al. 2016, node weights 1):
        F(u, v) = 2 − Σ_{x~u, x≠v} √(w_uv / w_ux) − Σ_{y~v, y≠u} √(w_uv / w_vy)
    augmented Forman (Samal et al. 2018, combinatorial):
        F#(u, v) = 4 − deg u − deg v + 3·#triangles(u, v)
  A bridge joining two cliques is strongly negative; edges inside a clique are not (augmented).
"""

from __future__ import annotations

import numba
import numpy as np


def causal(a: np.ndarray) -> np.ndarray:
    """Zero every future edge (key block j > query block i)."""
    return np.tril(a)


def minmax(a: np.ndarray) -> np.ndarray:
    """Min-max normalise the visible (lower-triangular) entries of one head's graph, as the seed did."""
    vis = np.tril(np.ones(a.shape, dtype=bool))
    lo, hi = a[vis].min(), a[vis].max()
    return np.where(vis, (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a), 0.0)


@numba.njit(cache=True)
def minmax_causal(blocks):
    """Numba twin of `minmax(causal(a))` for every head of (head, qblock, kblock) at once."""
    h, m, _ = blocks.shape
    out = np.zeros((h, m, m))
    for r in range(h):
        lo, hi = np.inf, -np.inf
        for i in range(m):
            for j in range(i + 1):
                v = np.float64(blocks[r, i, j])
                lo = min(lo, v)
                hi = max(hi, v)
        if hi > lo:
            for i in range(m):
                for j in range(i + 1):
                    out[r, i, j] = (np.float64(blocks[r, i, j]) - lo) / (hi - lo)
    return out


def qk_affinity(qpool: np.ndarray, kpool: np.ndarray) -> np.ndarray:
    """(kblock, dim) x2 -> causal ReLU(Q̄ K̄ᵀ / √d) (qblock, kblock)."""
    d = qpool.shape[-1]
    return causal(np.maximum(qpool.astype(np.float64) @ kpool.astype(np.float64).T / np.sqrt(d), 0.0))


# -- the seed's formulas: numpy references (full matrices) ---------------------------------------
def seed_forman(a: np.ndarray) -> np.ndarray:
    """F = 4A − S_i − S_j + 3·A·A on a causal graph (M, M)."""
    s = a.sum(axis=1)
    return np.where(np.tril(np.ones(a.shape, bool)), 4 * a - s[:, None] - s[None, :] + 3 * (a @ a), 0.0)


def seed_additive(a: np.ndarray, lam: float) -> np.ndarray:
    """F = A − λ·(A·A)/M."""
    return np.where(np.tril(np.ones(a.shape, bool)), a - lam * (a @ a) / a.shape[0], 0.0)


# -- the same, last query row only, numba ------------------------------------------------------
@numba.njit(cache=True)
def seed_forman_row(a, i):
    m = a.shape[0]
    s = np.zeros(m)
    for r in range(m):
        for c in range(r + 1):
            s[r] += a[r, c]
    out = np.zeros(i + 1)
    for j in range(i + 1):
        t = 0.0
        for x in range(j, i + 1):  # causal 2-hop path i -> x -> j needs j <= x <= i
            t += a[i, x] * a[x, j]
        out[j] = 4 * a[i, j] - s[i] - s[j] + 3 * t
    return out


@numba.njit(cache=True)
def seed_additive_row(a, i, lam):
    m = a.shape[0]
    out = np.zeros(i + 1)
    for j in range(i + 1):
        t = 0.0
        for x in range(j, i + 1):
            t += a[i, x] * a[x, j]
        out[j] = a[i, j] - lam * t / m
    return out


# -- textbook curvature (undirected) -------------------------------------------------------------
def symmetric(a: np.ndarray) -> np.ndarray:
    """Undirected weights from a causal graph: w_uv = A[u, v] + A[v, u], no self-loops."""
    w = a + a.T
    np.fill_diagonal(w, 0.0)
    return w


def forman_weighted(w: np.ndarray) -> np.ndarray:
    """Sreejith et al. (2016) edge curvature, node weights 1; 0 where there is no edge. Every edge at
    once: with r[u, x] = 1/√w_ux (0 without an edge) and R_u = Σ_x r[u, x],
    F(u, v) = 2 − √w_uv · (R_u − r[u, v]) − √w_uv · (R_v − r[v, u])."""
    w = np.asarray(w, dtype=np.float64).copy()
    np.fill_diagonal(w, 0.0)
    edge = w > 0
    r = np.zeros_like(w)
    r[edge] = 1.0 / np.sqrt(w[edge])
    total = r.sum(axis=1)
    f = 2.0 - np.sqrt(np.where(edge, w, 0.0)) * ((total[:, None] - r) + (total[None, :] - r.T))
    return np.where(edge, f, 0.0)


def forman_augmented(w: np.ndarray) -> np.ndarray:
    """Samal et al. (2018) augmented Forman curvature (combinatorial, with triangles)."""
    adj = (w > 0).astype(np.int64)
    np.fill_diagonal(adj, 0)
    deg = adj.sum(axis=1)
    tri = adj @ adj
    return np.where(adj > 0, 4 - deg[:, None] - deg[None, :] + 3 * tri, 0).astype(np.float64)


@numba.njit(cache=True)
def forman_weighted_row(w, i):
    """Row i of `forman_weighted(w)`: O(M²) instead of every edge's."""
    m = w.shape[0]
    out = np.zeros(m)
    for v in range(m):
        if v == i or w[i, v] <= 0:
            continue
        su = 0.0
        for x in range(m):
            if x != i and x != v and w[i, x] > 0:
                su += np.sqrt(w[i, v] / w[i, x])
        sv = 0.0
        for y in range(m):
            if y != i and y != v and w[v, y] > 0:
                sv += np.sqrt(w[i, v] / w[v, y])
        out[v] = 2.0 - su - sv
    return out


@numba.njit(cache=True)
def forman_augmented_row(w, i):
    """Row i of `forman_augmented(w)`: O(M²)."""
    m = w.shape[0]
    deg = np.zeros(m)
    for u in range(m):
        for x in range(m):
            if x != u and w[u, x] > 0:
                deg[u] += 1
    out = np.zeros(m)
    for v in range(m):
        if v == i or w[i, v] <= 0:
            continue
        tri = 0.0
        for x in range(m):
            if x != i and x != v and w[i, x] > 0 and w[x, v] > 0:
                tri += 1
        out[v] = 4.0 - deg[i] - deg[v] + 3.0 * tri
    return out


def node_curvature(w: np.ndarray) -> np.ndarray:
    """Node curvature: the mean augmented Forman curvature of its edges (0 for isolated nodes)."""
    f = forman_augmented(w)
    deg = (w > 0).sum(axis=1)
    return np.where(deg > 0, f.sum(axis=1) / np.maximum(deg, 1), 0.0)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (average ranks on ties); NaN when either side is constant."""
    from scipy.stats import rankdata

    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    return float(np.corrcoef(ra, rb)[0, 1])
