"""Needle-in-kept-set metrics of one document-layer (their names and order: `core.schema.METRICS`)."""

from __future__ import annotations

import numpy as np


def kept_metrics(kept: np.ndarray, masks: dict, final_row: np.ndarray) -> np.ndarray:
    """kept (head, key) bool, the document's token masks (`core.runstore.document_masks`: `target`,
    `distractor`, `target_spans`, ...), final_row (head, key): the answer position's attention under
    full attention -> (metric, head) float64 in the order of `schema.METRICS`:
    - needle_hit: the fraction of target values with at least one copy kept whole (1/0 for one value);
    - needle_recall: the fraction of all target tokens kept, every copy counted;
    - mass_kept: Σ of the final row over the kept keys;
    - distractor_kept: the fraction of distractor-needle tokens kept (NaN without distractors);
    - kept: the count of kept keys."""
    spans = masks["target_spans"]
    hit = np.zeros(kept.shape[0])
    for copies in spans:
        whole = np.zeros(kept.shape[0], dtype=bool)
        for a, b in copies:
            whole |= kept[:, a:b].all(axis=1)
        hit += whole
    distractor = masks["distractor"]
    return np.stack(
        [
            hit / max(1, len(spans)),
            kept[:, masks["target"]].mean(axis=1),
            np.where(kept, final_row, 0.0).sum(axis=1, dtype=np.float64),
            kept[:, distractor].mean(axis=1) if distractor.any() else np.full(kept.shape[0], np.nan),
            kept.sum(axis=1).astype(np.float64),
        ]
    )


def needle_mass(final_row: np.ndarray, masks: dict) -> np.ndarray:
    """(head,): the final query row's attention on the target values (every copy) under full attention."""
    return final_row[:, masks["target"]].sum(axis=1, dtype=np.float64)


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(head,) |a ∩ b| / |a ∪ b| of two (head, key) keep masks."""
    inter = (a & b).sum(axis=1)
    union = (a | b).sum(axis=1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
