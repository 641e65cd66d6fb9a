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

import copy
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import UsageError
from core.tasks import haystack, values

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

    def _role_mask(self, role: str) -> np.ndarray:
        out = np.zeros(self.length, dtype=bool)
        for x in self.needles:
            if x.role == role:
                for a, b in x.spans:
                    out[a:b] = True
        return out

    @property
    def target(self) -> np.ndarray:
        """(key,) bool: every copy of every target value (RUN.zarr `target`)."""
        return self._role_mask("target")

    @property
    def distractor(self) -> np.ndarray:
        """(key,) bool: every distractor value (RUN.zarr `distractor`)."""
        return self._role_mask("distractor")

    @property
    def needle_table(self) -> str:
        """Every needle as JSON: key, value, role and token spans (RUN.zarr `needle_table`)."""
        return json.dumps(
            [
                {"key": x.key, "value": x.value, "role": x.role, "spans": [list(s) for s in x.spans]}
                for x in self.needles
            ]
        )


def needles_from_table(table: str) -> tuple[Needle, ...]:
    """RUN.zarr `needle_table` -> the needles."""
    return tuple(
        Needle(x["key"], x["value"], x["role"], tuple(tuple(s) for s in x["spans"]))
        for x in json.loads(table or "[]")
    )


HAYSTACKS = ("noise", "essay", "needles")
NEEDLE_HAYSTACK = (
    "One of the special magic {kind} for {key} is: {value}."  # RULER's needle, and its needle haystack
)


class Task:
    """Base of all tasks. Subclasses set `name`, `templates` and implement `build`.

    A task is configured by its spec `NAME[:COUNT][,key=TYPE][,value=TYPE][,haystack=KIND]`
    (`get`): COUNT for tasks that take one (`takes_count`: distractors, values or queries), key and
    value types from `values.TYPES` where the task has them (`typed`), and the haystack: `noise`
    (RULER's repeated sentences, the `ruler` filler), `essay` (the `nature` filler, or --filler's text
    file) or `needles` (needle sentences with other keys: RULER's all-needle haystack); without it
    the --filler decides."""

    name = "task"
    answer_tokens = 8  # greedy tokens decoded after the prompt (schema.ANSWER_TOKENS for the passkey)
    templates: dict = {}  # recorded in RUN.zarr provenance
    takes_count = False
    typed = False  # the key and value types can be chosen
    # the haystacks it can build; `needles` only where each haystack needle is recorded as a distractor
    haystacks: tuple[str, ...] = ("noise", "essay", "needles")
    summary = ""  # one line for --list-tasks
    count = 1
    key_type = "word"
    value_type = "number"
    haystack: str | None = None

    @property
    def label(self) -> str:
        """The canonical spec (what RUN.zarr records as its task)."""
        out = self.name + (f":{self.count}" if self.takes_count else "")
        proto = REGISTRY.get(self.name, self)
        if self.typed and self.key_type != proto.key_type:
            out += f",key={self.key_type}"
        if self.typed and self.value_type != proto.value_type:
            out += f",value={self.value_type}"
        return out + (f",haystack={self.haystack}" if self.haystack else "")

    def configured(self, count=None, key=None, value=None, haystack=None) -> Task:
        if haystack is not None and haystack not in self.haystacks:
            raise UsageError(
                f"the {self.name} task has no {haystack} haystack (haystack={haystack}): use {' or '.join(self.haystacks)}"
            )
        out = copy.copy(self)
        for attr, v in (("count", count), ("key_type", key), ("value_type", value), ("haystack", haystack)):
            if v is not None:
                setattr(out, attr, v)
        return out

    def sentences(self, filler: str, rng: np.random.Generator, length: int) -> list[str]:
        """The haystack's sentences (`haystack` when the spec sets it, else the --filler)."""
        if self.haystack == "noise":
            return list(haystack.RULER_SENTENCES)
        if self.haystack == "essay":
            return haystack.filler_sentences(filler if Path(filler).is_file() else "nature", rng)
        if self.haystack == "needles":  # fresh needles with other keys, enough to fill the prompt
            kind = values.PLURAL[self.value_type]
            out, size = [], 0
            while size < 8 * length + 64:
                out.append(
                    NEEDLE_HAYSTACK.format(
                        kind=kind,
                        key=values.draw(self.key_type, rng),
                        value=values.draw(self.value_type, rng),
                    )
                )
                size += len(out[-1]) + 1
            return out
        return haystack.filler_sentences(filler, rng)

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

    def distracted(self, text: str, doc: Document) -> bool:
        """Whether the answer gives a distractor needle's value (case-insensitive, spaces removed),
        outside every copy of an expected value it gives (a distractor inside a target is no sign)."""
        flat = text.lower().replace(" ", "")
        for v in doc.expected:
            flat = flat.replace(v.lower().replace(" ", ""), "\0")
        return any(
            n.value.lower().replace(" ", "") in flat
            for n in doc.needles
            if n.role == "distractor" and n.value
        )


REGISTRY: dict[str, Task] = {}


def register(task: type[Task]) -> type[Task]:
    """Add a task class by its `name` (usable as a decorator, and from outside this package)."""
    if not (isinstance(task, type) and issubclass(task, Task)):
        raise TypeError(f"{task!r} is not a subclass of Task")
    REGISTRY[task.name] = task()
    _configured.cache_clear()
    return task


# RULER's named needle configurations (scripts/synthetic.yaml of NVIDIA/RULER): its niah_multikey_1
# has 4 keys (1 target + 3 distractors); multikey_2 and _3 hide one needle among needle sentences
RULER = {
    "niah_single_1": "single,haystack=noise",
    "niah_single_2": "single,haystack=essay",
    "niah_single_3": "single,value=uuid,haystack=essay",
    "niah_multikey_1": "multikey:3,haystack=essay",
    "niah_multikey_2": "single,haystack=needles",
    "niah_multikey_3": "single,key=uuid,value=uuid,haystack=needles",
    "niah_multivalue": "multivalue:4,haystack=essay",
    "niah_multiquery": "multiquery:4,haystack=essay",
}
SPEC_HELP = "NAME[:COUNT][,key=TYPE][,value=TYPE][,haystack=noise|essay|needles] or ruler:NAME"


@functools.lru_cache(maxsize=256)
def _configured(spec: str) -> Task:
    text = spec.strip()
    if text.startswith("ruler:"):
        if text[6:] not in RULER:
            raise UsageError(f"unknown RULER task {text[6:]!r}: use one of {', '.join(RULER)}")
        text = RULER[text[6:]]
    head, *opts = [x.strip() for x in text.split(",")]
    name, colon, arg = head.partition(":")
    if name not in REGISTRY:
        raise UsageError(
            f"unknown task {name!r}: use one of {', '.join(sorted(REGISTRY))} or ruler:NAME ({', '.join(RULER)})"
        )
    proto = REGISTRY[name]
    kw: dict = {}
    if colon:
        if not proto.takes_count:
            raise UsageError(f"task {name!r} takes no count (':{arg}'): write it as {name!r}")
        if not arg.isdigit() or not 1 <= int(arg) <= 16:
            raise UsageError(f"task {name!r} needs a count from 1 to 16 after ':', not {arg!r}")
        kw["count"] = int(arg)
    for opt in opts:
        key, eq, value = opt.partition("=")
        allowed = {"key": values.TYPES, "value": values.TYPES, "haystack": HAYSTACKS}
        if not eq or key not in allowed:
            raise UsageError(f"task option {opt!r} is not key=, value= or haystack= (spec: {SPEC_HELP})")
        if value not in allowed[key]:
            raise UsageError(f"task option {key}={value!r}: use one of {', '.join(allowed[key])}")
        if key in kw:
            raise UsageError(
                f"task option {key}= is given twice in {spec!r} ({kw[key]}, {value}): give it once"
            )
        if key in ("key", "value") and not proto.typed:
            raise UsageError(f"task {name!r} has no {key} type to choose ({key}={value})")
        kw[key] = value
    return proto.configured(**kw)


def get(spec: str) -> Task:
    """The task a spec names, configured (see `Task`; `ruler:NAME` for RULER's configurations)."""
    return _configured(str(spec))


def parse_task(value: str) -> str:
    """A task spec, as its canonical label (option parser: ValueError saying what is allowed)."""
    try:
        return get(value).label
    except UsageError as err:
        raise ValueError(f"is not a task: {err}") from None


def with_options(spec: str, needle_type: str | None = None, haystack_kind: str | None = None) -> str:
    """The spec with `--needle-type` (the values' type) and `--haystack` folded in."""
    task = get(spec)
    if needle_type is not None and not task.typed:
        raise UsageError(f"--needle-type {needle_type}: the {task.name} task's value has no type to choose")
    return task.configured(value=needle_type, haystack=haystack_kind).label


def listing() -> str:
    """`dump --list-tasks`: every task, its spec, and RULER's named configurations."""
    lines = [
        f"task spec: {SPEC_HELP}",
        f"types: {', '.join(values.TYPES)}; haystacks: {', '.join(HAYSTACKS)}",
        "",
    ]
    for name in sorted(REGISTRY):
        t = REGISTRY[name]
        lines.append(f"  {name + (':COUNT' if t.takes_count else ''):<16} {t.summary}")
    lines += ["", "RULER configurations (ruler:NAME):"]
    lines += [f"  ruler:{k:<18} = {v}" for k, v in RULER.items()]
    return "\n".join(lines)


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


from core.tasks import multikey, multiquery, multivalue, passkey, single  # noqa: E402  (the built-in tasks)

__all__ = [
    "Document",
    "Needle",
    "Task",
    "REGISTRY",
    "RULER",
    "register",
    "get",
    "document",
    "parse_task",
    "with_options",
    "listing",
    "needles_from_table",
    "passkey",
    "single",
    "multikey",
    "multivalue",
    "multiquery",
]
