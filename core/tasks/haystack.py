"""Haystacks of an exact token length, for every task (`core.tasks`).

A prompt is: the task's header, a haystack of filler sentences with the task's needle text inserted
at the sentence boundary nearest the requested depth (0 = start of the haystack, 1 = its end), then
the task's question ending with the answer cue. `fit` finds the haystack cut that makes the prompt
exactly N tokens; token spans come from the offset mapping of the *whole* prompt (`spans`), never
from re-tokenizing a substring (leading-space and BOS tokens break that).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import UsageError

RULER_SENTENCES = [
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
]

NATURE_SENTENCES = [
    "Rivers carve their valleys over thousands of years.",
    "A heron waits motionless at the edge of the reeds.",
    "Moss grows thickest on the shaded side of old oaks.",
    "The tide pulls back to reveal pools full of small crabs.",
    "Bees visit the clover long after the dew has dried.",
    "Snow settles quietly on the branches of the pine forest.",
    "Thunderclouds gather above the hills in late summer.",
    "A fox crosses the meadow just before dawn.",
    "Ferns unfurl slowly in the damp spring air.",
    "The desert cools quickly once the sun goes down.",
    "Salmon swim upstream against the strong current.",
    "Lichen paints the granite boulders orange and grey.",
    "Wind ripples across the wheat like waves on a lake.",
    "An owl calls twice from somewhere in the dark woods.",
    "Coral reefs shelter thousands of species of fish.",
    "The glacier creaks as it slides toward the sea.",
    "Fireflies blink above the pond on warm evenings.",
    "Autumn leaves drift down and cover the forest path.",
    "A woodpecker drums on a hollow birch trunk.",
    "Morning fog hides the far side of the valley.",
    "Seeds of the dandelion float away on the breeze.",
    "The river delta spreads out into a maze of channels.",
    "Wolves travel many miles in a single night.",
    "Mushrooms appear overnight after the first autumn rain.",
    "The mountain lake reflects the peaks around it.",
    "Sparrows bathe in the dust of the dry road.",
    "Old trees fall and feed the soil for new ones.",
    "The monsoon brings the dry plains back to life.",
    "Dragonflies hunt mosquitoes above the still water.",
    "Frost draws feathered patterns on the window glass.",
    "The cactus stores water for the long dry season.",
    "Geese fly south in a long uneven line.",
    "Tall grasses bend under the weight of the rain.",
    "A beaver dam slows the stream into a quiet pond.",
    "Stars appear one by one above the silent dunes.",
    "Whales sing to each other across the open ocean.",
    "The volcano has slept for more than a century.",
    "Butterflies gather on the wet sand by the creek.",
    "Cold springs bubble up from under the limestone.",
    "The forest smells of resin after a summer storm.",
]

FILLERS = ("ruler", "nature")


class HaystackError(UsageError):
    """A document that cannot be built as asked (user-facing)."""


def parse_filler(value: str) -> str:
    """A filler name or an existing text file path; raise HaystackError otherwise."""
    if value in FILLERS:
        return value
    if Path(value).is_file():
        read_filler(value)  # refused now, before any work, if it is not UTF-8 text with sentences
        return value
    raise HaystackError(
        f"unknown filler {value!r}: use one of {', '.join(FILLERS)} or the path of a text file"
    )


def filler_digest(path: str) -> str:
    """sha256 of a filler file's bytes: a store records it, and a filler edited since is refused."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


MIN_SENTENCES = 2  # a needle is placed at a sentence start: one sentence allows depth 0 only


def read_filler(path: str) -> list[str]:
    """A filler file's sentences: UTF-8 text (no NUL bytes) of at least `MIN_SENTENCES` sentences
    ending in . ! or ?, else one sentence saying what is wrong."""
    data = Path(path).read_bytes()
    if b"\x00" in data:
        raise HaystackError(f"filler file {path!r} is binary (it holds NUL bytes): give a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise HaystackError(
            f"filler file {path!r} is not UTF-8 (byte {err.start} is {data[err.start : err.start + 1]!r}): "
            f"convert it, e.g. with iconv -t utf-8"
        ) from None
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s.strip()]
    ends = sum(1 for s in sentences if s[-1] in ".!?")
    if ends < MIN_SENTENCES:
        raise HaystackError(
            f"filler file {path!r} holds {ends} sentence(s) ending in . ! or ?: a needle is placed at a "
            f"sentence start, so give text of at least {MIN_SENTENCES} sentences"
        )
    return sentences


def filler_sentences(filler: str, rng: np.random.Generator) -> list[str]:
    """The sentence pool of a filler, in the order the haystack uses them."""
    if filler == "ruler":
        return list(RULER_SENTENCES)
    if filler == "nature":
        return [NATURE_SENTENCES[i] for i in rng.permutation(len(NATURE_SENTENCES))]
    return read_filler(filler)


def document_rng(seed: int, length: int, depth: float, sample: int) -> np.random.Generator:
    """Each document's randomness depends only on its coordinates (seed, length, depth value,
    sample): resumable, order-free, and the same document at depth 0.5 whatever the other depths of
    the plan (depths are read to 6 decimals)."""
    return np.random.default_rng([seed, length, int(round(depth * 10**6)), sample])


def document_rng_by_index(seed: int, length: int, depth_index: int, sample: int) -> np.random.Generator:
    """The rule of RUN stores before schema 2.2: the depth's *index* in the plan's grid (kept to
    rebuild their documents)."""
    return np.random.default_rng([seed, length, depth_index, sample])


def _long_haystack(sentences: list[str], min_chars: int) -> str:
    reps = max(1, -(-min_chars // max(1, len(" ".join(sentences)))) + 1)
    return " ".join(sentences * reps)


def _insert_needle(haystack: str, depth: float, needle: str) -> tuple[str, int]:
    """Insert at the sentence start nearest depth · len(haystack); returns (text, needle char start)."""
    starts = [0] + [m.end() for m in re.finditer(r"(?<=[.!?]) ", haystack)] + [len(haystack)]
    at = min(starts, key=lambda s: (abs(s - depth * len(haystack)), s))
    if at == 0:
        return needle + (" " + haystack if haystack else ""), 0
    if at == len(haystack):
        return haystack + " " + needle, len(haystack) + 1
    return haystack[:at] + needle + " " + haystack[at:], at


def _spans(offsets: np.ndarray, start: int, end: int) -> np.ndarray:
    """Tokens whose character span overlaps [start, end); special tokens (0, 0) never do."""
    return (offsets[:, 0] < end) & (offsets[:, 1] > start) & (offsets[:, 1] > offsets[:, 0])


@dataclass(frozen=True)
class Fitted:
    """A prompt of exactly `length` tokens: its text, ids, per-token character offsets, and where the
    needle text and the question start in the text."""

    text: str
    input_ids: np.ndarray  # (key,) int32
    offsets: np.ndarray  # (key, 2) character span of each token; (0, 0) for special tokens
    needle_at: int
    question_at: int
    header_len: int
    needles_at: tuple[int, ...] = ()  # every needle's char start (`fit_many`)

    def spans(self, start: int, end: int) -> np.ndarray:
        """(key,) bool: the tokens whose characters overlap [start, end) of the text."""
        return _spans(self.offsets, start, end)


def fit(
    tokenizer, length: int, depth: float, sentences: list[str], header: str, needle: str, question: str
) -> Fitted:
    """The prompt header + haystack (needle inserted at `depth`) + question of exactly `length` tokens
    (special tokens included), by cutting the haystack at a word boundary (inside a word if need be)."""

    def render(hay: str) -> tuple[str, int]:
        hay, at = _insert_needle(hay, depth, needle)
        return header + hay + question, len(header) + at

    text, at, ids, offsets = _fit(
        tokenizer, length, _long_haystack(sentences, 8 * length + 64), render, question
    )
    return Fitted(text, ids, offsets, at, len(text) - len(question), len(header))


def _insert_needles(haystack: str, placed: list[tuple[float, str]]) -> tuple[str, list[int]]:
    """Several needles, each at the sentence start nearest its depth that no other needle took (the
    nearest free one; a shared start only when the haystack has fewer starts than needles), so that
    no needle ever splits another. Returns (text, each needle's char start, in the order given)."""
    if len(placed) == 1:
        text, at = _insert_needle(haystack, placed[0][0], placed[0][1])
        return text, [at]
    starts = [0] + [m.end() for m in re.finditer(r"(?<=[.!?]) ", haystack)] + [len(haystack)]
    taken: dict[int, int] = {}
    where = []
    for i, (depth, _) in enumerate(placed):
        at = min(
            [s for s in starts if s not in taken] or starts, key=lambda s: (abs(s - depth * len(haystack)), s)
        )
        taken[at] = i
        where.append(at)
    pieces, prev, out_at = [], 0, [0] * len(placed)
    size = 0
    for i in sorted(range(len(placed)), key=lambda i: (where[i], i)):
        at, needle = where[i], placed[i][1]
        piece = haystack[prev:at]
        if at == len(haystack) and haystack:
            out_at[i] = size + len(piece.rstrip()) + 1
            piece = piece.rstrip() + " " + needle
        elif at == 0 and prev == 0:
            out_at[i] = size
            piece = needle + (" " if haystack else "")
        else:
            out_at[i] = size + len(piece)
            piece = piece + needle + " "
        pieces.append(piece)
        size += len(piece)
        prev = at
    pieces.append(haystack[prev:])
    return "".join(pieces).rstrip(), out_at


def fit_many(
    tokenizer,
    length: int,
    placed: list[tuple[float, str]],
    sentences: list[str],
    header: str,
    question: str,
) -> Fitted:
    """`fit` with several needles, each (depth, text); `Fitted.needles_at` holds their char starts
    (`needle_at` is the first's)."""

    def render(hay: str) -> tuple[str, list[int]]:
        hay, at = _insert_needles(hay, placed)
        return header + hay + question, [len(header) + a for a in at]

    text, at, ids, offsets = _fit(
        tokenizer, length, _long_haystack(sentences, 8 * length + 64), render, question
    )
    return Fitted(text, ids, offsets, at[0], len(text) - len(question), len(header), tuple(at))


def _fit(tokenizer, length: int, long_hay: str, render, question: str):
    """The cut of `long_hay` whose rendered prompt (`render(haystack) -> (text, needle starts)`) is
    exactly `length` tokens: (text, needle starts, ids, offsets). The cut is the last word boundary
    whose prompt has at most `length` tokens (inside the next word if need be); any prefix of the
    same haystack gives the same cut, so `long_hay` only has to be long enough."""

    def encode(cut: int, offsets: bool = False):
        return tokenizer(
            render(long_hay[:cut].rstrip())[0], add_special_tokens=True, return_offsets_mapping=offsets
        )

    def count(cut: int) -> int:
        return len(encode(cut)["input_ids"])

    fixed = count(0)
    if fixed > length:
        raise HaystackError(
            f"length {length} is too short: the header, needle and question alone take {fixed} tokens"
        )
    # one tokenization of (enough of) the haystack alone brackets the cut: a 128k prompt then needs a
    # handful of full tokenizations, not 25; a filler of very long tokens doubles the haystack
    size = min(len(long_hay), 6 * length + 256)
    while True:
        offsets = tokenizer(long_hay[:size], add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        if (
            len(offsets) + fixed >= length + 64
            or size >= len(long_hay)
            and count(len(long_hay)) >= length + 1
        ):
            break
        if size >= len(long_hay):
            long_hay = long_hay + " " + long_hay
        size = min(len(long_hay), 2 * size)
    # word boundaries are cut candidates; the token count grows monotonically with them
    cuts = [0] + [m.start() for m in re.finditer(r" ", long_hay)] + [len(long_hay)]
    target = length - fixed  # haystack tokens wanted; refine by the observed error (tokens merge at joins)
    j = 0
    for _ in range(3):
        guess = offsets[max(0, min(len(offsets), target) - 1)][1]
        j = min(len(cuts) - 1, bisect.bisect_left(cuts, guess))
        error = length - count(cuts[j])
        if error == 0:
            break
        target += error
    if error == 0 and (j == len(cuts) - 1 or count(cuts[j + 1]) > length):
        lo = j  # the last boundary at `length`: what the search below finds
    else:
        lo, hi = max(0, j - 2), min(len(cuts) - 1, j + 2)
        while lo > 0 and count(cuts[lo]) > length:
            lo = max(0, lo - 256)
        while hi < len(cuts) - 1 and count(cuts[hi]) <= length:
            hi = min(len(cuts) - 1, hi + 256)
        # invariant: count(cuts[lo]) <= length < count(cuts[hi]), or hi is the end of the haystack
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if count(cuts[mid]) <= length:
                lo = mid
            else:
                hi = mid
    cut = cuts[lo]
    if count(cut) != length:  # the next word holds several tokens: cut inside it
        for c in range(cuts[lo] + 1, cuts[min(len(cuts) - 1, lo + 1)] + 1):
            if count(c) == length:
                cut = c
                break
        else:  # every cut jumps past `length` (tokens merge across a join): pad at the token level
            return _padded(tokenizer, length, long_hay, render, question, cuts[lo])
    text, needle_at = render(long_hay[:cut].rstrip())
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    if ids.shape[0] != length:
        raise HaystackError(
            f"the tokenizer gives {ids.shape[0]} tokens for a prompt cut at {length}: it does not "
            f"tokenize a prefix of the text as a prefix of the ids; try another --filler"
        )
    return text, needle_at, ids, offsets


def _padded(tokenizer, length: int, long_hay: str, render, question: str, cut: int):
    """A prompt of exactly `length` tokens where no character cut gives one (the count jumps by two
    or more where the haystack meets the question). The context (header, haystack and needles:
    `render` at the largest cut below `length`) and the question are tokenized apart, and the gap
    is filled with the haystack's own next tokens, tokenized alone: exact by construction. Each token
    keeps its character span in the joined text, so needle spans come out as for any prompt."""
    while True:
        hay = long_hay[:cut].rstrip()
        text, needle_at = render(hay)
        context = text[: len(text) - len(question)]
        ctx = tokenizer(context, add_special_tokens=True, return_offsets_mapping=True)
        q = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
        gap = length - len(ctx["input_ids"]) - len(q["input_ids"])
        if gap >= 0 or cut == 0:
            break
        cut = max(0, long_hay.rfind(" ", 0, max(0, len(hay) - 1)))  # a word back
    rest = long_hay[len(hay) :]
    pad = tokenizer(rest, add_special_tokens=False, return_offsets_mapping=True)
    if gap < 0 or len(pad["input_ids"]) < gap:
        raise HaystackError(
            f"length {length} is too short: the header, needles and question alone take {length - gap} tokens"
        )
    pad_text = rest[: int(pad["offset_mapping"][gap - 1][1])] if gap else ""

    def spans(enc, n, shift):
        return np.asarray(enc["offset_mapping"][:n], dtype=np.int64).reshape(-1, 2) + shift

    ids = np.asarray(
        list(ctx["input_ids"]) + list(pad["input_ids"][:gap]) + list(q["input_ids"]), dtype=np.int32
    )
    offsets = np.concatenate(
        [
            spans(ctx, len(ctx["input_ids"]), 0),
            spans(pad, gap, len(context)),
            spans(q, len(q["input_ids"]), len(context) + len(pad_text)),
        ]
    )
    return context + pad_text + question, needle_at, ids, offsets


MAX_DEPTHS = 1000  # depths per length: a study's grid is 5-35; more is a typo


def parse_depths(value: str) -> list[float]:
    """`0.1,0.5,0.9`, or `linspace:START,STOP,COUNT`, or `sigmoid:START,STOP,COUNT` (denser at the ends,
    as the classic NIAH harness's sigmoid spacing). All depths must lie in [0, 1]."""
    value = value.strip()
    try:
        if ":" in value:
            kind, args = value.split(":", 1)
            start, stop, count = (float(x) for x in args.split(","))
            if not (1 <= count <= MAX_DEPTHS) or int(count) != count:
                raise HaystackError(
                    f"depth grid {value!r} needs a whole COUNT from 1 to {MAX_DEPTHS} (e.g. linspace:0,1,11)"
                )
            n = int(count)
            if kind == "linspace":
                depths = np.linspace(start, stop, n)
            elif kind == "sigmoid":
                x = np.linspace(-5.0, 5.0, n)
                s = 1 / (1 + np.exp(-x))
                s = (s - s.min()) / (s.max() - s.min()) if n > 1 else np.array([0.5])
                depths = start + (stop - start) * s
            else:
                raise HaystackError(
                    f"unknown depth grid {kind!r}: use linspace:START,STOP,COUNT or sigmoid:START,STOP,COUNT"
                )
        else:
            depths = np.array([float(x) for x in value.split(",") if x.strip()])
    except ValueError as err:
        if isinstance(err, HaystackError):
            raise
        raise HaystackError(
            f"cannot read depths {value!r}: give fractions like 0.1,0.5,0.9 or linspace:0,1,11"
        ) from None
    if depths.size == 0:
        raise HaystackError("no depths given: give fractions like 0.1,0.5,0.9")
    bad = [float(d) for d in depths if not 0.0 <= d <= 1.0]
    if bad:
        raise HaystackError(f"depth {bad[0]:g} is outside [0, 1] (0 = start of the haystack, 1 = its end)")
    depths = [round(float(d), 6) for d in depths]
    if len(set(depths)) != len(depths):
        raise HaystackError(f"depths {value!r} repeat a value: each depth must appear once")
    return depths


MAX_LENGTH = 1 << 20  # the longest prompt a document may ask for (1024k tokens)


def parse_lengths(value: str) -> list[int]:
    """`4k,16K,1500` -> [4096, 16384, 1500] (k = 1024)."""
    out = []
    for item in value.split(","):
        item = item.strip()
        m = re.fullmatch(r"(\d+)([kK]?)", item)
        if not m:
            raise HaystackError(f"cannot read length {item!r}: use token counts like 4k, 16K or 1500")
        n = int(m.group(1)) * (1024 if m.group(2) else 1)
        if n < 1:
            raise HaystackError(f"length {item!r} must be at least 1 token")
        if n > MAX_LENGTH:
            raise HaystackError(
                f"length {item!r} is over {MAX_LENGTH:,} tokens (1024k), the most a document may hold"
            )
        out.append(n)
    if not out:
        raise HaystackError("no lengths given: use token counts like 4k,16k")
    if len(set(out)) != len(out):
        raise HaystackError(f"lengths {value!r} repeat a value: each length must appear once")
    return out
