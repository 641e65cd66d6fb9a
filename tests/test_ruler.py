"""RULER's needle tasks: placement, spans, scoring, task specs (core.tasks)."""

import re

import numpy as np
import pytest

from core import tasks
from core.tasks import niah
from tests.conftest import run_cli

SPECS = [
    "single",
    "multikey:3",
    "multivalue:4",
    "multiquery:2,value=uuid,haystack=essay",
    "single,value=word,haystack=noise",
    "ruler:niah_multikey_2",
]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_needles_placed_without_overlap_with_exact_spans(tokenizer, spec, depth):
    task = tasks.get(spec)
    doc = tasks.document(tokenizer, spec, 3, "ruler", 1024, depth, 0, 1)
    assert doc.length == 1024
    targets = [x for x in doc.needles if x.role == "target"]
    assert len(targets) == (task.count if task.name in ("multivalue", "multiquery") else 1)
    if task.name == "multikey":
        assert sum(x.role == "distractor" for x in doc.needles) == task.count
    # every span of every needle decodes back to its value, and spans never overlap
    owner = np.full(doc.length, -1)
    for i, x in enumerate(doc.needles):
        assert x.spans
        for a, b in x.spans:
            assert tokenizer.decode(doc.input_ids[a:b].tolist()).strip() == x.value
            assert (owner[a:b] == -1).all()
            owner[a:b] = i
    # whole needle sentences never overlap: each one is in the text exactly where it was put
    kind = re.escape(niah.values.PLURAL[task.value_type])
    sentences = [
        m.span() for m in re.finditer(rf"One of the special magic {kind} for \S+ is: \S+\.", doc.text)
    ]
    for x in doc.needles:
        found = [s for s in sentences if f"for {x.key} is: {x.value}." in doc.text[s[0] : s[1]]]
        assert len(found) >= 1
    starts = sorted(s for s in sentences)
    assert all(a[1] <= b[0] for a, b in zip(starts, starts[1:]))
    # the masks RUN.zarr stores follow from the needles
    assert (
        doc.target
        == (owner >= 0) & np.isin(owner, [i for i, x in enumerate(doc.needles) if x.role == "target"])
    ).all()
    assert not (doc.target & doc.distractor).any() and not (doc.question & (owner >= 0)).any()
    assert tasks.needles_from_table(doc.needle_table) == doc.needles


def test_the_first_target_follows_the_depth(tokenizer):
    starts = [
        np.flatnonzero(tasks.document(tokenizer, "multikey:3", 0, "ruler", 1024, d, 0, 0).needle)[0]
        for d in (0.1, 0.5, 0.9)
    ]
    assert starts[0] < starts[1] < starts[2]


def test_ruler_scoring_is_string_match_all(tokenizer):
    doc = tasks.document(tokenizer, "multivalue:4", 0, "ruler", 600, 0.5, 0, 0)
    task = tasks.get("multivalue:4")
    a, b, c, d = doc.expected
    assert task.score(f" {a}, {b}, {c} and {d}.", doc) == 1.0
    assert task.score(f" {a.upper()} and {c}", doc) == 0.5  # case-insensitive, a fraction
    assert task.score(" none of them", doc) == 0.0
    one = tasks.document(tokenizer, "single,value=uuid", 0, "ruler", 600, 0.5, 0, 0)
    assert tasks.get("single,value=uuid").score(f"is {one.expected[0].upper()}.", one) == 1.0
    # the passkey keeps its rule: digits in order, spaces removed
    pk = tasks.document(tokenizer, "passkey", 0, "ruler", 300, 0.5, 0, 0)
    assert tasks.get("passkey").score(" ".join(str(pk.passkey)), pk) == 1.0


def test_specs_canonical_and_ruler_names():
    assert tasks.get("ruler:niah_multikey_1").label == "multikey:3,haystack=essay"
    assert tasks.get("ruler:niah_multikey_3").label == "single,key=uuid,value=uuid,haystack=needles"
    assert tasks.parse_task("multikey") == "multikey:3"
    assert tasks.with_options("multivalue:2", "uuid", "needles") == "multivalue:2,value=uuid,haystack=needles"
    assert tasks.get("passkey").label == "passkey"  # RUN.zarr's task of every passkey store so far


@pytest.mark.parametrize(
    "args, words",
    [
        (["--task", "multikey:0"], "count from 1 to 16"),
        (["--task", "passkey:2"], "takes no count"),
        (["--task", "single,value=float"], "value='float'"),
        (["--task", "ruler:niah_nope"], "unknown RULER task"),
        (["--task", "nosuch"], "unknown task 'nosuch'"),
        (["--task", "single,colour=red"], "is not key=, value= or haystack="),
        (["--task", "passkey", "--needle-type", "uuid"], "has no type to choose"),
        (["--task", "single", "--haystack", "hay"], "--haystack"),
    ],
)
def test_bad_task_strings_one_sentence_exit_2_nothing_written(tmp_path, args, words):
    out = tmp_path / "run.zarr"
    r = run_cli("dump", *args, "--lengths", "256", "--out", str(out), "--no-progress")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_list_tasks():
    r = run_cli("dump", "--list-tasks")
    assert r.returncode == 0 and "ruler:niah_multivalue" in r.stdout and "multikey:COUNT" in r.stdout
