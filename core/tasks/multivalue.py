"""`multivalue:V`: V needles under one key, all asked for (RULER's niah_multivalue: V = 4)."""

from core.tasks import register, values
from core.tasks.niah import Niah


@register
class MultiValue(Niah):
    name = "multivalue"
    takes_count = True
    count = 4
    summary = "COUNT needles with one key and different values; every value is asked for"

    def expected_count(self) -> int:
        return self.count

    def needles_of(self, rng):
        key = values.draw(self.key_type, rng)
        return [(key, v) for v in values.distinct(self.value_type, rng, self.count)], [], [key]
