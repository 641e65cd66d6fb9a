"""`single`: one needle, asked for (RULER's niah_single_1..3, and niah_multikey_2/3 with the
`needles` haystack)."""

from core.tasks import register, values
from core.tasks.niah import Niah


@register
class Single(Niah):
    name = "single"
    summary = "one needle (key -> value), asked for by its key"

    def needles_of(self, rng):
        key = values.draw(self.key_type, rng)
        return [(key, values.draw(self.value_type, rng))], [], [key]
