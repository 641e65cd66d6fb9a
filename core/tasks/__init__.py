"""Tasks: what a document holds, what it asks, and how the model's answer is scored.

A task is one module with one `Task` subclass, registered by name (`register`, from outside too).
It builds the document of one (length, depth, sample) from that document's own random generator:
the needles with their roles and every token span an answer can be copied from, the question, the
expected values; and it scores an answer's text (`score`: 1/0 or a fraction, the `retrieved` and
`answer` rule; `partial`: a finer-grained score). The dump, the tokenizer rebuild check of the
answer pass and the answer pass itself all go through `document` and the task's rules, so a task
is added without touching them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.errors import UsageError
from core.tasks import haystack

ROLES = ("target", "distractor")


@dataclass(frozen=True)
class Needle:
    """One needle of a document: its key and value as text, its role, and the token spans [start,
    end) of the prompt holding the value (every copy an answer could be copied from)."""

    key: str
    value: str
    role: str  # one of ROLES
    spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Document:
    """One prompt of exactly `length` tokens. Masks have shape (key,) over its tokens."""

    input_ids: np.ndarray  # (key,) int32
    needle: np.ndarray  # (key,) bool: the target value's tokens, first copy (RUN.zarr `needle`)
    needle_sentence: np.ndarray  # (key,) bool: the whole needle text
    question: np.ndarray  # (key,) bool: question + answer cue
    passkey: int  # the target value as a number (RUN.zarr `passkey`)
    depth: float  # requested
    depth_actual: float  # filler tokens before the needle / all filler tokens
    text: str
    needles: tuple[Needle, ...] = field(default=())

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def expected(self) -> tuple[str, ...]:
        """The values a correct answer gives: those of the target needles."""
        return tuple(x.value for x in self.needles if x.role == "target")


class Task:
    """Base of all tasks. Subclasses set `name`, `templates` and implement `build`."""

    name = "task"
    answer_tokens = 8  # greedy tokens decoded after the prompt (schema.ANSWER_TOKENS for the passkey)
    templates: dict = {}  # recorded in RUN.zarr provenance

    def build(self, tokenizer, length: int, depth: float, rng: np.random.Generator, filler: str) -> Document:
        raise NotImplementedError  # pragma: no cover - interface

    def score(self, text: str, doc: Document) -> float:
        """The answer rule: the fraction of expected values the answer contains, spaces removed
        (RULER's string_match_all; 1/0 for one value)."""
        flat = text.replace(" ", "")
        want = doc.expected
        return sum(v.replace(" ", "") in flat for v in want) / max(1, len(want))

    def partial(self, text: str, doc: Document) -> float:
        """A finer score than `score` (default: the same)."""
        return self.score(text, doc)


REGISTRY: dict[str, Task] = {}


def register(task: type[Task]) -> type[Task]:
    """Add a task class by its `name` (usable as a decorator, and from outside this package)."""
    if not (isinstance(task, type) and issubclass(task, Task)):
        raise TypeError(f"{task!r} is not a subclass of Task")
    REGISTRY[task.name] = task()
    return task


def get(name: str) -> Task:
    if name not in REGISTRY:
        raise UsageError(f"unknown task {name!r}: use one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def parse_task(value: str) -> str:
    """A registered task name (option parser: ValueError saying what is allowed)."""
    value = str(value).strip()
    if value not in REGISTRY:
        raise ValueError(f"is not a task: use one of {', '.join(sorted(REGISTRY))}")
    return value


def document(
    tokenizer,
    task: str,
    seed: int,
    filler: str,
    length: int,
    depth: float,
    depth_index: int,
    sample: int,
    by_index: bool = False,
) -> Document:
    """The document at (length, depth, sample) of a study: a function of (seed, length, depth value,
    sample) alone. This is the one document rule: the dump builds with it and the answer pass
    rebuilds with it. `by_index`: the rule of stores before RUN schema 2.2 (the depth's index in the
    grid seeded the document; `schema.seeds_by_depth_index` says which stores)."""
    if by_index:
        rng = haystack.document_rng_by_index(seed, length, depth_index, sample)
    else:
        rng = haystack.document_rng(seed, length, depth, sample)
    return get(task).build(tokenizer, length, depth, rng, filler)


from core.tasks import passkey  # noqa: E402  (registers the built-in tasks)

__all__ = ["Document", "Needle", "Task", "REGISTRY", "register", "get", "document", "parse_task", "passkey"]
