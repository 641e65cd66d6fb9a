"""Storage at long context: the W observation rows are stored as their sum (`window_sum`, all SnapKV
reads) plus only the last R rows whole (--window-rows); SnapKV scores exactly as with every row."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

from core import schema
from tests.conftest import dump_args, one_setting, run_cli

pytestmark = pytest.mark.slow  # real weights


def _dump(model, out, *extra):
    argv = dump_args("1k", "0.5", samples=1, window=32, block=64)
    r = run_cli("dump", "--model", model, *argv, "--out", str(out), "--no-progress", *extra)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def stores(smollm2_dir, tmp_path_factory):
    """The real SmolLM2 at 1k, dumped with all 32 rows whole and with 8."""
    d = tmp_path_factory.mktemp("storage")
    every, few = d / "every.zarr", d / "few.zarr"
    _dump(smollm2_dir, every, "--window-rows", "32")
    _dump(smollm2_dir, few, "--window-rows", "8")
    return every, few


def _analyze(store, out, methods):
    r = run_cli(
        "analyze", str(store), "--policies", methods, "--sparsity", "0.5,0.9,0.97", "--workers", "1",
        "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return one_setting(xr.open_zarr(out).load())


def test_snapkv_scores_the_same_from_the_stored_sum_as_from_every_row(stores, tmp_path):
    every, few = stores
    g_every, g_few = (zarr.open_group(str(p), mode="r")["len_1024"] for p in (every, few))
    assert g_every["window"].shape[-2] == 32 and g_few["window"].shape[-2] == 8
    assert g_few.attrs["window"] == 32 and g_few.attrs["window_rows"] == 8
    # the sum is of the rows as stored (float16), so the votes do not depend on how many are kept
    rows = np.asarray(g_every["window"][:]).astype(np.float64).sum(axis=-2)
    np.testing.assert_allclose(np.asarray(g_few["window_sum"][:]), rows, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(g_few["window"][:], g_every["window"][..., -8:, :])
    a = _analyze(every, tmp_path / "every.results.zarr", "snapkv,snapkv:window=32,snapkv:window=8")
    b = _analyze(few, tmp_path / "few.results.zarr", "snapkv,snapkv:window=8")
    for lab in ("snapkv", "snapkv:window=8"):
        for metric in (m for m in schema.METRICS if m != "mass_kept"):  # mass_kept: to 1e-6 below
            np.testing.assert_array_equal(a[metric].sel(policy=lab).values, b[metric].sel(policy=lab).values)
        np.testing.assert_allclose(
            a.mass_kept.sel(policy=lab).values, b.mass_kept.sel(policy=lab).values, rtol=1e-6
        )
    # window=W reads the same votes as the sum; and the store is smaller
    np.testing.assert_array_equal(
        a.needle_recall.sel(policy="snapkv").values, a.needle_recall.sel(policy="snapkv:window=32").values
    )
    size = {p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in (every, few)}
    assert size[few] < size[every]


def test_a_policy_needing_rows_the_store_lacks_is_refused(stores, tmp_path):
    store = stores[1]
    r = run_cli(
        "analyze", str(store), "--policies", "snapkv:window=16", "--out", str(tmp_path / "o"), "--no-progress"
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--window-rows 16" in r.stderr and "stores 8" in r.stderr
    assert not (tmp_path / "o").exists()
