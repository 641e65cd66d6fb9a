"""95% intervals by metric kind (`core.intervals`) against scipy, inside their metric's range."""

import numpy as np
import pytest
from scipy import stats

from core import intervals, schema
from tests.test_causes import check_causes


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 6), (3, 6), (6, 6), (1, 25), (24, 25), (7, 10)])
def test_wilson_equals_scipy(k, n):
    want = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = intervals.wilson(np.array([k]), np.array([n]))
    assert lo[0] == pytest.approx(want.low, abs=1e-12) and hi[0] == pytest.approx(want.high, abs=1e-12)


def test_zero_one_cells_take_wilson_and_fractions_the_bootstrap():
    x = np.array([[1, 1, 1, 0, np.nan, 1], [0.5, 0.25, 1, 0.75, 0.5, 1.0]])
    mean, lo, hi, n = intervals.interval(x, 1, "fraction")
    assert list(n) == [5, 6] and mean[0] == pytest.approx(0.8) and mean[1] == pytest.approx(4.0 / 6)
    want = stats.binomtest(4, 5).proportion_ci(method="wilson")
    assert (lo[0], hi[0]) == pytest.approx((want.low, want.high))
    ref = stats.bootstrap(
        (x[1],), np.mean, n_resamples=20000, method="percentile", rng=np.random.default_rng(1)
    ).confidence_interval
    assert lo[1] == pytest.approx(ref.low, abs=0.03) and hi[1] == pytest.approx(ref.high, abs=0.03)


def test_t_interval_equals_scipy():
    x = np.array([[3.0, 5.0, 4.5, np.nan, 10.0], [1.0, np.nan, np.nan, np.nan, np.nan]])
    mean, lo, hi, n = intervals.interval(x, 1, "real")
    v = x[0][~np.isnan(x[0])]
    want = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert (lo[0], hi[0]) == pytest.approx(want) and list(n) == [4, 1]
    assert np.isnan(lo[1]) and np.isnan(hi[1]) and mean[1] == 1.0


def test_seeded_bootstrap_is_reproducible_and_the_seed_matters():
    x = np.random.default_rng(3).uniform(size=(40, 7))
    a = intervals.interval(x, 1, "fraction")
    b = intervals.interval(x, 1, "fraction")
    c = intervals.interval(x, 1, "fraction", seed=5)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_every_bound_lies_in_its_range_on_random_results():
    rng = np.random.default_rng(0)
    for trial in range(30):
        shape = (3, 4, int(rng.integers(1, 26)))
        binary = rng.integers(0, 2, size=shape).astype(float)
        frac = np.round(rng.uniform(size=shape) * 4) / 4  # string_match_all over 4 values
        frac[..., 0] = rng.choice([0.0, 1.0], size=shape[:2])
        for x, kind in ((binary, "binary"), (frac, "fraction"), (binary, "fraction")):
            x = np.where(rng.uniform(size=shape) < 0.2, np.nan, x)
            mean, lo, hi, n = intervals.interval(x, 2, kind)
            ok = n >= 2
            assert np.all((lo[ok] >= 0) & (hi[ok] <= 1)), (trial, kind)
            assert np.all((lo[ok] <= mean[ok] + 1e-12) & (mean[ok] <= hi[ok] + 1e-12))


def test_paired_difference_is_bounded_and_excludes_zero_only_when_it_should():
    rng = np.random.default_rng(1)
    a = np.ones((2, 30))
    b = np.stack([np.zeros(30), rng.integers(0, 2, 30).astype(float)])
    b[1] = a[1] - (rng.uniform(size=30) < 0.05)  # nearly equal
    mean, lo, hi, n = intervals.paired_difference(a, b, 1)
    assert mean[0] == 1 and lo[0] == 1 and hi[0] == 1
    assert lo[1] <= 0 <= hi[1] or mean[1] > 0
    assert np.all((lo >= -1) & (hi <= 1)) and list(n) == [30, 30]


def test_every_metric_with_an_interval_declares_its_kind():
    for name in (*schema.HEAD_METRICS, *schema.ANSWER_METRICS, "retrieved"):
        assert schema.KINDS[name] in schema.RANGES


def check_results_bounds(results):
    """Every `_lo`/`_hi` of a RESULTS dataset inside its metric's declared range."""
    checked = 0
    for name in (*schema.HEAD_METRICS, *schema.ANSWER_METRICS):
        lo_name, hi_name = schema.summary_name(name, "lo"), schema.summary_name(name, "hi")
        if lo_name not in results:
            continue
        low, high = schema.RANGES[schema.KINDS[name]]
        lo, hi = results[lo_name].values, results[hi_name].values
        assert np.all(np.isnan(lo) | (lo >= low)) and np.all(np.isnan(hi) | (hi <= high)), name
        assert np.array_equal(np.isnan(lo), np.isnan(hi)), name
        checked += 1
    return checked


def test_results_bounds_stay_in_range_on_a_ruler_store(tiny_llama_dir, tmp_path):
    """A RULER multivalue store (fractional answers under string_match_all) and its RESULTS with
    answers in both settings: every `_lo`/`_hi` inside its metric's range, `_n` beside every mean."""
    import xarray as xr

    from tests.conftest import run_cli

    store, out = tmp_path / "run.zarr", tmp_path / "res.zarr"
    r = run_cli(
        "dump", "--model", tiny_llama_dir, "--task", "ruler:niah_multivalue", "--lengths", "300",
        "--depths", "0.3,0.7", "--samples", "3", "--window", "8", "--block", "32", "--out", str(store),
        "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = run_cli(
        "analyze", str(store), "--answers", "--policies", "full,h2o,streaming", "--sparsity", "0.5,0.9",
        "--setting", "aware,agnostic", "--workers", "1", "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    ds = xr.open_zarr(out).load()
    assert schema.results_differences(ds) == []
    assert check_results_bounds(ds) == len(schema.HEAD_METRICS) + len(schema.ANSWER_METRICS)
    for setting in ds.setting.values:
        check_causes(ds.sel(setting=setting))
    assert int(ds.answer_n.max()) == 3 and ds.answer_n.dtype == np.int32
