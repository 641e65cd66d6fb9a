"""Curvature on toy graphs with known answers, and the numba rows against the numpy formulas."""

import numpy as np
import pytest

from analyze import curvature


def two_cliques(n=5):
    """Two K_n joined by one bridge edge (n-1 -- n)."""
    w = np.zeros((2 * n, 2 * n))
    w[:n, :n] = 1
    w[n:, n:] = 1
    np.fill_diagonal(w, 0)
    w[n - 1, n] = w[n, n - 1] = 1
    return w


def test_augmented_forman_bridge_is_strongly_negative_clique_edges_are_not():
    n = 5
    f = curvature.forman_augmented(two_cliques(n))
    assert f[n - 1, n] == 4 - 2 * n  # 4 - deg - deg + 0 triangles
    assert f[0, 1] == 4 - 2 * (n - 1) + 3 * (n - 2) > 0  # inside a clique: n - 2 triangles
    assert f[n - 1, n] == f.min()


def test_weighted_forman_matches_combinatorial_on_unit_weights_and_ranks_bridge_lowest():
    n = 4
    w = two_cliques(n)
    f = curvature.forman_weighted(w)
    deg = (w > 0).sum(1)
    for u, v in zip(*np.nonzero(w)):
        assert f[u, v] == pytest.approx(4 - deg[u] - deg[v])  # Sreejith with unit weights
    assert f[n - 1, n] == f[w > 0].min()


def test_node_curvature_lowest_at_bridge_nodes():
    n = 5
    node = curvature.node_curvature(two_cliques(n))
    assert set(np.argsort(node)[:2]) == {n - 1, n}


@pytest.mark.parametrize("m", [1, 2, 7, 16])
def test_seed_rows_equal_full_matrix_formulas(m):
    rng = np.random.default_rng(m)
    a = curvature.minmax(np.tril(rng.random((m, m))))
    i = m - 1
    np.testing.assert_allclose(
        curvature.seed_forman_row(a, i), curvature.seed_forman(a)[i, : i + 1], rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(
        curvature.seed_additive_row(a, i, 0.5),
        curvature.seed_additive(a, 0.5)[i, : i + 1],
        rtol=1e-12,
        atol=1e-12,
    )


def test_graphs_are_causal():
    rng = np.random.default_rng(0)
    a = curvature.qk_affinity(rng.normal(size=(6, 4)), rng.normal(size=(6, 4)))
    assert np.all(np.triu(a, 1) == 0) and np.all(a >= 0)
    assert np.all(np.triu(curvature.minmax(rng.random((6, 6))), 1) == 0)


def test_seed_formula_on_causal_attention_has_no_future_budget():
    rng = np.random.default_rng(1)
    a = curvature.minmax(np.tril(rng.random((8, 8))))
    assert curvature.seed_forman(a)[3, 4:].tolist() == [0.0] * 4


def test_numba_minmax_equals_numpy_bit_for_bit():
    rng = np.random.default_rng(3)
    blocks = rng.random((3, 9, 9)).astype(np.float32)
    blocks[1] = 0.5  # a constant head normalises to zeros
    fast = curvature.minmax_causal(blocks)
    ref = np.stack([curvature.minmax(curvature.causal(b.astype(np.float64))) for b in blocks])
    np.testing.assert_array_equal(fast, ref)
