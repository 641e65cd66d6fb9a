"""The bad-input and fault catalogue, as subprocesses of the four CLIs.

Every case asserts the exit status, that stderr is one sentence with no traceback, and what is (and
is not) left on disk. Cases that change a store work on a copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr

from tests.conftest import ROOT, dump_args, one_setting, run_cli

SMALL = dump_args("256", samples=1, window=8, block=32)


@pytest.fixture(scope="module")
def base(tiny_llama_dir, tmp_path_factory):
    """A small finished dump and its results: the catalogue's inputs (never modified)."""
    d = tmp_path_factory.mktemp("catalogue")
    store, results = d / "run.zarr", d / "run.results.zarr"
    r = run_cli("dump", "--model", tiny_llama_dir, *SMALL, "--out", str(store), "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run_cli(
        "analyze",
        str(store),
        "--policies",
        "full,h2o",
        "--sparsity",
        "0.5",
        "--workers",
        "1",
        "--out",
        str(results),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    return {"model": tiny_llama_dir, "store": str(store), "results": str(results)}


def one_sentence(r, status=2, words=()):
    """Exit status, a single stderr line naming the problem, no traceback."""
    err = r.stderr
    assert r.returncode == status, f"status {r.returncode}\n{r.stdout}\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, lines[0])


def fill(tmp_path, sub, tokens):
    """`{tmp}`, `{model}`, `{store}`, `{results}` in a command line."""
    return [t.format(tmp=tmp_path, **sub) for t in tokens]


def tree(path: Path) -> dict:
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}


# (case, argv, words that must appear in the sentence): refused before any work, nothing written at {tmp}/o
REFUSED = [
    ("dump length too short", ["dump", "--model", "{model}", "--lengths", "10", "--out", "{tmp}/o"], ["10"]),
    ("dump length unreadable", ["dump", "--lengths", "4q", "--out", "{tmp}/o"], ["4q"]),
    ("dump length repeated", ["dump", "--lengths", "512,512", "--out", "{tmp}/o"], ["repeat"]),
    ("dump samples 0", ["dump", "--samples", "0", "--out", "{tmp}/o"], ["--samples", "at least 1"]),
    ("dump window 0", ["dump", "--window", "0", "--out", "{tmp}/o"], ["--window"]),
    ("dump block 0", ["dump", "--block", "0", "--out", "{tmp}/o"], ["--block"]),
    ("dump block text", ["dump", "--block", "big", "--out", "{tmp}/o"], ["--block", "whole number"]),
    ("dump store misspelt", ["dump", "--store", "fulll", "--out", "{tmp}/o"], ["fulll", "stats, full"]),
    ("dump device tpu", ["dump", "--device", "tpu", "--out", "{tmp}/o"], ["tpu", "cuda"]),
    ("dump dtype fp8", ["dump", "--dtype", "fp8", "--out", "{tmp}/o"], ["fp8", "bfloat16"]),
    ("dump max-gb negative", ["dump", "--max-gb", "-1", "--out", "{tmp}/o"], ["--max-gb"]),
    ("dump depth above 1", ["dump", "--depths", "1.5", "--out", "{tmp}/o"], ["1.5"]),
    ("dump seed negative", ["dump", "--seed", "-1", "--out", "{tmp}/o"], ["--seed"]),
    (
        "dump layers unreadable",
        ["dump", "--layers", "a-b", "--store", "full", "--out", "{tmp}/o"],
        ["--layers"],
    ),
    (
        "dump layer out of range",
        [
            "dump",
            "--model",
            "{model}",
            "--lengths",
            "256",
            "--store",
            "full",
            "--layers",
            "99",
            "--out",
            "{tmp}/o",
        ],
        ["99"],
    ),
    (
        "dump layers without full",
        ["dump", "--model", "{model}", "--lengths", "256", "--layers", "1", "--out", "{tmp}/o"],
        ["--store full"],
    ),
    ("dump filler missing", ["dump", "--filler", "/nope.txt", "--out", "{tmp}/o"], ["/nope.txt"]),
    ("dump model missing", ["dump", "--model", "/nope", "--out", "{tmp}/o"], ["/nope"]),
    (
        "dump beyond context",
        ["dump", "--model", "{model}", "--lengths", "4k", "--out", "{tmp}/o"],
        ["context"],
    ),
    (
        "dump scheduler not a url",
        ["dump", "--scheduler", "notaurl", "--out", "{tmp}/o"],
        ["notaurl", "tcp://"],
    ),
    ("dump devices unknown", ["dump", "--devices", "cuda:0,gpu1", "--out", "{tmp}/o"], ["gpu1"]),
    ("dump cuda absent", ["dump", "--model", "{model}", "--device", "cuda", "--out", "{tmp}/o"], ["CUDA"]),
    (
        "dump out is the results store",
        ["dump", "--model", "{model}", *SMALL, "--out", "{results}"],
        ["results store"],
    ),
    (
        "dump out unwritable",
        ["dump", "--model", "{model}", *SMALL, "--out", "/proc/nope.zarr"],
        ["not writable"],
    ),
    ("analyze out is its input", ["analyze", "{store}", "--out", "{store}"], ["input"]),
    (
        "analyze out is a run store",
        ["analyze", "{store}", "--out", "{store}", "--policies", "h2o"],
        ["input"],
    ),
    ("analyze unknown policy", ["analyze", "{store}", "--policies", "h3o", "--out", "{tmp}/o"], ["h3o"]),
    (
        "analyze policy twice",
        ["analyze", "{store}", "--policies", "h2o,h2o", "--out", "{tmp}/o"],
        ["repeats"],
    ),
    (
        "analyze same policy two spellings",
        ["analyze", "{store}", "--policies", "h2o,h2o:recent_ratio=0.5", "--out", "{tmp}/o"],
        ["repeats"],
    ),
    (
        "analyze h2o ratio 2",
        ["analyze", "{store}", "--policies", "h2o:recent_ratio=2", "--out", "{tmp}/o"],
        ["recent_ratio", "at most 1"],
    ),
    (
        "analyze h2o ratio -1",
        ["analyze", "{store}", "--policies", "h2o:recent_ratio=-1", "--out", "{tmp}/o"],
        ["at least 0"],
    ),
    (
        "analyze sinks -5",
        ["analyze", "{store}", "--policies", "streaming:sinks=-5", "--out", "{tmp}/o"],
        ["sinks"],
    ),
    (
        "analyze cab graph",
        ["analyze", "{store}", "--policies", "cab:graph=xyz", "--out", "{tmp}/o"],
        ["xyz", "blocks, qk"],
    ),
    (
        "analyze snapkv kernel 0",
        ["analyze", "{store}", "--policies", "snapkv:kernel=0", "--out", "{tmp}/o"],
        ["kernel"],
    ),
    (
        "analyze snapkv kernel even",
        ["analyze", "{store}", "--policies", "snapkv:kernel=4", "--out", "{tmp}/o"],
        ["odd"],
    ),
    (
        "analyze cab_3c bridge",
        ["analyze", "{store}", "--policies", "cab_3c:bridge=foo", "--out", "{tmp}/o"],
        ["foo"],
    ),
    (
        "analyze cab_3c shares",
        ["analyze", "{store}", "--policies", "cab_3c:local=0.9:bridges=0.5", "--out", "{tmp}/o"],
        ["<= 1"],
    ),
    (
        "analyze parameter given twice",
        ["analyze", "{store}", "--policies", "h2o:recent_ratio=0.1:recent_ratio=0.2", "--out", "{tmp}/o"],
        ["twice"],
    ),
    (
        "analyze parameter unknown",
        ["analyze", "{store}", "--policies", "h2o:ratio=1", "--out", "{tmp}/o"],
        ["ratio"],
    ),
    (
        "analyze block not multiple",
        ["analyze", "{store}", "--policies", "cab:block=48", "--out", "{tmp}/o"],
        ["multiple"],
    ),
    (
        "analyze retrieval heads -3",
        ["analyze", "{store}", "--retrieval-heads", "-3", "--out", "{tmp}/o"],
        ["--retrieval-heads"],
    ),
    ("analyze sparsity 1.5", ["analyze", "{store}", "--sparsity", "1.5", "--out", "{tmp}/o"], ["[0, 1)"]),
    (
        "analyze answer device tpu",
        ["analyze", "{store}", "--answers", "--answer-device", "tpu", "--out", "{tmp}/o"],
        ["tpu", "cuda"],
    ),
    (
        "dump rope scaling misspelt",
        ["dump", "--rope-scaling", "yarn4", "--out", "{tmp}/o"],
        ["yarn4", "linear:F or yarn:F"],
    ),
    (
        "analyze sparsity repeated",
        ["analyze", "{store}", "--sparsity", "0.5,0.5", "--out", "{tmp}/o"],
        ["repeats"],
    ),
    (
        "analyze scheduler not a url",
        ["analyze", "{store}", "--scheduler", "notaurl", "--out", "{tmp}/o"],
        ["tcp://"],
    ),
    (
        "analyze scheduler unreachable",
        ["analyze", "{store}", "--scheduler", "tcp://127.0.0.1:9", "--out", "{tmp}/o"],
        ["scheduler"],
    ),
    ("analyze workers 0", ["analyze", "{store}", "--workers", "0", "--out", "{tmp}/o"], ["--workers"]),
    ("analyze gqa both", ["analyze", "{store}", "--gqa", "both", "--out", "{tmp}/o"], ["both"]),
    ("analyze store missing", ["analyze", "/nope.zarr", "--out", "{tmp}/o"], ["/nope.zarr"]),
    ("analyze no store", ["analyze"], ["RUN.zarr"]),
    ("analyze results as store", ["analyze", "{results}", "--out", "{tmp}/o"], ["results store"]),
    (
        "analyze out unwritable",
        ["analyze", "{store}", "--policies", "h2o", "--out", "/proc/nope.zarr"],
        ["not writable"],
    ),
    ("viz results missing", ["viz", "/nope.zarr", "--out", "{tmp}/o"], ["python -m analyze"]),
    ("viz run store as results", ["viz", "{store}", "--out", "{tmp}/o"], ["not a results store"]),
    ("viz store missing", ["viz", "{results}", "--store", "/nope", "--out", "{tmp}/o"], ["/nope"]),
    ("viz dpi 5", ["viz", "{results}", "--dpi", "5", "--out", "{tmp}/o"], ["--dpi"]),
    ("viz out is the results", ["viz", "{results}", "--out", "{results}"], ["input"]),
    # containment, both ways: an --out holding its input, or inside it
    ("analyze out contains its input", ["analyze", "{store}", "--out", "{store}/.."], ["contains the input"]),
    (
        "analyze out inside its input",
        ["analyze", "{store}", "--out", "{store}/res.zarr"],
        ["lies inside the input"],
    ),
    ("viz out contains its results", ["viz", "{results}", "--out", "{results}/.."], ["contains the input"]),
    (
        "viz out inside its results",
        ["viz", "{results}", "--out", "{results}/report"],
        ["lies inside the input"],
    ),
    (
        "viz out contains its store",
        ["viz", "{results}", "--store", "{store}", "--out", "{store}/.."],
        ["contains the input"],
    ),
    ("viz out unwritable", ["viz", "{results}", "--out", "/proc/nope"], ["not writable"]),
    # outputs that would not outlive the process, or whose protocol fsspec does not know
    ("dump out in memory", ["dump", "--out", "memory://run.zarr"], ["memory://run.zarr", "lost"]),
    (
        "analyze out in memory",
        ["analyze", "{store}", "--out", "memory://r.zarr"],
        ["memory://r.zarr", "lost"],
    ),
    ("viz out in memory", ["viz", "{results}", "--out", "memory://rep"], ["memory://rep", "lost"]),
    ("dump out unknown protocol", ["dump", "--out", "nosuchproto://x"], ["nosuchproto"]),
    ("analyze out unknown protocol", ["analyze", "{store}", "--out", "nosuchproto://x"], ["nosuchproto"]),
    # a single-file output never replaces what the lab did not write; a directory is not a file
    (
        "viz tasks out is a store file",
        ["viz", "tasks", "t={results}", "--out", "{results}/zarr.json"],
        ["did not write"],
    ),
    ("viz tasks out is a directory", ["viz", "tasks", "t={results}", "--out", "{tmp}"], ["is a directory"]),
    ("viz tasks out in memory", ["viz", "tasks", "t={results}", "--out", "memory://t.html"], ["lost"]),
    (
        "analyze sparsity near-duplicate",
        ["analyze", "{store}", "--sparsity", "0.5,0.5000001", "--out", "{tmp}/o"],
        ["0.5000001", "4 decimals"],
    ),
    (
        "analyze retrieval heads absurd",
        ["analyze", "{store}", "--retrieval-heads", "100000", "--out", "{tmp}/o"],
        ["100000", "at most"],
    ),
    # fillers must be UTF-8 text with sentences
    ("dump filler binary", ["dump", "--filler", "{tmp}/binary.txt", "--out", "{tmp}/o"], ["binary"]),
    ("dump filler not utf-8", ["dump", "--filler", "{tmp}/latin1.txt", "--out", "{tmp}/o"], ["not UTF-8"]),
    ("dump filler no sentences", ["dump", "--filler", "{tmp}/flat.txt", "--out", "{tmp}/o"], ["0 sentence"]),
    (
        "dump passkey in a haystack of needles",
        ["dump", "--task", "passkey,haystack=needles", "--out", "{tmp}/o"],
        ["needles", "noise or essay"],
    ),
    (
        "dump task option twice",
        ["dump", "--task", "single,value=uuid,value=number", "--out", "{tmp}/o"],
        ["value=", "twice"],
    ),
    # numbers without bounds
    (
        "dump rope factor infinite",
        ["dump", "--rope-scaling", "linear:inf", "--out", "{tmp}/o"],
        ["linear:inf"],
    ),
    (
        "dump rope factor absurd",
        ["dump", "--rope-scaling", "yarn:1e30", "--out", "{tmp}/o"],
        ["yarn:1e30", "64"],
    ),
    (
        "dump layer range absurd",
        ["dump", "--layers", "0-99999999999", "--out", "{tmp}/o"],
        ["--layers", "1024"],
    ),
    (
        "dump samples absurd",
        ["dump", "--samples", "99999999999999999999", "--out", "{tmp}/o"],
        ["--samples", "at most"],
    ),
    ("dump max gb infinite", ["dump", "--max-gb", "inf", "--out", "{tmp}/o"], ["--max-gb", "at most"]),
    (
        "dump depth grid absurd",
        ["dump", "--depths", "linspace:0,1,100000000000", "--out", "{tmp}/o"],
        ["1000"],
    ),
]


@pytest.mark.parametrize("case,argv,words", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_before_any_work(base, tmp_path, case, argv, words):
    (tmp_path / "binary.txt").write_bytes(b"Some text.\x00\x01\x02 More text. And more.")
    (tmp_path / "latin1.txt").write_bytes("Caf\u00e9 au lait. Tr\u00e8s bien. Encore.".encode("latin-1"))
    (tmp_path / "flat.txt").write_text("words without any sentence end " * 50)
    before = {k: tree(Path(base[k])) for k in ("store", "results")}
    r = run_cli(*fill(tmp_path, base, argv))
    one_sentence(r, 2, [w.format(tmp=tmp_path, **base) for w in words])
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob("o.*")), "something was written"
    assert {k: tree(Path(base[k])) for k in ("store", "results")} == before, "an input changed"


@pytest.mark.parametrize(
    "stage,overwrite", [("dump", False), ("dump", True), ("analyze", False), ("viz", False)]
)
def test_a_foreign_directory_is_never_replaced(base, tmp_path, stage, overwrite):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    argv = {
        "dump": ["dump", "--model", base["model"], *SMALL, "--out", str(foreign)],
        "analyze": ["analyze", base["store"], "--out", str(foreign)],
        "viz": ["viz", base["results"], "--out", str(foreign)],
    }[stage]
    if overwrite:
        argv.append("--overwrite")
    one_sentence(run_cli(*argv), 2, ["refusing to replace"])
    assert (foreign / "thesis.tex").read_text() == "years of work"
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]


@pytest.mark.parametrize("stage", ["dump", "analyze", "viz"])
def test_an_existing_file_as_out_is_refused(base, tmp_path, stage):
    f = tmp_path / "file.txt"
    f.write_text("keep")
    argv = {
        "dump": ["dump", "--model", base["model"], *SMALL, "--out", str(f)],
        "analyze": ["analyze", base["store"], "--out", str(f)],
        "viz": ["viz", base["results"], "--out", str(f)],
    }[stage]
    one_sentence(run_cli(*argv), 2, ["existing file"])
    assert f.read_text() == "keep"


def test_dump_other_settings_refused_then_a_second_writer_refused(base, tmp_path):
    store = tmp_path / "run.zarr"
    shutil.copytree(base["store"], store)
    one_sentence(
        run_cli("dump", "--model", base["model"], *SMALL, "--seed", "3", "--out", str(store)),
        2,
        ["other settings"],
    )
    lock = tmp_path / "run.zarr.lock"
    lock.write_text(f'{{"host": "{os.uname().nodename}", "pid": {os.getpid()}}}')  # a live writer: this test
    one_sentence(
        run_cli("dump", "--model", base["model"], *SMALL, "--out", str(store)),
        2,
        ["being written", str(os.getpid())],
    )
    lock.write_text(f'{{"host": "{os.uname().nodename}", "pid": 999999999}}')  # a writer that died
    r = run_cli("dump", "--model", base["model"], *SMALL, "--out", str(store), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert not lock.exists()


def test_growing_a_store_with_a_new_length_works_first_time(base, tmp_path):
    store = tmp_path / "run.zarr"
    shutil.copytree(base["store"], store)
    grow = [a if a != "256" else "256,300" for a in SMALL]
    r = run_cli("dump", "--model", base["model"], *grow, "--out", str(store), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "2 documents written (2 already done)" in r.stdout
    assert zarr.open_group(str(store), mode="r")["len_300"]["done"][:].all()


def _damaged(base, tmp_path, how):
    store = tmp_path / "run.zarr"
    shutil.copytree(base["store"], store)
    chunk = store / "len_256" / "colsum" / "c" / "1" / "0" / "2" / "0" / "0"
    assert chunk.is_file()
    if how == "missing":
        chunk.unlink()
    else:
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))
    return store


@pytest.mark.parametrize("how", ["missing", "corrupt"])
def test_a_damaged_chunk_is_named_and_nothing_is_written(base, tmp_path, how):
    store = _damaged(base, tmp_path, how)
    out = tmp_path / "res.zarr"
    r = run_cli(
        "analyze",
        str(store),
        "--policies",
        "h2o",
        "--sparsity",
        "0.5",
        "--workers",
        "1",
        "--out",
        str(out),
        "--no-progress",
    )
    one_sentence(r, 2, ["colsum", "depth 1", "sample 0", "layer 2", "--skip-corrupt"])
    assert not out.exists() and not list(tmp_path.glob("res.zarr.tmp*"))


@pytest.mark.parametrize(
    "how,words",
    [
        ("needle_table missing", ["needle_table", "missing on disk"]),
        ("target missing", ["target", "missing on disk"]),
        ("needle_table not JSON", ["needle_table", "not readable JSON"]),
        ("spans past the end", ["needle_table", "outside the prompt"]),
    ],
)
def test_damaged_needle_metadata_is_named_then_skipped(base, tmp_path, how, words):
    """The needle table and masks are validated on read: a damaged one names its document, and
    --skip-corrupt scores the others and lists it."""
    import json

    store = tmp_path / "run.zarr"
    shutil.copytree(base["store"], store)
    g = zarr.open_group(str(store / "len_256"), mode="r+")
    if how.endswith("missing"):
        name = how.split()[0]
        chunks = [p for p in (store / "len_256" / name / "c" / "1").rglob("*") if p.is_file()]
        assert chunks
        for p in chunks:
            p.unlink()
    elif how == "needle_table not JSON":
        g["needle_table"][1, 0] = '[{"key": "x", "value'
    else:
        table = json.loads(str(g["needle_table"][1, 0]))
        table[0]["spans"] = [[250, 300]]
        g["needle_table"][1, 0] = json.dumps(table)
    argv = [
        "analyze",
        str(store),
        "--policies",
        "h2o",
        "--sparsity",
        "0.5",
        "--workers",
        "1",
        "--no-progress",
    ]
    r = run_cli(*argv, "--out", str(tmp_path / "a.zarr"))
    one_sentence(r, 2, [*words, "depth 1", "sample 0"])
    assert not (tmp_path / "a.zarr").exists()
    if how != "needle_table not JSON":  # one case is enough for --skip-corrupt (the same path skips all)
        return
    r = run_cli(*argv, "--out", str(tmp_path / "b.zarr"), "--skip-corrupt")
    assert r.returncode == 0 and "skipped 1 corrupt document" in r.stderr, r.stderr
    assert not bool(one_setting(xr.open_zarr(tmp_path / "b.zarr")).done.isel(depth=1, sample=0).squeeze())


def test_skip_corrupt_scores_the_rest_and_lists_what_it_skipped(base, tmp_path):
    store = _damaged(base, tmp_path, "missing")
    out = tmp_path / "res.zarr"
    r = run_cli(
        "analyze",
        str(store),
        "--policies",
        "h2o",
        "--sparsity",
        "0.5",
        "--workers",
        "1",
        "--out",
        str(out),
        "--no-progress",
        "--skip-corrupt",
    )
    assert r.returncode == 0, r.stderr
    assert "skipped 1 corrupt document" in r.stderr and "depth 1" in r.stderr
    ds = one_setting(xr.open_zarr(out))
    assert bool(ds.done.sel(length=256).isel(depth=0, sample=0)) and not bool(
        ds.done.isel(depth=1, sample=0).squeeze()
    )
    assert (
        np.isnan(ds.needle_hit.isel(depth=1).values).all()
        and not np.isnan(ds.needle_hit.isel(depth=0).values).any()
    )


def _interrupt(argv, sig, wait_for, timeout=120):
    """Start a CLI, wait until `wait_for(stderr so far)` holds, then send `sig`."""
    import threading

    proc = subprocess.Popen(
        [sys.executable, "-m", *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not wait_for("".join(err)):
        time.sleep(0.02)
    assert proc.poll() is None, "the command ended before it could be interrupted: " + "".join(err)
    time.sleep(0.1)
    proc.send_signal(sig)
    out = proc.stdout.read()
    proc.wait(timeout=120)
    reader.join(timeout=10)
    return subprocess.CompletedProcess(argv, proc.returncode, out, "".join(err))


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_dump_interrupted_ends_in_one_sentence_and_resumes(base, tmp_path, sig, status):
    store = tmp_path / "run.zarr"
    argv = ["dump", "--model", base["model"], *SMALL, "--samples", "3", "--out", str(store), "--no-progress"]
    r = _interrupt(argv, sig, lambda _: any(store.glob("len_*/colsum/c/*")))
    one_sentence(r, status, ["rerun the same command to resume"])
    assert not (tmp_path / "run.zarr.lock").exists()
    r = run_cli(*argv)
    assert r.returncode == 0, r.stderr
    assert zarr.open_group(str(store), mode="r")["len_256"]["done"][:].all()


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_analyze_interrupted_leaves_nothing_at_out(base, tmp_path, sig, status):
    out = tmp_path / "res.zarr"
    argv = ["analyze", base["store"], "--policies", "full,h2o,cab", "--workers", "1", "--out", str(out)]
    # the first task compiles the policies (seconds): interrupt once the progress bar is drawn
    r = _interrupt(argv, sig, lambda err: "0/6" in err)
    assert r.returncode == status, r.stderr
    assert "Traceback" not in r.stderr and ("interrupted" in r.stderr or "terminated" in r.stderr), r.stderr
    assert not out.exists() and not list(tmp_path.glob("res.zarr*"))


def _config(tmp_path, base, **over):
    cfg = {
        "out": str(tmp_path / "study"),
        "dump": {"model": base["model"], "lengths": [256], "depths": [0.5]},
        "analyze": {"policies": ["full"], "sparsity": [0.5]},
    }
    for key, value in over.items():
        section, _, name = key.partition("__")
        cfg.setdefault(section, {})[name] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


PIPELINE_BAD = [
    ({"analyze__policies": ["cab_3c:bridge=foo"]}, "foo"),
    ({"dump__device": "tpu"}, "tpu"),
    ({"dump__dtype": "fp8"}, "fp8"),
    ({"dump__store": "fulll"}, "fulll"),
    ({"analyze__retrieval_heads": -4}, "retrieval_heads"),
    ({"analyze__sparsity": [0.5, 0.5]}, "repeats"),
    ({"dump__devices": ["cuda:0", "gpu1"]}, "gpu1"),
    ({"viz__dpi": 5}, "viz.dpi"),
    ({"dask__workers": 2}, "dask"),
]


@pytest.mark.parametrize("over,words", PIPELINE_BAD, ids=[str(o) for o, _ in PIPELINE_BAD])
def test_pipelines_check_refuses_what_run_would_fail_on(base, tmp_path, over, words):
    if "dask__workers" in over:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"out": str(tmp_path / "study"), "dask": {"workers": 2}}))
        path = str(path)
    else:
        path = _config(tmp_path, base, **over)
    one_sentence(run_cli("pipelines", "check", path), 2, [words])
    assert not (tmp_path / "study").exists()


def test_viz_tasks_replaces_its_own_page_and_never_another_file(base, tmp_path):
    page = tmp_path / "tasks.html"
    for _ in range(2):  # the second run replaces the page it wrote
        r = run_cli("viz", "tasks", f"t={base['results']}", "--out", str(page))
        assert r.returncode == 0, r.stderr
    page.write_text(page.read_text() + "<!-- my notes -->")
    one_sentence(run_cli("viz", "tasks", f"t={base['results']}", "--out", str(page)), 2, ["did not write"])
    assert page.read_text().endswith("<!-- my notes -->")


def test_pipelines_never_writes_its_sweep_files_over_foreign_ones(base, tmp_path):
    cfg = yaml.safe_load(Path(_config(tmp_path, base)).read_text())
    cfg["tasks"] = ["passkey"]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    study = tmp_path / "study"
    study.mkdir()
    (study / "tasks.csv").write_text("my table")
    for command in ("check", "run"):
        one_sentence(run_cli("pipelines", command, str(path)), 2, ["tasks.csv", "did not write"])
    assert (study / "tasks.csv").read_text() == "my table" and sorted(p.name for p in study.iterdir()) == [
        "tasks.csv"
    ]


def test_a_filler_file_is_recorded_by_content(base, tmp_path):
    """An edited --filler file never gives two haystacks in one store, nor answers of another text."""
    filler = tmp_path / "essay.txt"
    filler.write_text("The river runs to the sea. Birds sing at dawn. The hills are green in spring. " * 40)
    store = tmp_path / "run.zarr"
    argv = [
        "dump",
        "--model",
        base["model"],
        *SMALL,
        "--filler",
        str(filler),
        "--out",
        str(store),
        "--no-progress",
    ]
    assert run_cli(*argv).returncode == 0
    filler.write_text(filler.read_text().replace("river", "stream"))
    one_sentence(run_cli(*argv), 2, ["filler_sha256"])  # resuming: other settings
    r = run_cli(
        "analyze",
        str(store),
        "--answers",
        "--policies",
        "full",
        "--out",
        str(tmp_path / "r.zarr"),
        "--no-progress",
    )
    one_sentence(r, 2, ["changed since the dump"])
    assert not (tmp_path / "r.zarr").exists()


def test_an_empty_lock_left_by_a_failed_start_is_stale(base, tmp_path):
    """A full disk while the lock is written leaves it empty: once older than a writer takes to write
    it, reruns take it over instead of naming process '?'."""
    import os

    store = tmp_path / "run.zarr"
    lock = tmp_path / "run.zarr.lock"
    lock.write_text("")
    old = lock.stat().st_mtime - 60
    os.utime(lock, (old, old))
    r = run_cli("dump", "--model", base["model"], *SMALL, "--out", str(store), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert not lock.exists()


def test_pipelines_out_holding_foreign_results_is_refused(base, tmp_path):
    study = tmp_path / "study"
    (study / "results.zarr").mkdir(parents=True)
    (study / "results.zarr" / "notes.txt").write_text("mine")
    one_sentence(run_cli("pipelines", "check", _config(tmp_path, base)), 2, ["refusing to replace"])
    assert (study / "results.zarr" / "notes.txt").read_text() == "mine"


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a real full disk (ENOSPC). Skips where mounting is not permitted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root): " + r.stderr.decode().strip())
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_dump_says_so_and_the_rerun_finishes(base, small_disk):
    out = small_disk / "run.zarr"
    argv = [
        "dump",
        "--model",
        base["model"],
        "--lengths",
        "512",
        "--depths",
        "0.2,0.4,0.6,0.8",
        "--samples",
        "2",
        "--window",
        "64",
        "--block",
        "32",
        "--out",
        str(out),
        "--no-progress",
    ]
    one_sentence(run_cli(*argv), 1, ["disk is full", "rerun the same command to resume"])
    subprocess.run(["mount", "-o", "remount,size=64M", str(small_disk)], check=True)
    r = run_cli(*argv)
    assert r.returncode == 0, r.stderr
    assert zarr.open_group(str(out), mode="r")["len_512"]["done"][:].all()


def test_a_file_too_large_ends_in_one_sentence_and_the_rerun_finishes(base, tmp_path):
    """EFBIG (a file-size limit, `ulimit -f`): one sentence naming the error, status 1, a resumable
    store; without the limit the same command completes it."""
    import resource

    out = tmp_path / "run.zarr"
    argv = ["dump", "--model", base["model"], *SMALL, "--store", "full", "--out", str(out), "--no-progress"]
    cmd = [sys.executable, "-m", *argv]

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20 * 1024, resource.RLIM_INFINITY))

    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, preexec_fn=limit, timeout=300)
    one_sentence(r, 1, ["file too large", "rerun"])
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert zarr.open_group(str(out), mode="r")["len_256"]["done"][:].all()


@pytest.mark.parametrize("stage", ["analyze", "viz"])
def test_full_disk_leaves_no_partial_output(base, small_disk, stage):
    (small_disk / "ballast").write_bytes(b"x" * (1024 * 1024 - 64 * 1024))  # leave 64 KiB
    out = small_disk / "out"
    argv = {
        "analyze": [
            "analyze",
            base["store"],
            "--policies",
            "full,h2o,cab",
            "--workers",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ],
        "viz": ["viz", base["results"], "--out", str(out), "--no-progress"],
    }[stage]
    one_sentence(run_cli(*argv), 1, ["disk is full"])
    assert sorted(p.name for p in small_disk.iterdir()) == ["ballast"]


def test_an_out_that_is_a_symlink_to_the_input_is_refused(base, tmp_path):
    link = tmp_path / "link.zarr"
    link.symlink_to(base["store"])
    before = tree(Path(base["store"]))
    one_sentence(run_cli("analyze", base["store"], "--out", str(link)), 2, ["is the input"])
    holder = tmp_path / "holder"
    holder.symlink_to(Path(base["store"]).parent)
    one_sentence(run_cli("analyze", base["store"], "--out", str(holder)), 2, ["contains the input"])
    assert tree(Path(base["store"])) == before


@pytest.mark.parametrize("stage", ["analyze", "viz"])
def test_sigkill_between_moving_the_old_output_aside_and_renaming_the_new_in(base, tmp_path, stage):
    """The worst moment of a replacement, hit deterministically: the old output is
    aside and the new one not yet in. The next run restores or completes it; nothing is stranded."""
    from core import outputs

    out = tmp_path / ("res.zarr" if stage == "analyze" else "report")
    argv = {
        "analyze": [
            "analyze",
            base["store"],
            "--policies",
            "full,h2o",
            "--sparsity",
            "0.5",
            "--workers",
            "1",
        ],
        "viz": ["viz", base["results"], "--dpi", "40"],
    }[stage] + ["--out", str(out), "--no-progress"]
    assert run_cli(*argv).returncode == 0
    old = tree(out)
    killed = run_cli(*argv, env={"NIAH_KILL_AT": "replace:aside"}, subprocess_=True)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists() and outputs.aside_of(out).exists()  # the moment itself
    assert outputs.recover(str(out)) == "restored" and tree(out) == old  # the old output is back whole
    assert not [p.name for p in tmp_path.iterdir() if p.name not in (out.name,)]  # no stranded sibling
    killed = run_cli(*argv, env={"NIAH_KILL_AT": "replace:swapped"}, subprocess_=True)
    assert killed.returncode == -signal.SIGKILL and out.exists() and outputs.aside_of(out).exists()
    r = run_cli(*argv)  # the next run completes the replacement, then replaces it again
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    if stage == "viz":
        assert (out / "index.html").is_file() and (out.stat().st_mode & 0o777) != 0o700  # not 0700
    else:
        assert xr.open_zarr(out).attrs["niah_store"] == "results"


# -- Nothing lost, part two: results that know what they were made from (classes 3-7) -------------
def _study(tmp_path, base, **over):
    cfg = _config(
        tmp_path, base, **{"analyze__skip_corrupt": True, "analyze__workers": 1, "viz__dpi": 40, **over}
    )
    r = run_cli("pipelines", "run", cfg, "--no-progress")
    assert r.returncode == 0, r.stderr
    return cfg, r


def test_a_redumped_document_reruns_analyze_and_viz_options_rerun_viz(base, tmp_path):
    cfg, _ = _study(
        tmp_path, base, dump__depths=[0.3, 0.7], analyze__policies=["full", "h2o"]
    )  # h2o reads colsum
    study = tmp_path / "study"
    chunk = next(
        p for p in (study / "run.zarr" / "len_256" / "colsum" / "c" / "1").rglob("*") if p.is_file()
    )  # depth 0.7
    chunk.write_bytes(b"torn")
    (study / "report").rename(tmp_path / "old_report")  # the viz stage reruns with analyze
    r = run_cli("pipelines", "run", cfg, "--no-progress")  # the store changed? no: same documents
    assert "up to date" in r.stdout  # nothing was re-dumped: the results are those of these documents
    res = one_setting(xr.open_zarr(study / "results.zarr"))
    assert bool(res.done.all())  # they were scored before the damage
    shutil.rmtree(study / "results.zarr")
    r = run_cli("pipelines", "run", cfg, "--no-progress")  # scored now: the damaged document is skipped
    assert r.returncode == 0, r.stderr
    assert not bool(xr.open_zarr(study / "results.zarr").done.sel(depth=0.7).any())
    r = run_cli("dump", "--model", base["model"], "--lengths", "256", "--depths", "0.3,0.7", "--redo", "256,0.7,0",
                "--out", str(study / "run.zarr"), "--no-progress")  # fmt: skip
    assert r.returncode == 0 and "1 documents written" in r.stdout, r.stderr
    r = run_cli("pipelines", "run", cfg, "--no-progress")
    assert r.returncode == 0 and "analyze: " in r.stdout and "up to date (same documents" not in r.stdout
    assert bool(xr.open_zarr(study / "results.zarr").done.all())  # the re-dumped document is scored
    cfg2 = _config(
        tmp_path,
        base,
        dump__depths=[0.3, 0.7],
        analyze__policies=["full", "h2o"],
        analyze__skip_corrupt=True,
        analyze__workers=1,
        viz__dpi=41,
    )
    r = run_cli("pipelines", "run", cfg2, "--no-progress")
    assert "analyze: " in r.stdout and "viz: report at" in r.stdout, r.stdout  # dpi changed: redrawn


def test_viz_refuses_the_kept_sets_of_another_study(base, tmp_path):
    other = tmp_path / "other.zarr"
    r = run_cli("dump", "--model", base["model"], *SMALL, "--seed", "5", "--out", str(other), "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run_cli("viz", base["results"], "--store", str(other), "--out", str(tmp_path / "o"))
    one_sentence(r, 2, ["not the RUN store these results were made from"])
    assert not (tmp_path / "o").exists()
    short = tmp_path / "short.zarr"  # a store lacking a length of the results
    SHORT = [a if a != "256" else "200" for a in SMALL]
    r = run_cli("dump", "--model", base["model"], *SHORT, "--out", str(short), "--no-progress")
    assert r.returncode == 0, r.stderr
    one_sentence(
        run_cli("viz", base["results"], "--store", str(short), "--out", str(tmp_path / "o")),
        2,
        ["no length 256"],
    )


def test_results_record_an_absolute_source_and_viz_says_when_it_is_gone(base, tmp_path):
    res = one_setting(xr.open_zarr(base["results"]))
    assert Path(res.attrs["source_store"]).is_absolute()
    made = json.loads(res.attrs["provenance"])
    assert made["run"]["path"] == str(Path(base["store"]).resolve()) and made["analysis"]["policies"] == [
        "full",
        "h2o",
    ]
    copy = tmp_path / "res.zarr"
    shutil.copytree(base["results"], copy)
    root = zarr.open_group(str(copy), mode="r+")
    root.attrs["source_store"] = "relative/run.zarr"
    r = run_cli("viz", str(copy), "--dpi", "40", "--out", str(tmp_path / "rep"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "no kept-set pictures" in r.stderr and not (tmp_path / "rep" / "keptset.html").exists()


def test_viz_of_a_file_url_writes_a_local_report(base, tmp_path):
    copy = tmp_path / "x.results.zarr"
    shutil.copytree(base["results"], copy)
    r = run_cli("viz", f"file://{copy}", "--dpi", "40", "--no-progress")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert (tmp_path / "x_report" / "index.html").is_file() and not Path(ROOT, "file:").exists()


def test_viz_serve_on_a_port_in_use_is_refused(base):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        one_sentence(
            run_cli("viz", "serve", base["results"], "--port", str(port)), 2, [f"--port {port} is in use"]
        )


def test_a_budget_below_a_policys_minimum_is_warned_and_recorded(base, tmp_path):
    out = tmp_path / "res.zarr"
    r = run_cli("analyze", base["store"], "--policies", "streaming:sinks=200", "--sparsity", "0.5", "--workers", "1",
                "--out", str(out), "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "below its minimum 201" in r.stderr
    assert any("below its minimum" in w for w in xr.open_zarr(out).attrs["budget_warnings"])


def test_diagnoses_name_the_real_problem(base, tmp_path):
    store = tmp_path / "run.zarr"
    shutil.copytree(base["store"], store)
    for chunk in (store / "len_256" / "input_ids" / "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()  # every document's prompt ids gone: read as the fill value 0
            break
    r = run_cli("analyze", str(store), "--answers", "--policies", "full", "--sparsity", "0.5", "--workers", "1",
                "--out", str(tmp_path / "o"), "--no-progress")  # fmt: skip
    one_sentence(r, 2, ["input_ids", "missing on disk"])
    assert "not the one the dump used" not in r.stderr
    locked = tmp_path / "locked.zarr"
    shutil.copytree(base["store"], locked)
    (tmp_path / "locked.zarr.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    one_sentence(
        run_cli("analyze", str(locked), "--out", str(tmp_path / "o")), 2, ["is being written by process 1"]
    )
    gone = tmp_path / "gone.zarr"
    shutil.copytree(base["store"], gone)
    shutil.rmtree(gone / "len_256")
    one_sentence(
        run_cli("analyze", str(gone), "--out", str(tmp_path / "o")), 2, ["len_256 is missing on disk"]
    )
    assert not (tmp_path / "o").exists()


def test_pipelines_check_refuses_other_settings_and_reads_out_relative_to_the_config(base, tmp_path):
    cfg, _ = _study(tmp_path, base)
    raw = yaml.safe_load(Path(cfg).read_text())
    raw["dump"]["seed"] = 9
    Path(cfg).write_text(yaml.safe_dump(raw))
    one_sentence(run_cli("pipelines", "check", cfg), 2, ["other settings", "seed"])
    sub = tmp_path / "configs"
    sub.mkdir()
    rel = sub / "rel.yaml"
    rel.write_text(yaml.safe_dump({**raw, "out": "../rel_study", "dump": {**raw["dump"], "seed": 0}}))
    r = run_cli("pipelines", "check", str(rel))
    assert r.returncode == 0, r.stderr
    assert str(tmp_path / "rel_study") in r.stdout and "relative to the config file" in r.stdout


def test_dump_redo_rewrites_one_document_and_refuses_one_not_in_the_plan(base, tmp_path):
    store = tmp_path / "run.zarr"
    shutil.copytree(base["store"], store)
    r = run_cli(
        "dump", "--model", base["model"], *SMALL, "--redo", "256,0.3,0", "--out", str(store), "--no-progress"
    )
    assert r.returncode == 0 and "1 documents written (1 already done)" in r.stdout, r.stdout + r.stderr
    for v in ("input_ids", "colsum", "answer_ids"):
        np.testing.assert_array_equal(
            zarr.open_group(str(store))["len_256"][v][:], zarr.open_group(base["store"])["len_256"][v][:]
        )
    one_sentence(
        run_cli("dump", "--model", base["model"], *SMALL, "--redo", "256,0.4,0", "--out", str(store)),
        2,
        ["--redo 256,0.4,0"],
    )


ABSURD = [
    "nan",
    "inf",
    "-inf",
    "-1",
    "0",
    "1e30",
    "99999999999999999999",
    "",
    "abc",
    "1e-30",
    "0.5,nan",
    "1,inf",
]


def _numbers(value) -> list:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [x for item in value for x in _numbers(item)]
    return []


def test_every_declared_option_refuses_out_of_range_non_finite_and_absurd_values():
    """Every option of the three stages, fed out-of-range, non-finite and absurd text, on the command
    line's path and the config's: either one refusal naming the option and the value, or a value
    whose every number is finite and below 1e9 (nothing that would allocate or loop without end)."""
    import math

    from analyze.options import AnalyzeOptions
    from core import optionkit
    from core.errors import UsageError
    from dump.options import DumpOptions
    from viz.options import VizOptions

    walked = 0
    for cls, section in ((DumpOptions, "dump"), (AnalyzeOptions, "analyze"), (VizOptions, "viz")):
        for f in optionkit.fields(cls):
            if f.metadata["flag"]:
                continue
            for text in ABSURD:
                walked += 1
                try:
                    value = optionkit._parse(f, text, optionkit.cli_name(f.name))
                except UsageError as err:
                    assert optionkit.cli_name(f.name) in str(err) and "\n" not in str(err), err
                    if f.metadata["config"]:  # `pipelines check` reads the same declaration
                        with pytest.raises(UsageError):
                            optionkit.from_mapping(cls, {f.name: text}, section, "config.yaml")
                    continue
                bad = [x for x in _numbers(value) if not math.isfinite(x) or abs(x) >= 1e9]
                assert not bad, f"{section} {f.name} accepted {text!r} as {value!r}"
    assert walked > 300


TORCH_OOM = (
    "CUDA out of memory. Tried to allocate 2.19 GiB. GPU 0 has a total capacity of 79.18 GiB of which "
    "956.69 MiB is free. Process 2370 has 18.04 GiB memory in use. Including non-PyTorch memory, this "
    "process has 8.08 GiB memory in use."
)


def _runs_out_of_gpu_memory():
    import torch

    raise torch.OutOfMemoryError(TORCH_OOM)


def test_a_gpu_out_of_memory_in_a_dask_task_ends_in_one_sentence(capsys):
    """torch's OutOfMemoryError raised in an answer worker (a Dask worker process) reaches the CLI as
    one sentence naming the allocation and what to lower, status 1, no traceback."""
    from types import SimpleNamespace

    from core import cluster
    from core.errors import run_main

    def body():
        with cluster.client_for(workers=1, verbose=False) as client:
            client.submit(_runs_out_of_gpu_memory, pure=False).result()
        return 0

    status = run_main("python -m analyze", body, resume="rerun the same command to resume")
    err = capsys.readouterr().err
    one_sentence(
        SimpleNamespace(returncode=status, stdout="", stderr=err),
        1,
        ["the GPU ran out of memory", "Tried to allocate 2.19 GiB", "--workers", "rerun the same command"],
    )
    assert "Process 2370" not in err
