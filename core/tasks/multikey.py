"""`multikey:K`: the target needle and K distractor needles with other keys (RULER's
niah_multikey_1 is `multikey:3`: 4 keys in all)."""

from core.tasks import register, values
from core.tasks.niah import Niah


@register
class MultiKey(Niah):
    name = "multikey"
    takes_count = True
    count = 3
    summary = "the target needle plus COUNT distractor needles with other keys"

    def needles_of(self, rng):
        keys = values.distinct(self.key_type, rng, 1 + self.count)
        vals = values.distinct(self.value_type, rng, 1 + self.count)
        return [(keys[0], vals[0])], list(zip(keys[1:], vals[1:])), [keys[0]]
