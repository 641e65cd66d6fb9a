"""The analysis' units of work on Dask: one `LayerJob` per finished document-layer, and with
--answers a few `AnswerJob`s per length (documents decoded in step)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from analyze.spec import Spec
from core.runstore import StorePlan


class LayerJob(NamedTuple):
    """Score every policy and sparsity on one document-layer."""

    length: int
    depth: int
    sample: int
    layer: int

    @property
    def document(self) -> tuple[int, int, int]:
        return self[:3]


class AnswerJob(NamedTuple):
    """Decode the model's answer under every pruned cache of a few documents of one length, in step
    (`answers.answer_documents`)."""

    documents: tuple[tuple[int, int, int], ...]


# prompt tokens per answer task: documents of one length are decoded together up to this many (on the
# CPU a decoding step reads every weight once however many rows it serves: 4 documents of 2k decode
# in about the time of 2), and a longer document alone
ANSWER_TOKENS = 8192


def answer_jobs(docs: list[tuple[int, int, int]], tokens: int = ANSWER_TOKENS) -> list[AnswerJob]:
    """The documents' answer tasks, longest documents first, each length's documents split evenly
    into tasks of at most `tokens` prompt tokens (a longer document alone)."""
    jobs = []
    for n in sorted({doc[0] for doc in docs}, reverse=True):
        mine = [doc for doc in docs if doc[0] == n]
        tasks = -(-len(mine) // max(1, tokens // n))
        jobs += [
            AnswerJob(tuple(mine[i] for i in part)) for part in np.array_split(np.arange(len(mine)), tasks)
        ]
    return jobs


def documents_of(plan: StorePlan) -> list[tuple[int, int, int]]:
    return [(n, int(d), int(s)) for n in plan.lengths for d, s in zip(*np.nonzero(plan.done[n]))]


def jobs_of(plan: StorePlan, spec: Spec) -> list[LayerJob | AnswerJob]:
    """One LayerJob per finished document-layer; with --answers the answer tasks instead
    (`answer_jobs`, longest documents first), each of which also scores every layer of its documents
    under the kept sets it decodes with (`scoring.analyze_document`): chosen once, not twice. On a
    GPU a document is a task of its own (batching documents saves the CPU's weight reads, not the
    GPU's, and smaller tasks share the workers more evenly)."""
    docs = documents_of(plan)
    if spec.answers:
        return answer_jobs(docs, 0 if spec.answer_device.startswith("cuda") else ANSWER_TOKENS)
    return [LayerJob(*doc, layer) for doc in docs for layer in range(plan.layers)]
