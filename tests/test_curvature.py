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


def weighted_by_definition(w):
    """Sreejith et al. (2016), edge by edge, as written."""
    n = w.shape[0]
    f = np.zeros_like(w, dtype=np.float64)
    for u in range(n):
        for v in range(n):
            if u == v or w[u, v] <= 0:
                continue
            su = sum(np.sqrt(w[u, v] / w[u, x]) for x in range(n) if x not in (u, v) and w[u, x] > 0)
            sv = sum(np.sqrt(w[u, v] / w[v, y]) for y in range(n) if y not in (u, v) and w[v, y] > 0)
            f[u, v] = 2 - su - sv
    return f


def test_forman_rows_equal_the_full_textbook_matrices():
    from analyze import curvature

    rng = np.random.default_rng(5)
    for _ in range(20):
        m = int(rng.integers(2, 12))
        a = np.tril(rng.random((m, m)) * (rng.random((m, m)) < 0.6))
        w = curvature.symmetric(a)
        for i in range(m):
            np.testing.assert_allclose(curvature.forman_weighted_row(w, i), curvature.forman_weighted(w)[i])
            np.testing.assert_array_equal(
                curvature.forman_augmented_row(w, i), curvature.forman_augmented(w)[i]
            )
        np.testing.assert_allclose(curvature.forman_weighted(w), weighted_by_definition(w), atol=1e-12)


def test_cab_forman_keeps_the_block_across_a_bridge():
    """Two cliques of blocks, {0..3} and {4..7}, joined by one bridge from the query block 7 to block
    1: the bridge is the most negative Forman-Ricci edge in both forms (weighted -4 against -3,
    augmented -4 against 3), so cab_forman keeps block 1 first."""
    from analyze.policies import keep, parse_policy
    from core.runstore import DocLayer

    m, b = 8, 4
    a = np.zeros((m, m))
    for clique in (range(4), range(4, 8)):
        for u in clique:
            for v in clique:
                if v <= u:
                    a[u, v] = 1.0
    a[7, 1] = 1.0
    x = DocLayer(
        final_row=np.full((1, m * b), 1.0 / (m * b), dtype=np.float32),
        block=b,
        kv_heads=1,
        colsum=np.ones((1, m * b), dtype=np.float32),
        blocks=a[None].astype(np.float32),
    )
    for form in ("weighted", "augmented"):
        p = parse_policy(f"cab_forman:form={form}")
        f = p.scores(x)[0]
        assert f[1] == f[:7].min() and f[1] == -4, (form, f)
        kept = keep(p, x, b)[0]
        np.testing.assert_array_equal(np.flatnonzero(kept), np.arange(4, 8))
