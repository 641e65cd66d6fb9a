"""The one-command study: config validation, stages chained, resume skips done work."""

import pytest
import xarray as xr
import yaml

from tests.conftest import one_setting, run_cli


def write(tmp_path, **over):
    cfg = {
        "name": "t",
        "out": str(tmp_path / "study"),
        "dump": {
            "model": over.pop("model"),
            "lengths": [256],
            "depths": [0.3, 0.7],
            "samples": 2,
            "window": 8,
            "block": 32,
        },
        "analyze": {"policies": ["full", "h2o", "cab"], "sparsity": [0.5, 0.9], "workers": 1},
        "viz": {"dpi": 50},
    }
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_then_resume(tiny_llama_dir, tmp_path):
    cfg = write(tmp_path, model=tiny_llama_dir)
    r = run_cli("pipelines", "run", str(cfg), "--no-progress")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "study"
    assert (out / "report" / "index.html").exists() and (out / "report" / "summary.csv").exists()
    ds = one_setting(xr.open_zarr(out / "results.zarr"))
    assert list(ds.policy.values) == ["full", "h2o", "cab"]
    stamp = (out / "results.zarr" / "zarr.json").stat().st_mtime
    r = run_cli("pipelines", "run", str(cfg), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "0 documents written (4 already done)" in r.stdout
    assert "analyze: " in r.stdout and "is up to date (same documents, same settings), skipped" in r.stdout
    assert "is up to date (same results, same options), skipped" in r.stdout
    assert (out / "results.zarr" / "zarr.json").stat().st_mtime == stamp


def test_until_stops_after_the_named_stage(tiny_llama_dir, tmp_path):
    """--until analyze: a GPU host without plotting libraries runs dump and analyze; viz later."""
    cfg = write(tmp_path, model=tiny_llama_dir)
    out = tmp_path / "study"
    r = run_cli("pipelines", "run", str(cfg), "--until", "dump", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (out / "run.zarr").exists() and not (out / "results.zarr").exists()
    r = run_cli("pipelines", "run", str(cfg), "--until", "analyze", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (out / "results.zarr").exists() and not (out / "report").exists()
    r = run_cli("pipelines", "run", str(cfg), "--until", "report", "--no-progress")
    assert r.returncode == 2 and "report" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "over,words",
    [
        ({"dump__lengths": ["4q"]}, "4q"),
        ({"dump__samples": 0}, "dump.samples"),
        ({"dump__colour": 1}, "unknown setting dump.colour"),
        ({"analyze__policies": ["h3o"]}, "unknown policy 'h3o'"),
        ({"analyze__sparsity": [1.5]}, "outside [0, 1)"),
        ({"viz__dpi": 5}, "viz.dpi"),
        ({"extra": {}}, "unknown top-level key 'extra'"),
    ],
)
def test_config_errors(tmp_path, over, words):
    cfg = write(tmp_path, model="smollm2-135m", **over)
    r = run_cli("pipelines", "check", str(cfg))
    assert r.returncode == 2, r.stdout + r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "study").exists()


def test_missing_and_broken_config(tmp_path):
    r = run_cli("pipelines", "run", str(tmp_path / "none.yaml"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: [unclosed\n")
    r = run_cli("pipelines", "run", str(bad))
    assert r.returncode == 2 and "not valid YAML" in r.stderr


def test_shipped_configs_are_valid():
    assert run_cli("pipelines", "check", "configs/demo.yaml").returncode == 0
    for name in ("paper", "paper_long", "ruler", "ruler_gemma_gpu", "leaderboard"):
        r = run_cli("pipelines", "check", f"configs/{name}.yaml")
        assert r.returncode == 0, r.stderr


def test_task_sweep_one_study_per_task_then_a_page_and_a_table(tiny_llama_dir, tmp_path):
    """`tasks:` runs each task's study in its own folder, then writes the task-selector page and the
    table across tasks and settings; a second run redoes nothing."""
    cfg = write(
        tmp_path,
        model=tiny_llama_dir,
        tasks=["passkey", "multikey:2"],
        dump__depths=[0.5],
        dump__samples=1,
        analyze__setting=["aware", "agnostic"],
        analyze__sparsity=[0.5],
    )
    r = run_cli("pipelines", "run", str(cfg), "--no-progress")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "study"
    for folder, task in (("passkey", "passkey"), ("multikey-2", "multikey:2")):
        assert (out / folder / "report" / "index.html").exists()
        assert xr.open_zarr(out / folder / "run.zarr").attrs["haystack"]["task"] == task
    page = (out / "tasks.html").read_text()
    assert '"passkey"' in page and '"multikey:2"' in page and '"agnostic"' in page
    import pandas as pd

    table = pd.read_csv(out / "tasks.csv")
    assert set(table.task) == {"passkey", "multikey:2"} and set(table.setting) == {"aware", "agnostic"}
    assert set(table.policy) == {"full", "h2o", "cab"} and (table.documents == 1).all()
    assert "ranking passkey aware:" in r.stdout
    board = pd.read_csv(out / "leaderboard.csv")
    for _, part in board.groupby("setting"):
        assert sorted(part["rank"]) == list(range(1, 4)) and set(part.policy) == {"full", "h2o", "cab"}
        assert part["mean"].is_monotonic_decreasing
        assert ((part["0.5 lo"] <= part["0.5"]) & (part["0.5"] <= part["0.5 hi"])).all()
        assert ((part["0.5 lo"] >= 0) & (part["0.5 hi"] <= 100)).all()
    assert "leaderboard aware" in r.stdout and "rho vs kvpress" in r.stdout
    r = run_cli("pipelines", "run", str(cfg), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("0 documents written (1 already done)") == 2


@pytest.mark.parametrize(
    "over,words",
    [
        ({"tasks": ["passkey", "passkey"]}, "listed twice"),
        ({"tasks": ["passkey", "multikeys:3"]}, "'multikeys:3'"),
        ({"tasks": "passkey"}, "must be a non-empty list"),
        ({"tasks": ["passkey"], "dump__task": "single"}, "not both"),
        ({"tasks": ["passkey"], "dump__needle_type": "uuid"}, "no type to choose"),
    ],
)
def test_task_sweep_errors(tmp_path, over, words):
    cfg = write(tmp_path, model="smollm2-135m", **over)
    r = run_cli("pipelines", "check", str(cfg))
    assert r.returncode == 2, r.stdout + r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "study").exists()


def test_a_sweep_analyzes_every_task_on_one_cluster(monkeypatch):
    """A sweep's studies share one Dask cluster (its workers start and load the model once), opened
    on first use and closed when the sweep ends; a study alone opens and closes its own."""
    from contextlib import contextmanager

    from core import cluster
    from pipelines.run import SharedClient

    events = []

    @contextmanager
    def fake(scheduler=None, workers=None):
        events.append(("open", workers))
        yield object()
        events.append(("close", workers))

    monkeypatch.setattr(cluster, "client_for", fake)
    with SharedClient(None, 3) as shared:
        assert events == []  # nothing started before an analysis needs it
        clients = []
        for _ in range(3):
            with shared as s:
                clients.append(s.get())
        assert events == [("open", 3)] and len(set(map(id, clients))) == 1
    assert events == [("open", 3), ("close", 3)]
    events.clear()
    for _ in range(2):
        with SharedClient(None, 2) as alone:
            alone.get()
    assert events == [("open", 2), ("close", 2)] * 2


def test_by_length_removes_each_run_store_and_equals_the_whole_analysis(tiny_llama_dir, tmp_path):
    """`by_length: true`: each length dumped, analyzed and its run store removed in turn; the joined
    results equal, variable by variable, those of one store of every length analyzed at once (the
    retrieval heads, intervals, causes and calibration recomputed over both lengths)."""
    import numpy as np

    over = dict(
        model=tiny_llama_dir,
        dump__lengths=[200, 256],
        analyze={
            "policies": ["full", "h2o", "cab_high", "snapkv"],
            "sparsity": [0.5, 0.9],
            "setting": ["aware", "agnostic"],
            "answers": True,
            "retrieval_heads": 3,
            "workers": 1,
        },
    )
    (tmp_path / "whole").mkdir()
    whole = write(tmp_path / "whole", **over)
    r = run_cli("pipelines", "run", str(whole), "--until", "analyze", "--no-progress")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(whole.read_text())
    cfg["out"], cfg["by_length"] = str(tmp_path / "by_length"), True
    path = tmp_path / "by_length.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = run_cli("pipelines", "run", str(path), "--no-progress")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "by_length"
    for n in (200, 256):
        assert not (out / "lengths" / str(n) / "run.zarr").exists()
        assert (out / "lengths" / str(n) / "results.zarr").exists() and f"length {n}: " in r.stdout
    assert (out / "report" / "index.html").exists()
    a = xr.open_zarr(tmp_path / "whole" / "study" / "results.zarr").load()
    b = xr.open_zarr(out / "results.zarr").load()
    assert sorted(a.data_vars) == sorted(b.data_vars)
    assert list(b.length.values) == [200, 256]
    for v in a.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    assert (
        a.attrs["by_setting"]["aware"]["calibration_best_rule"]
        == b.attrs["by_setting"]["aware"]["calibration_best_rule"]
    )
    # what each length was read with survives its run store's removal, joined over the lengths
    assert sorted(b.attrs["model_by_length"]) == ["200", "256"]
    assert b.attrs["model_by_length"] == a.attrs["model_by_length"]
    assert {m["rope_scaling"] for m in b.attrs["model_by_length"].values()} == {None}
    assert {m["dtype"] for m in b.attrs["model_by_length"].values()} == {"float32"}
    # the same join by hand, and a length given twice refused
    parts = [str(out / "lengths" / str(n) / "results.zarr") for n in (256, 200)]
    r = run_cli("analyze.join", *parts, "--out", str(tmp_path / "joined.zarr"))
    assert r.returncode == 0 and "join: 2 lengths (200, 256)" in r.stdout, r.stderr
    c = xr.open_zarr(tmp_path / "joined.zarr").load()
    for v in a.data_vars:
        np.testing.assert_array_equal(a[v].values, c[v].values, err_msg=v)
    from analyze import join_lengths
    from core.errors import UsageError

    p256, p200 = (xr.open_zarr(p).load() for p in parts)
    with pytest.raises(UsageError, match="other sparsity values"):  # not one study's lengths
        join_lengths([p200, p256.assign_coords(sparsity=[0.5, 0.8])], ["200", "256"])
    r = run_cli("analyze.join", parts[0], parts[0], "--out", str(tmp_path / "twice.zarr"))
    assert r.returncode == 2 and "repeats length 256: give each length once" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "twice.zarr").exists()
    r = run_cli("pipelines", "run", str(path), "--until", "analyze", "--no-progress")
    assert r.returncode == 0 and r.stdout.count("analyzed, its run store removed, skipped") == 2, (
        r.stdout + r.stderr
    )


def test_by_length_must_be_a_boolean(tiny_llama_dir, tmp_path):
    cfg = yaml.safe_load(write(tmp_path, model=tiny_llama_dir).read_text())
    cfg["by_length"] = "yes"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = run_cli("pipelines", "run", str(path), "--no-progress")
    assert r.returncode == 2 and "`by_length:` is 'yes'; allowed: true or false" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "study").exists()
