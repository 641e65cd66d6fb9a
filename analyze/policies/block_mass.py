from dataclasses import dataclass

from analyze.policies.base import DocLayer, Policy, Ranking, expand_blocks, param
from core.optionkit import integer


@dataclass(frozen=True)
class BlockMass(Policy):
    """Key blocks with the most attention mass from the last query block (which holds the question),
    per query head; ties by accumulated attention. Plain magnitude: the reference the cab family is
    compared with (a curvature that ranks like this is magnitude in disguise).

    Parameters: block=0 (0 = the stored B; else a multiple of it).
    """

    name = "block_mass"
    reads = ("blocks", "colsum")
    sets = "head"
    block: int = param(0, integer(minimum=0), "0 = stored B, or a multiple of it")

    def rank(self, x: DocLayer, k: int) -> Ranking:
        return Ranking(primary=expand_blocks(x.blocks[:, -1, :], x.block, x.n), secondary=x.colsum)
