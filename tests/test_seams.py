"""The three seams the next capabilities land on, each exercised by a toy registered from this file:
a task (what a document holds and how its answer is scored), a budget allocation (rank -> allocate
-> select over every prunable layer of a document) and a setting (which rows a policy may see)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import zarr

from analyze import budgets, engine, keptsets, policies
from analyze.policies import H2O, SnapKV
from analyze.policies.base import keep
from core import schema, settings, tasks
from core.runstore import DocLayer
from core.tasks import Document, Needle, Task, haystack, passkey
from tests.conftest import one_setting, run_cli

COLOURS = ("crimson", "turquoise", "ochre", "violet", "amber", "teal")


class Colour(Task):
    """A toy task: one colour word as the needle, asked for at the end."""

    name = "colour"
    templates = {"needle": "The secret colour is {colour}.", "question": "\n\nThe secret colour is"}

    def build(self, tokenizer, length, depth, rng, filler):
        index = int(rng.integers(len(COLOURS)))
        word = COLOURS[index]
        needle = self.templates["needle"].format(colour=word)
        f = haystack.fit(
            tokenizer,
            length,
            depth,
            haystack.filler_sentences(filler, rng),
            "",
            needle,
            self.templates["question"],
        )
        at = f.needle_at + needle.index(word)
        value = f.spans(at, at + len(word))
        sentence = f.spans(f.needle_at, f.needle_at + len(needle))
        return Document(
            f.input_ids,
            value,
            sentence,
            f.spans(f.question_at, len(f.text)),
            index,
            depth,
            depth,
            f.text,
            (Needle("secret colour", word, "target", passkey.runs(value)),),
        )


@pytest.fixture
def colour_task():
    tasks.register(Colour)
    try:
        yield tasks.get("colour")
    finally:
        tasks.REGISTRY.pop("colour", None)


def test_a_task_registered_from_outside_is_dumped_rebuilt_and_answered(
    colour_task, tiny_llama_dir, tmp_path, thread_client
):
    out = tmp_path / "colour.zarr"
    r = run_cli(
        "dump",
        "--model",
        tiny_llama_dir,
        "--task",
        "colour",
        "--lengths",
        "160",
        "--depths",
        "0.2,0.8",
        "--samples",
        "2",
        "--window",
        "8",
        "--block",
        "32",
        "--out",
        str(out),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    root = zarr.open_group(str(out), mode="r")
    assert (
        root.attrs["settings"]["task"] == "colour" and root.attrs["haystack"]["templates"] == Colour.templates
    )
    g = root[schema.group_name(160)]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    for d in range(2):
        for s in range(2):
            word = COLOURS[int(g["passkey"][d, s])]
            ids = np.asarray(g["input_ids"][d, s])
            assert tok.decode(ids[np.asarray(g["needle"][d, s])].tolist()).strip() == word
            text = tok.decode(np.asarray(g["answer_ids"][d, s]).tolist())
            assert bool(g["retrieved"][d, s]) == (word in text.replace(" ", ""))  # the task's rule
    # the answer pass rebuilds each document through the task and scores with its rule
    spec = engine.Spec((policies.default("full"), policies.default("h2o")), (0.5,), answers=True)
    ds, _ = engine.run(str(out), spec, thread_client, progress=False)
    ds = one_setting(ds)
    full = ds.answer.sel(policy="full", sparsity=0.5, length=160).values
    np.testing.assert_array_equal(full, np.asarray(g["retrieved"][:], dtype=np.float32))
    np.testing.assert_array_equal(
        ds.answer_ids.sel(policy="full", sparsity=0.5, length=160).values, g["answer_ids"][:]
    )
    # and a rebuild with another task's rule is caught: the passkey task does not make these prompts
    from analyze import answers

    attrs = dict(root.attrs)
    attrs["settings"] = {**attrs["settings"], "task": "passkey"}
    with pytest.raises(Exception, match="does not reproduce the stored input_ids"):
        answers.rebuild(tok, attrs, str(out), 160, 0, 0, np.asarray(g["input_ids"][0, 0]))


def test_the_passkey_task_lists_both_copies_as_answer_spans(tokenizer):
    doc = tasks.document(tokenizer, "passkey", 0, "ruler", 300, 0.5, 0, 0)
    (target,) = doc.needles
    assert target.role == "target" and target.value == str(doc.passkey) and len(target.spans) == 2
    first = np.flatnonzero(doc.needle)
    assert (first[0], first[-1] + 1) == target.spans[0]  # the stored `needle` is the first copy
    for a, b in target.spans:
        assert tokenizer.decode(doc.input_ids[a:b].tolist()).strip() == target.value
    assert tasks.get("passkey").score(f" {doc.passkey}. Remember", doc) == 1.0
    assert tasks.get("passkey").score(" 12", doc) == 0.0


@dataclasses.dataclass(frozen=True)
class FrontLoaded(budgets.Allocation):
    """A toy allocation: earlier prunable layers keep more, later ones less, heads equal within a
    layer; it records the layers it was shown."""

    seen: list = dataclasses.field(default_factory=list, compare=False)
    overspend: int = 0
    name = "front"

    def allocate(self, doc, k, policy):
        layers = [doc.layer(layer) for layer in doc.prunable]  # every prunable layer is there to read
        self.seen.append([x.n for x in layers])
        out = np.zeros((doc.layers, doc.heads), dtype=np.int64)
        m = min(k // 2, doc.n - k)
        shift = np.linspace(m, -m, len(doc.prunable)).round().astype(np.int64)
        shift -= shift.sum() // len(shift) if shift.sum() else 0
        for layer, delta in zip(doc.prunable, shift):
            out[layer] = k + delta
        out[doc.prunable[0]] += self.overspend
        return out


FRONT = FrontLoaded()


@dataclasses.dataclass(frozen=True)
class H2OFront(H2O):
    name = "h2o_front"
    allocation = FRONT


def test_a_budget_allocation_registered_from_outside_spreads_the_same_total(tiny_store, thread_client):
    policies.register(H2OFront)
    try:
        spec = engine.Spec((policies.default("h2o"), policies.default("h2o_front")), (0.5, 0.9))
        ds, _ = engine.run(tiny_store, spec, thread_client, progress=False)
        ds = one_setting(ds)
    finally:
        policies.REGISTRY.pop("h2o_front", None)
    kept = ds.kept.isel(depth=0, sample=0)
    for sp in (0.5, 0.9):
        for n in (200, 256):
            k = policies.budget(sp, n)
            front = kept.sel(policy="h2o_front", sparsity=sp, length=n).values  # (layer, head)
            flat = kept.sel(policy="h2o", sparsity=sp, length=n).values
            assert (flat == k).all()
            assert front.sum() == flat.sum() == 3 * 4 * k  # the fixed-budget total, spread otherwise
            assert front[0, 0] > k > front[-1, 0] and (front == front[:, :1]).all()
    assert FRONT.seen and all(len(layers) == 3 for layers in FRONT.seen)  # every prunable layer


def test_an_allocation_that_spends_another_total_is_an_error():
    rng = np.random.default_rng(0)
    final = rng.random((4, 64)).astype(np.float32)
    x = DocLayer(final_row=final, block=16, kv_heads=2, colsum=rng.random((4, 64)).astype(np.float32))
    doc = budgets.DocumentLayers(64, 2, 4, 2, (0, 1), lambda layer: x)

    @dataclasses.dataclass(frozen=True)
    class Greedy(H2O):
        name = "greedy"
        allocation = FrontLoaded(overspend=3)

    with pytest.raises(AssertionError, match="fixed-budget total"):
        budgets.allocate(Greedy(), doc, 16)
    b = budgets.allocate(H2OFront(), doc, 16)
    assert b.sum() == 2 * 4 * 16


class Blind(settings.Setting):
    """A toy setting: the observation window's rows are hidden from policies."""

    name = "blind"
    hides = ("window", "window_sum")

    def prune_after(self, n, question):
        return n - 1


@pytest.fixture
def blind():
    settings.register(Blind)
    try:
        yield settings.get("blind")
    finally:
        settings.REGISTRY.pop("blind", None)


def test_a_policy_cannot_read_rows_its_setting_hides(blind, tiny_store, thread_client):
    rng = np.random.default_rng(1)
    w = rng.random((4, 8, 64)).astype(np.float32)
    x = DocLayer(
        final_row=w[:, -1],
        block=16,
        kv_heads=2,
        observed=8,
        window=w,
        window_sum=w.sum(1),
        colsum=rng.random((4, 64)).astype(np.float32),
    )
    with pytest.raises(settings.HiddenRows, match="window_sum is hidden"):
        keep(SnapKV(), x, 16, setting=blind)
    # a policy reading nothing hidden is scored the same in both settings
    np.testing.assert_array_equal(
        keep(H2O(), x, 16, setting=blind), keep(H2O(), x, 16, setting=settings.get("aware"))
    )
    # and the engine refuses it before any work, naming what is hidden
    spec = engine.Spec((policies.default("snapkv"),), (0.5,), setting="blind")
    with pytest.raises(Exception, match="snapkv reads window, window_sum, which the blind setting hides"):
        engine.run(tiny_store, spec, thread_client, progress=False)
    ds, _ = engine.run(
        tiny_store,
        engine.Spec((policies.default("h2o"),), (0.5,), setting="blind"),
        thread_client,
        progress=False,
    )
    ds = one_setting(ds)
    assert ds.attrs["setting"] == "blind" and ds.attrs["settings"] == ["blind"]
    ks = keptsets.kept_sets_scored(ds, tiny_store, 256, 0, 0, 1)
    assert ks.attrs["setting"] == "blind"


class Early(settings.Setting):
    """A toy setting: the cache is pruned four tokens before the end of the prompt; those four are
    fed through the pruned cache in one forward (the query-agnostic setting's path)."""

    name = "early"

    def prune_after(self, n, question):
        return n - 4


def test_the_answer_pass_prunes_where_the_setting_says(tiny_store, thread_client):
    settings.register(Early)
    try:
        spec = engine.Spec((policies.default("full"), policies.default("h2o")), (0.5,), answers=True)
        aware, _ = engine.run(tiny_store, spec, thread_client, progress=False)
        early, _ = engine.run(
            tiny_store, dataclasses.replace(spec, setting="early"), thread_client, progress=False
        )
    finally:
        settings.REGISTRY.pop("early", None)
    g = zarr.open_group(tiny_store, mode="r")
    aware, early = one_setting(aware), one_setting(early)
    for n in (200, 256):
        dumped = g[schema.group_name(n)]["answer_ids"][:]
        for ds in (aware, early):  # every key kept: the model's own answer, wherever the prefill stops
            np.testing.assert_array_equal(
                ds.answer_ids.sel(policy="full", sparsity=0.5, length=n).values, dumped
            )
