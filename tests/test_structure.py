"""One schema, one seam per stage: stores match `core.schema` exactly, a policy is added without
touching the engine, options are declared once (CLI flags == config keys), and the dump runs on a
real Dask cluster into the same store a single process writes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr

from analyze import engine, policies
from analyze.policies import DocLayer, Policy, Ranking
from core import optionkit, schema
from tests.conftest import TINY_DUMP, one_setting, run_cli

DUMP = TINY_DUMP  # the shared store's arguments


@pytest.fixture(scope="module")
def store(tiny_store):
    return tiny_store  # dumped with DUMP


@pytest.fixture(scope="module")
def client(thread_client):
    return thread_client


def spec(names, **kw):
    return engine.Spec(tuple(policies.parse_policy(m) for m in names), (0.5, 0.9), **kw)


def test_dumped_store_matches_the_schema_exactly(store):
    root = zarr.open_group(store, mode="r")
    assert root.attrs[schema.KIND_ATTR] == schema.RUN_KIND
    assert root.attrs["schema_version"] == schema.RUN_VERSION
    assert schema.lengths_in(root) == [200, 256]
    for n in (200, 256):
        g = root[schema.group_name(n)]
        assert schema.run_group_differences(g, full=False) == []
        sizes = schema.run_sizes(n, 2, 2, root.attrs["model_config"], 8, 32, [], window_rows=1)
        for name, var in schema.run_vars(False).items():
            assert g[name].shape == tuple(sizes[d] for d in var.dims), name
            assert g[name].chunks == schema.chunks_of(var, sizes, int(g.attrs["tile"])), name
    # what is not in the schema is not in the store
    assert not {"qpool_mean", "kpool_mean"} & set(root[schema.group_name(200)].array_keys())


def test_results_match_the_schema_exactly_and_select_by_policy(store, client):
    ds, _ = engine.run(store, spec(["full", "h2o", "cab", "cab_3c"]), client, progress=False)
    assert schema.results_differences(ds) == []
    ds = one_setting(ds)
    assert ds.attrs[schema.KIND_ATTR] == schema.RESULTS_KIND
    assert "method" not in ds.dims
    one = ds.sel(policy="h2o")  # a dimension named `method` made this a silent no-op
    assert schema.POLICY not in one.dims
    assert list(ds.pair.values) == ["cab|h2o", "cab|block_mass", "cab_3c|h2o", "cab_3c|block_mass"]
    assert list(ds.variant.values) == ["cab"]


def test_results_of_schema_1_are_refused_with_how_to_rebuild(tmp_path):
    old = xr.Dataset(
        {"needle_hit": (("method", "sparsity"), np.zeros((2, 1)))},
        coords={"method": ["full", "h2o"], "sparsity": [0.9]},
        attrs={"schema_version": "1.0"},
    )
    path = tmp_path / "old.results.zarr"
    old.to_zarr(path)
    r = run_cli("viz", str(path), "--out", str(tmp_path / "report"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "schema 1" in r.stderr and "python -m analyze" in r.stderr
    assert not (tmp_path / "report").exists()


@dataclasses.dataclass(frozen=True)
class EveryOther(Policy):
    """A toy policy registered from this test file: prefers even keys, then later keys."""

    name = "every_other"
    reads = ("colsum",)
    offset: int = 0

    def rank(self, x: DocLayer, k: int) -> Ranking:
        keys = np.arange(x.n)
        even = ((keys + self.offset) % 2 == 0).astype(np.float64)
        return Ranking(
            primary=np.broadcast_to(even, (x.heads, x.n)), secondary=np.broadcast_to(keys, (x.heads, x.n))
        )


def test_a_policy_registered_from_outside_is_scored_without_touching_the_engine(store, client):
    policies.register(EveryOther)
    try:
        assert "every_other" in policies.describe()[-1]
        ds, _ = engine.run(store, spec(["every_other", "every_other:offset=1"]), client, progress=False)
        ds = one_setting(ds)
        kept = ds.kept.sel(policy="every_other", sparsity=0.5, length=256)
        assert (kept == 128).all()
        # brute force: with k = N/2 the even keys are exactly the kept set; recall = share of even needle keys
        g = zarr.open_group(store, mode="r")[schema.group_name(256)]
        for d in range(2):
            for s in range(2):
                needle = np.flatnonzero(g["needle"][d, s])
                want = np.mean(needle % 2 == 0)
                got = ds.needle_recall.sel(policy="every_other", sparsity=0.5, length=256).isel(
                    depth=d, sample=s
                )
                np.testing.assert_allclose(got.values, want, rtol=0, atol=1e-7)
                got1 = ds.needle_recall.sel(policy="every_other:offset=1", sparsity=0.5, length=256)
                np.testing.assert_allclose(got1.isel(depth=d, sample=s).values, 1 - want, atol=1e-7)
    finally:
        policies.REGISTRY.pop("every_other", None)


@pytest.mark.parametrize(
    "stage,cls,config_only_paths",
    [
        ("dump", "dump.options.DumpOptions", {"out", "progress", "redo", "list_tasks"}),
        ("analyze", "analyze.options.AnalyzeOptions", {"store", "out", "progress", "list_policies"}),
        ("viz", "viz.options.VizOptions", {"results", "out", "store", "progress"}),
    ],
)
def test_every_cli_option_is_a_config_key_and_vice_versa(stage, cls, config_only_paths):
    import importlib

    module, name = cls.rsplit(".", 1)
    options = getattr(importlib.import_module(module), name)
    cli_module = importlib.import_module(f"{stage}.cli")
    if stage == "viz":
        import argparse

        parser = argparse.ArgumentParser()
        optionkit.add_arguments(parser, options)
    else:
        parser = cli_module.build_parser()
    flags = {a.dest for a in parser._actions if a.dest != "help"}
    assert flags == optionkit.cli_options(options)
    # both ways: a CLI option is a config key, except the paths a study derives from `out:` and the
    # terminal's progress bars; a config key is always a CLI option
    assert flags - optionkit.config_keys(options) == config_only_paths
    assert optionkit.config_keys(options) <= flags


def test_config_and_cli_parse_the_same_values_the_same_way(tmp_path):
    from dump.cli import build_parser
    from dump.options import DumpOptions
    from pipelines import config

    cfg = {
        "out": str(tmp_path / "s"),
        "dump": {
            "lengths": [512, "1k"],
            "depths": "linspace:0,1,3",
            "devices": "cuda:0,cuda:1",
            "block": "auto",
        },
        "analyze": {"policies": ["h2o:recent_ratio=0.2", "cab"], "sparsity": [0.5]},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    c = config.load(str(path))
    args = build_parser().parse_args(
        ["--lengths", "512,1k", "--depths", "linspace:0,1,3", "--devices", "cuda:0,cuda:1", "--block", "auto"]
    )
    cli = optionkit.from_args(DumpOptions, args)
    assert dataclasses.replace(c.dump, out=cli.out) == cli
    assert c.dump.devices == ["cuda:0", "cuda:1"]  # `devices` reaches the dump from a config
    dump_opt, analyze_opt, _ = c.stage_options()
    assert dump_opt.out == c.run_store and dump_opt.devices == ["cuda:0", "cuda:1"]
    assert analyze_opt.store == c.run_store and analyze_opt.sparsity == [0.5]


def _values(path):
    root = zarr.open_group(path, mode="r")
    out = {}
    for n in schema.lengths_in(root):
        g = root[schema.group_name(n)]
        for v in g.array_keys():
            out[(n, v)] = g[v][...]
    return out


def test_dump_on_a_dask_cluster_equals_one_process(tiny_llama_dir, store, tmp_path, dask_cluster):
    out = tmp_path / "cluster.zarr"
    r = run_cli(
        "dump",
        "--model",
        tiny_llama_dir,
        *DUMP,
        "--out",
        str(out),
        "--scheduler",
        dask_cluster.address,
        "--device",
        "cpu",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    assert "8 documents written" in r.stdout
    a, b = _values(store), _values(str(out))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
    # and a rerun on the cluster finds everything done
    r = run_cli(
        "dump",
        "--model",
        tiny_llama_dir,
        *DUMP,
        "--out",
        str(out),
        "--scheduler",
        dask_cluster.address,
        "--device",
        "cpu",
        "--no-progress",
    )
    assert r.returncode == 0 and "0 documents written (8 already done)" in r.stdout


def test_stages_share_only_core_and_each_others_public_names():
    """dump, analyze, viz and pipelines import `core`, and of another stage only the names its
    package exports (`__all__`: options, run entry points); never another stage's CLI or internals."""
    import ast
    import importlib
    from pathlib import Path

    stages = ("dump", "analyze", "viz", "pipelines")
    root = Path(__file__).resolve().parents[1]
    bad = []
    for stage in (*stages, "core"):
        for path in (root / stage).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [(a.name, None) for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [(node.module, a.name) for a in node.names]
                else:
                    continue
                for module, name in names:
                    top = module.split(".")[0]
                    if top not in stages or top == stage:
                        continue
                    public = getattr(importlib.import_module(top), "__all__", [])
                    if stage == "core" or module != top or (name is not None and name not in public):
                        bad.append(f"{path.relative_to(root)}: {module}{'.' + name if name else ''}")
    assert bad == []


def test_every_gpu_step_the_docs_name_is_defined_once():
    """`bench/gpu_real.sh` runs the GPU machine's steps by name: every step that the README, docs/,
    bench/ or the script's own header names exists, and no step is defined twice (bash keeps the last)."""
    import re
    from collections import Counter
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = (root / "bench/gpu_real.sh").read_text()
    defined = Counter(re.findall(r"^(\w+)\(\) \{", script, flags=re.M))
    assert [name for name, count in defined.items() if count > 1] == []
    dispatch = script[script.index("case $step in") :]
    with_argument = set(re.findall(r"^ +(\w+)\)", dispatch, flags=re.M))  # steps that take the next word
    texts = [root / "README.md", *(root / "docs").rglob("*.md"), *(root / "bench").glob("*.*")]
    named = set()
    for path in texts:
        for line in re.findall(r"gpu_real\.sh((?: +[\w:.,=/-]+)+)", path.read_text()):
            words = iter(line.split())
            for word in words:
                if word in with_argument:
                    named.add(word)
                    next(words, None)
                elif re.fullmatch(r"[a-z][a-z0-9_]*", word):
                    named.add(word)
    assert named, "no step found: the pattern above no longer matches how the docs name them"
    assert sorted(named - set(defined) - with_argument) == []
