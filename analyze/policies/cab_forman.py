from dataclasses import dataclass

import numpy as np

from analyze import curvature
from analyze.policies._blockgraph import COMPARE_WITH, graphs
from analyze.policies.base import DocLayer, param
from analyze.policies.cab import CAB
from core.optionkit import choice

FORMS = {
    "weighted": (curvature.forman_weighted, curvature.forman_weighted_row),
    "augmented": (curvature.forman_augmented, curvature.forman_augmented_row),
}


@dataclass(frozen=True)
class CABForman(CAB):
    """Textbook curvature-aware blocks: keep the key blocks joined to the last query block by its most
    negative (bridge-like) Forman-Ricci edges, on the undirected block graph w = A + Aᵀ (raw weights,
    no self-loops): the weighted form of Sreejith et al. 2016 ("Forman curvature for complex
    networks", J. Stat. Mech.) or the augmented form of Samal et al. 2018 ("Comparative analysis of
    two discretizations of Ricci curvature for complex networks", Sci. Rep.); see analyze/curvature.py.
    ⌊k/B⌋ whole blocks, the rest of the budget filled from the next block by accumulated attention;
    blocks without an edge to the query block score 0.

    Parameters: form="weighted" ("augmented": degrees and triangles), graph="blocks" ("qk": pooled
    Q/K affinity), block=0 (0 = the stored B; else a multiple of it).
    """

    name = "cab_forman"
    form: str = param("weighted", choice(*FORMS), "weighted/augmented")
    compare_with = (*COMPARE_WITH, "snapkv")  # reads, lowest-first ranking and block fill: CAB's

    def scores(self, x: DocLayer, reference: bool = False) -> np.ndarray:
        """(head, kblock) Forman-Ricci curvature of the last query block's edges."""
        a = graphs(x, self.graph, normalize=False, reference=reference)
        i = a.shape[1] - 1
        full, row = FORMS[self.form]
        out = []
        for h in range(x.heads):
            w = curvature.symmetric(np.asarray(a[h], dtype=np.float64))
            out.append(full(w)[i] if reference else row(w, i))
        return np.stack(out)
