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
    (`answers.answer_documents`); with `layers`, first score every layer of them under the kept sets
    it decodes with (`scoring.analyze_document`), in place of their LayerJobs."""

    documents: tuple[tuple[int, int, int], ...]
    layers: bool = False


# prompt tokens per answer task: documents of one length are decoded together up to this many (on the
# CPU a decoding step reads every weight once however many rows it serves: 4 documents of 2k decode
# in about the time of 2), and a longer document alone
ANSWER_TOKENS = 8192


def answer_jobs(
    docs: list[tuple[int, int, int]], tokens: int = ANSWER_TOKENS, layers: bool = False
) -> list[AnswerJob]:
    """The documents' answer tasks, longest documents first, each length's documents split evenly
    into tasks of at most `tokens` prompt tokens (a longer document alone)."""
    jobs = []
    for n in sorted({doc[0] for doc in docs}, reverse=True):
        mine = [doc for doc in docs if doc[0] == n]
        tasks = -(-len(mine) // max(1, tokens // n))
        jobs += [
            AnswerJob(tuple(mine[i] for i in part), layers)
            for part in np.array_split(np.arange(len(mine)), tasks)
        ]
    return jobs


def documents_of(plan: StorePlan) -> list[tuple[int, int, int]]:
    return [(n, int(d), int(s)) for n in plan.lengths for d, s in zip(*np.nonzero(plan.done[n]))]


def jobs_of(plan: StorePlan, spec: Spec) -> list[LayerJob | AnswerJob]:
    """One LayerJob per finished document-layer; with --answers also the answer tasks, first
    (`answer_jobs`, longest documents first: started first, they overlap the many short layer tasks
    and leave no long tail).

    Answers on a GPU: one task per document, which scores every layer of it too, under the kept sets
    it decodes with (chosen once, not twice: there the kept sets cost more than the decode), and no
    LayerJob. On the CPU the decode costs most: documents of one length decode in step (one read of
    the weights per step serves them all), and the small layer tasks keep every worker busy."""
    docs = documents_of(plan)
    if spec.answers and spec.answer_device.startswith("cuda"):
        return answer_jobs(docs, 0, layers=True)
    jobs: list = answer_jobs(docs) if spec.answers else []
    return jobs + [LayerJob(*doc, layer) for doc in docs for layer in range(plan.layers)]
