from dataclasses import dataclass

from analyze.policies.base import DocLayer, Policy, Ranking


@dataclass(frozen=True)
class Oracle(Policy):
    """Top-k keys of the final query row of A, per query head: the most attention mass any k-key set
    can keep at the answer position. A ceiling that sees the question, not a deployable policy."""

    name = "oracle"
    sets = "head"
    reads_answer_row = True  # the agnostic setting has no answer row: NaN there

    def rank(self, x: DocLayer, k: int) -> Ranking:
        return Ranking(primary=x.final_row)
