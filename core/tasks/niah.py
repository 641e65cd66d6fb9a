"""RULER's needle-in-a-haystack family, shared by `single`, `multikey`, `multivalue` and `multiquery`.

Follows RULER (Hsieh et al. 2024, "RULER: What's the Real Context Size of Your Long-Context
Language Models?", arXiv:2404.06654; NVIDIA/RULER `scripts/data/synthetic/niah.py`, whose templates
these are, and `scripts/synthetic.yaml`, whose named configurations `core.tasks.RULER` lists):
- the needle: "One of the special magic {numbers} for {key} is: {value}.", one value per needle;
- keys and values of a type (`core.tasks.values`): words, 7-digit numbers or UUIDs;
- the question asks for every value of the query key(s) and ends with the answer cue;
- `score` is RULER's string_match_all: the fraction of the expected values the answer contains
  (case-insensitive); for one value it is 1 or 0.

The lab's depth axis places the first target needle at the requested depth; every other needle
(a distractor, another value, another queried key) goes at a depth drawn from the document's own
generator, at a sentence start no other needle took, so that no needle ever splits another.
"""

from __future__ import annotations

import re

import numpy as np

from core.tasks import Document, Needle, Task, haystack, values
from core.tasks.passkey import runs

HEADER = (
    "Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kind} afterwards.\n"
)
NEEDLE = "One of the special magic {kind} for {key} is: {value}."
QUESTION = (
    "\nWhat are all the special magic {kind} for {query} mentioned in the provided text? "
    "The special magic {kind} for {query} mentioned in the provided text {verb}"
)
# greedy tokens an answer gets per value: its tokens (SmolLM2 and Gemma 3 split digits one by one)
# and a separator
TOKENS_PER_VALUE = {"number": 10, "word": 12, "uuid": 48}


def query_text(keys: list[str]) -> str:
    """RULER's query: `a`, `a and b`, `a, b, and c`."""
    if len(keys) == 1:
        return keys[0]
    return ", ".join(keys[:-1]) + (", and " if len(keys) > 2 else " and ") + keys[-1]


class Niah(Task):
    """A RULER needle task: subclasses say which needles a document holds (`needles_of`)."""

    typed = True
    templates = {"header": HEADER, "needle": NEEDLE, "question": QUESTION}

    def needles_of(self, rng: np.random.Generator) -> tuple[list, list, list]:
        """(targets [(key, value)], distractors [(key, value)], the keys the question asks for)."""
        raise NotImplementedError  # pragma: no cover - interface

    def expected_count(self) -> int:
        return 1

    @property
    def answer_tokens(self) -> int:  # type: ignore[override]
        return self.expected_count() * TOKENS_PER_VALUE[self.value_type] + 2

    def build(self, tokenizer, length, depth, rng, filler) -> Document:
        targets, distractors, asked = self.needles_of(rng)
        kind = values.PLURAL[self.value_type]
        pairs = targets + distractors
        texts = [NEEDLE.format(kind=kind, key=k, value=v) for k, v in pairs]
        placed = [(depth, texts[0])] + [(float(d), t) for d, t in zip(rng.random(len(texts) - 1), texts[1:])]
        sentences = self.sentences(filler, rng, length)
        verb = "is" if len(targets) == 1 else "are"
        question = QUESTION.format(kind=kind, query=query_text(asked), verb=verb)
        f = haystack.fit_many(tokenizer, length, placed, sentences, HEADER.format(kind=kind), question)
        needles = []
        for i, ((key, value), at, text) in enumerate(zip(pairs, f.needles_at, texts)):
            role = "target" if i < len(targets) else "distractor"
            needles.append(
                Needle(key, value, role, value_spans(tokenizer, f, at + text.rindex(value), value))
            )
        if (
            self.haystack == "needles"
        ):  # the haystack's own needles are distractors too (RULER's multikey_2/3)
            pattern = re.escape(NEEDLE).replace(r"\{kind\}", re.escape(kind))
            pattern = pattern.replace(r"\{key\}", r"(?P<key>\S+)").replace(
                r"\{value\}", r"(?P<value>[^\s.]+(?:\.[^\s.]+)*)"
            )
            placed_at = set(f.needles_at)
            for m in re.finditer(pattern, f.text):
                if m.start() in placed_at or m.start() < f.header_len or m.end() > f.question_at:
                    continue
                spans = value_spans(tokenizer, f, m.start("value"), m.group("value"), strict=False)
                if spans:
                    needles.append(Needle(m.group("key"), m.group("value"), "distractor", spans))
        sentence = f.spans(f.needles_at[0], f.needles_at[0] + len(texts[0]))
        first = needles[0].spans[0]
        needle_mask = np.zeros(length, dtype=bool)
        needle_mask[first[0] : first[1]] = True
        placed_mask = np.zeros(length, dtype=bool)
        for at, text in zip(f.needles_at, texts):
            placed_mask |= f.spans(at, at + len(text))
        filler_tokens = f.spans(f.header_len, f.question_at) & ~placed_mask
        start = int(np.flatnonzero(sentence)[0])
        value = targets[0][1]
        return Document(
            f.input_ids,
            needle_mask,
            sentence,
            f.spans(f.question_at, len(f.text)),
            int(value) if value.isdigit() else -1,
            depth,
            float(filler_tokens[:start].sum() / max(1, filler_tokens.sum())),
            f.text,
            tuple(needles),
        )

    def score(self, text: str, doc: Document) -> float:
        """RULER's string_match_all: the fraction of expected values in the answer, case-insensitive."""
        want = doc.expected
        low = text.lower()
        return sum(v.lower() in low for v in want) / max(1, len(want))


def value_spans(tokenizer, f, start: int, value: str, strict: bool = True) -> tuple[tuple[int, int], ...]:
    """The token runs holding the value's characters; each must decode back to the value (else the
    tokenizer merges it with its neighbours and the task refuses this model: `strict`; or the needle
    is left out: a haystack needle)."""
    spans = runs(f.spans(start, start + len(value)))
    for a, b in spans:
        decoded = tokenizer.decode(f.input_ids[a:b].tolist()).strip()
        if decoded != value:
            if not strict:
                return ()
            raise haystack.HaystackError(
                f"the value {value!r} is not a run of whole tokens with this tokenizer (its tokens decode to "
                f"{decoded!r}): choose another --needle-type for this model"
            )
    return spans
