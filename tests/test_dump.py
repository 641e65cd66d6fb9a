"""The dump CLI end to end: store schema, resume, refusals, a SIGKILL at any moment, bad input."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from core import schema
from tests import conftest
from tests.conftest import ROOT, run_cli

# every stored variable of a document (the schema's, not a copy): the equality tests compare them all
VARS = [*schema.RUN_DOCUMENT, *schema.RUN_STATISTICS]


def dump_argv(model, out, *extra):
    """This module's reference dump: `conftest.dump_args`' documents of 256 and 300 tokens."""
    documents = conftest.dump_args("256,300", "0.2,0.8", samples=2, window=8, block=32)
    return ["dump", "--model", model, *documents, "--out", str(out), "--no-progress", *extra]


@pytest.fixture(scope="module")
def reference_store(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run.zarr"
    r = run_cli(*dump_argv(tiny_llama_dir, out))
    assert r.returncode == 0, r.stderr
    assert "8 documents written" in r.stdout
    return out


def test_schema_and_invariants(reference_store):
    root = zarr.open_group(str(reference_store), mode="r")
    for key in ("schema_version", "model", "model_config", "haystack", "capture", "software", "created"):
        assert key in root.attrs
    assert root.attrs["model_config"]["kv_heads"] == 2
    ds = xr.open_zarr(reference_store, group="len_300", consolidated=False)
    assert set(VARS) <= set(ds.data_vars)
    assert ds.sizes == {
        "depth": 2,
        "sample": 2,
        "layer": 3,
        "head": 4,
        "key": 300,
        "wq": 1,
        "qblock": 10,
        "kblock": 10,
        "dim": 8,
        "answer_token": 8,
    }
    assert list(ds.depth.values) == [0.2, 0.8]
    assert ds.done.all()
    assert np.allclose(ds.colsum.sum("key"), 300, rtol=1e-5)
    assert np.allclose(ds.blocks.sum(["qblock", "kblock"]), 300, rtol=1e-5)
    assert np.allclose(ds.window.astype("float32").sum("key"), 1, atol=2e-3)
    # upper-triangle blocks are causally empty
    b = ds.blocks.isel(depth=0, sample=0, layer=0, head=0).values
    assert np.all(np.triu(b, 1) == 0)
    # one chunk per document-layer
    assert ds.colsum.data.chunksize == (1, 1, 1, 4, 300)
    # each document has its own passkey
    assert len(set(ds.passkey.values.ravel())) == 4


def test_rerun_skips_done_documents(reference_store, tiny_llama_dir):
    r = run_cli(*dump_argv(tiny_llama_dir, reference_store))
    assert r.returncode == 0, r.stderr
    assert "0 documents written (8 already done)" in r.stdout


def test_other_settings_are_refused_then_overwritten(tiny_llama_dir, tmp_path):
    out = tmp_path / "run.zarr"
    assert run_cli(*dump_argv(tiny_llama_dir, out)).returncode == 0
    r = run_cli(*dump_argv(tiny_llama_dir, out, "--seed", "7"))
    assert r.returncode == 2
    assert "other settings" in r.stderr and "seed" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(*dump_argv(tiny_llama_dir, out, "--seed", "7", "--overwrite"))
    assert r.returncode == 0, r.stderr
    assert zarr.open_group(str(out), mode="r").attrs["settings"]["seed"] == 7


def _store_values(path):
    out = {}
    for group in ("len_256", "len_300"):
        ds = xr.open_zarr(path, group=group, consolidated=False)
        for v in VARS:
            out[(group, v)] = ds[v].values
    return out


def test_sigkill_at_any_moment_then_rerun_equals_uninterrupted(reference_store, tiny_llama_dir, tmp_path):
    out = tmp_path / "killed.zarr"
    rng = random.Random(0)
    cmd = [sys.executable, "-m", *dump_argv(tiny_llama_dir, out)]
    for _ in range(3):  # kill three times at random moments once writing has begun
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if any(Path(out).glob("len_*/colsum/c/*")):
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    r = run_cli(*dump_argv(tiny_llama_dir, out))
    assert r.returncode == 0, r.stderr
    got, ref = _store_values(out), _store_values(reference_store)
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=str(key))


def test_sharded_over_two_processes_equals_one_process(reference_store, tiny_llama_dir, tmp_path):
    """--devices shards documents one process per device into one store (two CPU processes here; the
    same code runs one process per GPU)."""
    out = tmp_path / "sharded.zarr"
    r = run_cli(*dump_argv(tiny_llama_dir, out, "--devices", "cpu,cpu"))
    assert r.returncode == 0, r.stderr
    assert "8 documents written" in r.stdout
    got, ref = _store_values(out), _store_values(reference_store)
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=str(key))


def test_full_matrices_for_chosen_layers(tiny_llama_dir, tmp_path):
    out = tmp_path / "full.zarr"
    r = run_cli(
        "dump",
        "--model",
        tiny_llama_dir,
        "--lengths",
        "200",
        "--depths",
        "0.5",
        "--window",
        "4",
        "--block",
        "16",
        "--store",
        "full",
        "--layers",
        "0,2",
        "--out",
        str(out),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    ds = xr.open_zarr(out, group="len_200", consolidated=False)
    assert list(ds.attn_layer.values) == [0, 2]
    a = ds.attn.isel(depth=0, sample=0).values.astype(np.float64)  # (attn_layer, head, query, key)
    assert np.allclose(a.sum(-1), 1, atol=3e-3)
    assert np.all(np.triu(a, 1) == 0)
    colsum = ds.colsum.isel(depth=0, sample=0).sel(layer=[0, 2]).values
    np.testing.assert_allclose(a.sum(-2), colsum, rtol=0, atol=0.05)


def test_store_size_of_full_is_refused_over_max_gb(tiny_llama_dir, tmp_path):
    out = tmp_path / "big.zarr"
    r = run_cli(
        "dump",
        "--model",
        tiny_llama_dir,
        "--lengths",
        "2k",
        "--store",
        "full",
        "--max-gb",
        "0.001",
        "--out",
        str(out),
    )
    assert r.returncode == 2 and "--max-gb" in r.stderr and not out.exists()


@pytest.mark.parametrize(
    "args,words",
    [
        (["--lengths", "4q"], "4q"),
        (["--depths", "1.5"], "1.5"),
        (["--samples", "0"], "--samples 0"),
        (["--filler", "lorem"], "lorem"),
        (["--out", "/proc/nope/run.zarr"], "not writable"),
        (["--lengths", "2k"], "exceed the 1024-token context"),
        (["--model", "no-such-model-xyz"], "no-such-model-xyz"),
        (["--block", "x"], "--block"),
        (["--layers", "1"], "--store full"),
        (["--devices", "cuda:0,cuda:1"], "CUDA is not available"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(tiny_gpt2_dir, tmp_path, args, words):
    out = tmp_path / "bad.zarr"
    base = ["dump", "--model", tiny_gpt2_dir, "--lengths", "256", "--out", str(out)]
    r = run_cli(*base, *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_help_lists_every_option():
    r = run_cli("dump", "--help")
    assert r.returncode == 0
    for flag in (
        "--model",
        "--lengths",
        "--depths",
        "--samples",
        "--seed",
        "--filler",
        "--window",
        "--block",
        "--store",
        "--layers",
        "--out",
        "--device",
        "--dtype",
        "--overwrite",
        "--max-gb",
    ):
        assert flag in r.stdout


@pytest.mark.slow
def test_embedded_smollm2_dump_retrieves_the_passkey(smol_store):
    """The real model, short prompts: the model answers with the passkey under full attention."""
    ds = xr.open_zarr(smol_store, group="len_512", consolidated=False)
    assert ds.sizes["layer"] == 30 and ds.sizes["head"] == 9
    assert bool(ds.retrieved.isel(depth=0, sample=0))  # the document of depth 0.3, sample 0
    # retrieval heads exist: some head's final row puts real mass on the passkey
    final = ds.window.isel(depth=0, sample=0, wq=-1).astype("float32")
    mass = final.where(ds.needle.isel(depth=0, sample=0), 0).sum("key")
    assert float(mass.max()) > 0.3


def test_a_document_depends_on_its_depth_value_not_its_place_in_the_grid(tiny_llama_dir, tmp_path):
    """RUN 2.2: the document at depth 0.5 is the same in a plan of depths 0.2,0.5,0.8 and of 0.5 alone
    (before, its passkey and filler were seeded by the depth's index in the grid)."""
    grid, alone = tmp_path / "grid.zarr", tmp_path / "alone.zarr"
    common = ["--lengths", "160", "--samples", "2", "--window", "8", "--block", "32", "--no-progress"]
    for out, depths in ((grid, "0.2,0.5,0.8"), (alone, "0.5")):
        r = run_cli("dump", "--model", tiny_llama_dir, "--depths", depths, *common, "--out", str(out))
        assert r.returncode == 0, r.stderr
    a = xr.open_zarr(grid, group="len_160", consolidated=False).sel(depth=0.5)
    b = xr.open_zarr(alone, group="len_160", consolidated=False).sel(depth=0.5)
    for v in VARS:  # the document and every statistic of it
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    assert zarr.open_group(str(grid), mode="r").attrs["schema_version"] == schema.RUN_VERSION == "2.5"


def test_stores_before_2_2_are_rebuilt_by_the_depth_index(tokenizer):
    """The answer pass rebuilds a store's documents by the rule it was dumped with."""
    from core import tasks
    from core.tasks import haystack, passkey

    assert schema.seeds_by_depth_index("2.1") and schema.seeds_by_depth_index("1.0")
    assert not schema.seeds_by_depth_index("2.2")
    old = tasks.document(tokenizer, "passkey", 0, "ruler", 200, 0.5, 1, 0, by_index=True)
    rng = np.random.default_rng([0, 200, 1, 0])  # the rule as it was written for schema <= 2.1
    key = passkey.make_passkey(rng)
    want = passkey.build_document(tokenizer, 200, 0.5, key, haystack.filler_sentences("ruler", rng))
    np.testing.assert_array_equal(old.input_ids, want.input_ids)
    new = tasks.document(tokenizer, "passkey", 0, "ruler", 200, 0.5, 1, 0)
    assert new.passkey == passkey.make_passkey(haystack.document_rng(0, 200, 0.5, 0))


def test_bytes_per_document_add_up_to_the_store_and_the_summary_prints_them(tiny_store):
    """Every variable's stored bytes per finished document, per length: together they are the store's
    chunk bytes over its documents (what a study's disk is planned from)."""
    from pathlib import Path

    from dump.store import bytes_per_document, sizes_line

    sizes = bytes_per_document(tiny_store)
    assert sorted(sizes) == [200, 256]
    for n, per in sizes.items():
        group = Path(tiny_store) / f"len_{n}"
        total = sum(
            f.stat().st_size for v in group.iterdir() if v.is_dir() for f in v.rglob("*") if f.is_file()
        )
        assert abs(sum(per.values()) * 4 - total) < 1e-6 * total  # 2 depths x 2 samples, all done
        assert {"colsum", "window", "blocks", "input_ids"} <= set(per) and list(per.values()) == sorted(
            per.values(), reverse=True
        )
    line = sizes_line(tiny_store)
    assert line.startswith("dump: per document: 200 tokens") and "256 tokens" in line


def test_release_drops_the_model_a_process_keeps(tiny_llama_dir):
    """`models.release` (a pipeline's process, done dumping): the next `load` loads anew, and the
    released model is no longer referenced by the loader."""
    import gc
    import weakref

    from core.lm import models

    first = models.load(tiny_llama_dir)
    assert models.load(tiny_llama_dir) is first  # kept while not released
    gone = weakref.ref(first.model)
    del first
    models.release()
    gc.collect()
    assert gone() is None
    again = models.load(tiny_llama_dir)
    assert again.model is not None
    models.release()


def test_raw_bytes_of_a_shape_equal_the_arrays_a_dump_creates(tiny_store):
    """`bench/store_bytes_shape.py` (the cost of a shape no machine here dumps): its raw bytes per
    document, from the schema alone, equal the uncompressed bytes of the arrays the dump created."""
    import importlib.util
    from pathlib import Path

    import zarr

    from core import schema

    path = Path(__file__).resolve().parent.parent / "bench" / "store_bytes_shape.py"
    spec = importlib.util.spec_from_file_location("store_bytes_shape", path)
    sb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sb)
    root = zarr.open_group(tiny_store, mode="r")
    cfg, st = dict(root.attrs["model_config"]), dict(root.attrs["settings"])
    for n in schema.lengths_in(root):
        g = root[schema.group_name(n)]
        docs = g["done"].size
        raw = sb.raw_bytes(
            cfg, n, int(g.attrs["block"]), int(st["window"]), st["store"], int(st["window_rows"])
        )
        want = {
            v: g[v].nbytes // docs for v in g.array_keys() if g[v].ndim >= 2 and g[v].dtype.kind in "biuf"
        }
        assert raw == want
