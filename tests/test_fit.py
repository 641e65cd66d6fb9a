"""Prompts of exactly N tokens on every embedded tokenizer: every task, drawn lengths, depths and seeds.

Tokenizers only, no model. Each draw must give exactly the length asked, and every needle's token
spans must decode back to its value (targets and distractors alike)."""

from __future__ import annotations

import numpy as np
import pytest

from core import tasks

TOKENIZERS = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b")
SPECS = (
    "passkey",
    "single",
    "multikey:3",
    "multivalue:4",
    "multiquery:4",
    "single,haystack=needles",
    "multikey:3,haystack=needles",
    *(f"ruler:{name}" for name in tasks.RULER),
)
DRAWS = 200  # per tokenizer, spread over the tasks in turn


def draws(n: int, seed: int = 0, low: int = 256, high: int = 32768):
    """(task, length, depth, seed) draws: lengths log-uniform in [low, high], every task in turn."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        length = int(np.exp(rng.uniform(np.log(low), np.log(high))))
        yield SPECS[i % len(SPECS)], length, round(float(rng.uniform()), 6), int(rng.integers(10**6))


@pytest.fixture(scope="module", params=TOKENIZERS)
def named_tokenizer(request):
    from core.lm import models

    try:
        return request.param, models.load_tokenizer(request.param)
    except models.ModelUnavailable as err:
        pytest.skip(str(err))


def test_every_draw_is_exact_and_every_span_decodes(named_tokenizer):
    name, tok = named_tokenizer
    bad = []
    for spec, length, depth, seed in draws(DRAWS):
        doc = tasks.document(tok, spec, seed, "ruler", length, depth, 0, 0)
        if doc.length != length:
            bad.append((spec, length, depth, seed, f"{doc.length} tokens"))
        for needle in doc.needles:
            for a, b in needle.spans:
                text = tok.decode(doc.input_ids[a:b].tolist()).strip()
                if text != needle.value:
                    bad.append((spec, length, depth, seed, f"{needle.role} {needle.value!r} -> {text!r}"))
        if not doc.needle.any() or doc.input_ids.shape != (length,):
            bad.append((spec, length, depth, seed, "no needle tokens"))
    assert not bad, f"{name}: {len(bad)} bad draws, first {bad[:5]}"
