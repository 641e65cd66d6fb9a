"""The analyze stage on real dumps: metric guarantees, brute force, Dask cluster equality, errors."""

import shutil

import numpy as np
import pytest
import xarray as xr
import zarr

from analyze import engine, policies
from core import schema
from tests.conftest import one_setting, run_cli

METHODS = "full,oracle,random,streaming,h2o,snapkv,tova,cab,cab_high,cab_hybrid,cab_3c"


@pytest.fixture(scope="module")
def tiny_store(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("an") / "run.zarr"
    r = run_cli(
        "dump",
        "--model",
        tiny_llama_dir,
        "--lengths",
        "256,320",
        "--depths",
        "0.2,0.8",
        "--samples",
        "2",
        "--window",
        "8",
        "--block",
        "32",
        "--store",
        "full",
        "--layers",
        "0,2",
        "--out",
        str(out),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    return str(out)


@pytest.fixture(scope="module")
def client(thread_client):
    return thread_client


def analyze(store, client, methods=METHODS, sparsities=(0.5, 0.9, 0.95), reference=False, **kw):
    spec = engine.Spec(
        tuple(policies.parse_policy(m) for m in methods.split(",")),
        tuple(sparsities),
        reference=reference,
        **kw,
    )
    ds, _ = engine.run(store, spec, client, progress=False)
    ds = one_setting(ds)
    return ds


@pytest.fixture(scope="module")
def results(tiny_store, client):
    return analyze(tiny_store, client)


def test_full_keeps_the_needle_and_all_mass(results):
    full = results.sel({"policy": "full"})
    assert (full.needle_hit == 1).all() and (full.needle_recall == 1).all()
    np.testing.assert_allclose(full.mass_kept, 1, atol=2e-3)  # window rows are stored in float16


def test_kept_equals_budget_everywhere(results):
    others = results.kept.drop_sel(policy="full")
    assert (others == results.budget).all()
    assert (results.kept.sel({"policy": "full"}) == results.length).all()


def test_oracle_has_the_highest_mass_kept_everywhere(results):
    best = results.mass_kept.drop_sel(policy="full").max("policy")
    assert (results.mass_kept.sel({"policy": "oracle"}) >= best - 1e-6).all()


def test_same_seed_same_results_other_seed_differs(tiny_store, client, results):
    again = analyze(tiny_store, client)
    xr.testing.assert_identical(again.drop_attrs(), results.drop_attrs())
    other = analyze(tiny_store, client, methods="random", seed=5)
    assert not np.array_equal(other.mass_kept.values, results.mass_kept.sel({"policy": ["random"]}).values)


def test_numba_equals_numpy_reference_on_a_real_dump(tiny_store, client, results):
    ref = analyze(tiny_store, client, reference=True)
    for v in [*schema.RESULT_VARS]:  # every per-head variable, the diagnostics included
        np.testing.assert_array_equal(ref[v].values, results[v].values, err_msg=v)


def test_h2o_equals_brute_force_from_full_matrices(tiny_store, results):
    """H2O from the stored colsum vs H2O recomputed from the stored full matrices (float16)."""
    ds = xr.open_zarr(tiny_store, group="len_320")
    n, kv = 320, 2
    for sp in (0.5, 0.9):
        k = policies.budget(sp, n)
        recent = round(0.5 * k)
        for d in range(2):
            for s in range(2):
                needle = ds.needle.isel(depth=d, sample=s).values
                for slot, layer in enumerate(ds.attn_layer.values):
                    a = ds.attn.isel(depth=d, sample=s, attn_layer=slot).values.astype(np.float64)
                    col = a.sum(1).reshape(kv, 2, n).mean(1)  # gqa=kv: the group's mean
                    final = a[:, -1]
                    for g in range(kv):
                        order = [j for j in np.argsort(-col[g], kind="stable") if j < n - recent]
                        kept = np.zeros(n, bool)
                        kept[n - recent :] = True
                        kept[order[: k - recent]] = True
                        for h in (2 * g, 2 * g + 1):
                            got = (
                                results.sel({"policy": "h2o"})
                                .sel(sparsity=sp, length=n, layer=layer, head=h)
                                .isel(depth=d, sample=s)
                            )
                            assert float(got.needle_hit) == float(kept[needle].all())
                            assert float(got.mass_kept) == pytest.approx(final[h][kept].sum(), abs=5e-3)


def test_diagnostics_are_present_and_bounded(results):
    rho = results.curvature_mass_spearman
    assert set(rho.variant.values) == {"cab", "cab_high", "cab_hybrid"}
    assert float(abs(rho).max()) <= 1 + 1e-6
    assert set(results.pair.values) >= {"cab|h2o", "cab|block_mass", "cab_3c|h2o"}
    assert float(results.jaccard.min()) >= 0 and float(results.jaccard.max()) <= 1
    assert results.retrieval_head.sum() == min(10, 3 * 4)
    assert "rule" in results.retrieval_head.attrs
    assert {"needle_hit_mean", "needle_hit_lo", "needle_hit_hi"} <= set(results.data_vars)


def test_existing_cluster_equals_local_run_bit_for_bit(tiny_store, tmp_path, dask_cluster):
    addr = dask_cluster.address
    remote, local = tmp_path / "remote.zarr", tmp_path / "local.zarr"
    r1 = run_cli("analyze", tiny_store, "--scheduler", addr, "--out", str(remote), "--no-progress")
    assert r1.returncode == 0, r1.stderr
    r2 = run_cli("analyze", tiny_store, "--workers", "2", "--out", str(local), "--no-progress")
    assert r2.returncode == 0, r2.stderr
    a, b = xr.open_zarr(remote).load(), xr.open_zarr(local).load()
    for v in a.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)


def test_unfinished_documents_are_skipped_with_a_warning(tiny_store, tmp_path):
    store = tmp_path / "partial.zarr"
    shutil.copytree(tiny_store, store)
    g = zarr.open_group(str(store), mode="r+")
    g["len_256"]["done"][1, 1] = False
    out = tmp_path / "partial.results.zarr"
    r = run_cli(
        "analyze", str(store), "--policies", "h2o", "--out", str(out), "--workers", "1", "--no-progress"
    )
    assert r.returncode == 0, r.stderr
    assert "1 unfinished documents" in r.stderr
    ds = one_setting(xr.open_zarr(out))
    assert np.isnan(ds.needle_hit.sel(length=256).isel(depth=1, sample=1)).all()
    assert not np.isnan(ds.needle_hit.sel(length=256).isel(depth=0, sample=0)).any()


@pytest.mark.parametrize(
    "args,words",
    [
        (["--policies", "h3o"], "unknown policy 'h3o'"),
        (["--policies", "h2o:ratio=1"], "no parameter 'ratio'"),
        (["--sparsity", "1.0"], "outside [0, 1)"),
        (["--sparsity", "-0.1"], "outside [0, 1)"),
        (["--scheduler", "tcp://127.0.0.1:9"], "cannot reach the Dask scheduler"),
        (["--policies", "cab:block=48"], "multiple of the stored block size"),
    ],
)
def test_bad_input_is_one_sentence_exit_2_nothing_written(tiny_store, tmp_path, args, words):
    out = tmp_path / "bad.results.zarr"
    r = run_cli("analyze", tiny_store, "--out", str(out), "--no-progress", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob("bad.results.zarr.tmp*"))


def test_unknown_schema_version_is_refused(tiny_store, tmp_path):
    store = tmp_path / "old.zarr"
    shutil.copytree(tiny_store, store)
    zarr.open_group(str(store), mode="r+").attrs["schema_version"] = "0.3"
    r = run_cli("analyze", str(store), "--out", str(tmp_path / "o.zarr"))
    assert r.returncode == 2 and "schema version '0.3'" in r.stderr


def test_list_policies():
    r = run_cli("analyze", "--list-policies")
    assert r.returncode == 0
    for name in METHODS.split(","):
        assert name in r.stdout
    assert "recent_ratio=0.5" in r.stdout


@pytest.mark.slow
@pytest.mark.finding  # the curvature-mass correlations below are findings on this model; the rest is contract
def test_real_smollm2_dump(smol_store, client):
    """The embedded model at 512 tokens: full keeps the needle, oracle tops mass, numba = numpy."""
    ds = analyze(smol_store, client, sparsities=(0.5, 0.9))
    ref = analyze(smol_store, client, sparsities=(0.5, 0.9), reference=True)
    np.testing.assert_array_equal(ds.needle_hit.values, ref.needle_hit.values)
    assert (ds.needle_hit.sel({"policy": "full"}) == 1).all()
    assert (
        ds.mass_kept.sel({"policy": "oracle"}) >= ds.mass_kept.drop_sel(policy="full").max("policy") - 1e-6
    ).all()
    # the seed's V3 curvature ranks blocks like plain magnitude on a real model; V1 ranks against it
    rho = ds.curvature_mass_spearman.mean(["length", "depth", "sample", "layer", "head"])
    assert float(rho.sel(variant="cab_high")) > 0.9
    assert float(rho.sel(variant="cab")) < 0
    # retrieval heads of SmolLM2 sit in its upper-middle layers
    layers = ds.layer.values[ds.retrieval_head.any("head").values]
    assert np.median(layers) >= 10


def test_methods_is_an_alias_of_policies_on_the_command_line_and_in_a_config():
    from analyze.options import AnalyzeOptions
    from core import optionkit
    from core.errors import UsageError

    old = run_cli("analyze", "--list-methods")
    assert old.returncode == 0 and old.stdout == run_cli("analyze", "--list-policies").stdout
    assert "--methods is an alias" in run_cli("analyze", "--help").stdout
    opt = optionkit.from_mapping(AnalyzeOptions, {"methods": ["h2o", "cab"]}, "analyze", "c.yaml")
    assert opt.policies == ["h2o", "cab"]
    with pytest.raises(UsageError, match="alias"):
        optionkit.from_mapping(AnalyzeOptions, {"methods": ["h2o"], "policies": ["cab"]}, "analyze", "c.yaml")
