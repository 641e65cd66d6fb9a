"""The analyze stage. What other stages may use of it (imported lazily: `import analyze` is cheap):

- `AnalyzeOptions`, `spec_from`, `run`: options, the spec they make, and the analysis of a RUN.zarr
  on a Dask client (pre-flight checks included); `provenance`: what RESULTS would be made from;
- `kept_sets_scored`: the kept sets behind a RESULTS dataset's numbers (viz draws them);
- `proxy_rules`: the proxy rules the calibration scores against the answer (viz plots the best);
- `join_lengths`: RESULTS of one study's lengths, analyzed apart, joined (pipelines' `by_length`).
"""

from __future__ import annotations

from core import exports

_PUBLIC = {
    "AnalyzeOptions": ("analyze.options", "AnalyzeOptions"),
    "spec_from": ("analyze.engine", "spec_from"),
    "run": ("analyze.engine", "run"),
    "provenance": ("analyze.engine", "provenance"),
    "kept_sets_scored": ("analyze.keptsets", "kept_sets_scored"),
    "proxy_rules": ("analyze.calibration", "rules"),
    "join_lengths": ("analyze.join", "join_lengths"),
}
__all__ = list(_PUBLIC)

__getattr__ = exports("analyze", _PUBLIC)
