"""The passkey task: a 5-digit number stated twice in one needle sentence, asked for at the end
(the classic "pass key retrieval" of Mohtashami & Jaggi 2023, as the NIAH harnesses use it).

The needle's value is a run of whole tokens; its first copy is RUN.zarr's `needle` mask, and both
copies are the spans an answer can be copied from. `retrieved` / `answer`: the answer's text, spaces
removed, contains the passkey's digits in order; `answer_digits` (`partial`): the fraction of its
digits the first run of digits in the answer reproduces in place.
"""

from __future__ import annotations

import re

import numpy as np

from core.tasks import Document, Needle, Task, haystack, register

HEADER = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about the important information there.\n\n"
)
NEEDLE = "The pass key is {passkey}. Remember it. {passkey} is the pass key."
QUESTION = "\n\nWhat is the pass key? The pass key is"


def make_passkey(rng: np.random.Generator, digits: int = 5) -> int:
    return int(rng.integers(10 ** (digits - 1), 10**digits))


def contains_passkey(text: str, passkey: int) -> bool:
    """The rule of `retrieved`: the answer's text, spaces removed, contains the passkey's digits in order."""
    return str(passkey) in text.replace(" ", "")


def digits_in_place(text: str, passkey: int) -> float:
    """Fraction of the passkey's digits reproduced in place by the first run of digits in the text."""
    want = str(passkey)
    m = re.search(r"\d+", text.replace(" ", ""))
    got = m.group(0) if m else ""
    return sum(a == b for a, b in zip(got, want)) / len(want)


def runs(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    """The [start, end) runs of True in a (key,) mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return tuple((int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]))


def build_document(tokenizer, length: int, depth: float, passkey: int, sentences: list[str]) -> Document:
    """A prompt of exactly `length` tokens (special tokens included) with the needle at `depth`."""
    needle = NEEDLE.format(passkey=passkey)
    f = haystack.fit(tokenizer, length, depth, sentences, HEADER, needle, QUESTION)
    key = str(passkey)
    copies = [f.needle_at + m.start() for m in re.finditer(re.escape(key), needle)]
    needle_mask = f.spans(copies[0], copies[0] + len(key))
    decoded = tokenizer.decode(f.input_ids[needle_mask].tolist()).strip()
    if not needle_mask.any() or decoded != key:
        raise haystack.HaystackError(
            f"the passkey {passkey} is not a run of whole tokens with this tokenizer "
            f"(its tokens decode to {decoded!r}): this model cannot be used for the passkey task"
        )
    sentence_mask = f.spans(f.needle_at, f.needle_at + len(needle))
    question_mask = f.spans(f.question_at, len(f.text))
    filler_tokens = f.spans(f.header_len, f.question_at) & ~sentence_mask
    first = int(np.flatnonzero(sentence_mask)[0])
    depth_actual = float(filler_tokens[:first].sum() / max(1, filler_tokens.sum()))
    spans = tuple(span for c in copies for span in runs(f.spans(c, c + len(key))))
    target = Needle(key="pass key", value=key, role="target", spans=spans)
    return Document(
        f.input_ids,
        needle_mask,
        sentence_mask,
        question_mask,
        passkey,
        depth,
        depth_actual,
        f.text,
        (target,),
    )


@register
class Passkey(Task):
    """One 5-digit passkey in repeated filler, asked for once."""

    name = "passkey"
    haystacks = ("noise", "essay")  # its document records no distractors
    summary = "one 5-digit pass key stated twice in one sentence (the classic passkey retrieval)"
    templates = {"header": HEADER, "needle": NEEDLE, "question": QUESTION}

    def build(self, tokenizer, length, depth, rng, filler) -> Document:
        passkey = make_passkey(rng)  # drawn before the filler order: documents as dumped since schema 1
        return build_document(tokenizer, length, depth, passkey, self.sentences(filler, rng, length))

    def score(self, text: str, doc: Document) -> float:
        return float(contains_passkey(text, doc.passkey))

    def partial(self, text: str, doc: Document) -> float:
        return digits_in_place(text, doc.passkey)
