"""`multiquery:Q`: Q needles with different keys, all asked for in one question (RULER's
niah_multiquery: Q = 4)."""

from core.tasks import register, values
from core.tasks.niah import Niah


@register
class MultiQuery(Niah):
    name = "multiquery"
    takes_count = True
    count = 4
    summary = "COUNT needles with different keys; the question asks for every key's value"

    def expected_count(self) -> int:
        return self.count

    def needles_of(self, rng):
        keys = values.distinct(self.key_type, rng, self.count)
        vals = values.distinct(self.value_type, rng, self.count)
        return list(zip(keys, vals)), [], list(keys)
