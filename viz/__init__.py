"""The viz stage. What other stages may use of it (imported lazily: `import viz` is cheap):
`VizOptions`, `build_report` (a report folder from a RESULTS.zarr, replaced atomically) and
`report_key` (what a report is made from, as its marker records it), and a task sweep's page and
tables (`tasks_page`, `tasks_long_table`, `tasks_answer_table`, `tasks_render`: `viz.tasks`), and the
leaderboard across tasks (`leaderboard_table`, `leaderboard_vs_kvpress`: `viz.leaderboard`)."""

from __future__ import annotations

from core import exports

_PUBLIC = {
    "VizOptions": ("viz.options", "VizOptions"),
    "build_report": ("viz.report", "build_atomic"),
    "report_key": ("viz.report", "report_key"),
    "tasks_page": ("viz.tasks", "page"),
    "tasks_long_table": ("viz.tasks", "long_table"),
    "tasks_answer_table": ("viz.tasks", "answer_table"),
    "tasks_render": ("viz.tasks", "render"),
    "leaderboard_table": ("viz.leaderboard", "table"),
    "leaderboard_vs_kvpress": ("viz.leaderboard", "spearman_vs_kvpress"),
}
__all__ = list(_PUBLIC)

__getattr__ = exports("viz", _PUBLIC)
