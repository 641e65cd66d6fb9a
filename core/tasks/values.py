"""The keys and values of RULER's needles: words, 7-digit numbers, UUIDs (RULER's `type_needle_k`
and `type_needle_v`: `words`, `numbers`, `uuids`), drawn from a document's own random generator.

RULER draws words from the `wonderwords` package (adjective-noun pairs); this lab ships its own
adjective and noun lists so that nothing is downloaded or installed for them.
"""

from __future__ import annotations

import uuid

import numpy as np

TYPES = ("word", "number", "uuid")
PLURAL = {"word": "words", "number": "numbers", "uuid": "uuids"}  # as RULER's templates name them

ADJECTIVES = (
    "amber ancient bitter brave breezy bright calm clever crimson curious dapper eager elegant fancy "
    "fierce gentle gifted glossy golden graceful hollow humble icy jolly keen lively lucky mellow "
    "misty modest narrow nimble noisy odd plain polite proud quiet rapid rare rustic shiny silent "
    "silver simple sleepy smooth sober solid spicy steady sturdy sunny swift tame tender tidy vivid "
    "wary wild witty young zesty"
).split()
NOUNS = (
    "anchor apple badger banjo barrel beacon bison blanket boulder bucket cactus camel candle canyon "
    "carpet castle cedar cherry cliff cobra comet compass cottage crayon dolphin donkey falcon feather "
    "ferry fiddle garden glacier goblet harbor hammer helmet island jacket kettle lantern lemon lizard "
    "meadow mirror monkey needle orchard otter paddle parrot pebble pepper piano pillow pirate quarry "
    "rabbit ribbon saddle salmon spider teapot thimble tiger tunnel violin walnut wagon whistle zebra"
).split()


def draw(kind: str, rng: np.random.Generator) -> str:
    """One key or value of `kind` (one of TYPES)."""
    if kind == "number":
        return str(int(rng.integers(10**6, 10**7)))  # RULER: 7 digits
    if kind == "word":
        return f"{ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]}-{NOUNS[int(rng.integers(len(NOUNS)))]}"
    if kind == "uuid":
        return str(uuid.UUID(bytes=rng.bytes(16), version=4))
    raise ValueError(f"unknown needle type {kind!r}: use one of {', '.join(TYPES)}")


def distinct(kind: str, rng: np.random.Generator, count: int, avoid=()) -> list[str]:
    """`count` different values of `kind`, none of them in `avoid`."""
    out: list[str] = []
    seen = set(avoid)
    while len(out) < count:
        v = draw(kind, rng)
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out
