"""The study config (YAML): one file drives dump -> analyze -> viz. Validated before any work.

Its sections are the stages' own option dataclasses (`dump.options.DumpOptions`,
`analyze.options.AnalyzeOptions`, `viz.options.VizOptions`): every key is the CLI flag of the same
name, parsed and checked by the same code. The stores' paths come from `out:`.

A top-level `tasks:` list makes the config a task sweep: one study per task in `out/<task>/` (its
own run.zarr, results.zarr and report, every other setting shared), then `out/tasks.html` (every
task's heatmaps behind a task and a setting selector) and `out/tasks.csv` (answer accuracy per task,
setting, policy and sparsity; `needle_hit` where answers were not decoded).

A top-level `by_length: true` dumps and analyzes one length at a time, each in `out/lengths/<N>/`, and
removes that length's run.zarr once it is analyzed, so that a study's stores never share the disk; the
lengths' RESULTS are then joined into `out/results.zarr` (`analyze.join`: the pooled quantities, e.g.
the retrieval heads, recomputed over every length). The report then has no kept-set pictures (they
read the run store).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from analyze import AnalyzeOptions
from core import optionkit
from core.errors import UsageError
from dump import DumpOptions
from viz import VizOptions

SECTIONS = {"dump": DumpOptions, "analyze": AnalyzeOptions, "viz": VizOptions}


@dataclass
class Config:
    out: str
    name: str = "study"
    dump: DumpOptions = field(default_factory=DumpOptions)
    analyze: AnalyzeOptions = field(default_factory=AnalyzeOptions)
    viz: VizOptions = field(default_factory=VizOptions)
    tasks: list[str] = field(default_factory=list)  # a sweep: one study per task (see studies())
    by_length: bool = False  # one length at a time, its run.zarr removed once analyzed (see length_studies())

    @property
    def run_store(self) -> str:
        return str(Path(self.out) / "run.zarr")

    @property
    def results_store(self) -> str:
        return str(Path(self.out) / "results.zarr")

    @property
    def report_dir(self) -> str:
        return str(Path(self.out) / "report")

    def studies(self) -> list[tuple[str, Config]]:
        """A sweep's per-task studies, `(task, config)`, each in its own folder under `out`."""
        return [
            (
                task,
                dataclasses.replace(
                    self,
                    out=str(Path(self.out) / folder_name(task)),
                    name=f"{self.name} {task}",
                    dump=dataclasses.replace(
                        self.dump, task=task, needle_type=None, haystack=None
                    ),  # folded in
                    tasks=[],
                ),
            )
            for task in self.tasks
        ]

    def length_studies(self) -> list[tuple[int, Config]]:
        """A `by_length` study's per-length studies, `(tokens, config)`, each in `out/lengths/<tokens>/`."""
        return [
            (
                n,
                dataclasses.replace(
                    self,
                    out=str(Path(self.out) / "lengths" / str(n)),
                    name=f"{self.name} {n}",
                    dump=dataclasses.replace(self.dump, lengths=[n]),
                    by_length=False,
                ),
            )
            for n in self.dump.lengths
        ]

    @property
    def tasks_page(self) -> str:
        return str(Path(self.out) / "tasks.html")

    @property
    def tasks_table(self) -> str:
        return str(Path(self.out) / "tasks.csv")

    @property
    def leaderboard_table(self) -> str:
        return str(Path(self.out) / "leaderboard.csv")

    def stage_options(self, progress: bool = True) -> tuple[DumpOptions, AnalyzeOptions, VizOptions]:
        """The three stages' options with this study's paths filled in."""
        return (
            dataclasses.replace(self.dump, out=self.run_store, progress=progress),
            dataclasses.replace(
                self.analyze, store=self.run_store, out=self.results_store, progress=progress
            ),
            dataclasses.replace(
                self.viz,
                results=self.results_store,
                out=self.report_dir,
                store=self.run_store,
                progress=progress,
            ),
        )


def folder_name(task: str) -> str:
    """A task spec as a folder name: multikey:3,value=uuid -> multikey-3_value-uuid."""
    return task.replace(":", "-").replace(",", "_").replace("=", "-")


def _tasks(raw, dump: DumpOptions, path: str) -> list[str]:
    """`tasks:`, each spec checked and made canonical, with the dump section's needle_type and
    haystack folded in as `dump --needle-type/--haystack` would."""
    from core import tasks

    if raw is None:
        return []
    if not isinstance(raw, list) or not raw or not all(isinstance(t, str) and t for t in raw):
        raise UsageError(
            f"{path}: `tasks:` must be a non-empty list of task specs, e.g. [passkey, multikey:3]"
        )
    out = []
    for spec in raw:
        try:
            label = tasks.with_options(tasks.parse_task(spec), dump.needle_type, dump.haystack)
        except (ValueError, UsageError) as err:
            raise UsageError(f"{path}: tasks: {spec!r} {err}") from None
        if label in out:
            raise UsageError(f"{path}: tasks: {spec!r} is listed twice (as {label!r}); list each task once")
        out.append(label)
    return out


def load(path: str) -> Config:
    """Read and validate a config file; every bad value raises UsageError naming it."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file {path!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UsageError(f"config file {path!r} is not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"config file {path!r} must be a mapping with at least `out:`")
    top = {"out", "name", "tasks", "by_length", *SECTIONS}
    for key in raw:
        if key not in top:
            raise UsageError(f"{path}: unknown top-level key {key!r}; allowed: {', '.join(sorted(top))}")
    if not raw.get("out") or not isinstance(raw["out"], str):
        raise UsageError(f"{path}: `out:` (the study's output folder) is required")
    if raw.get("tasks") is not None and "task" in (raw.get("dump") or {}):
        raise UsageError(f"{path}: give either `tasks:` (a sweep) or `dump.task`, not both")
    if not isinstance(raw.get("by_length", False), bool):
        raise UsageError(f"{path}: `by_length:` is {raw['by_length']!r}; allowed: true or false")
    out = Path(str(raw["out"])).expanduser()
    sections = {
        name: optionkit.from_mapping(cls, raw.get(name), name, path) for name, cls in SECTIONS.items()
    }
    return Config(
        out=str(
            out if out.is_absolute() else (p.resolve().parent / out).resolve()
        ),  # relative to the config file
        name=str(raw.get("name", p.stem)),
        tasks=_tasks(raw.get("tasks"), sections["dump"], path),
        by_length=bool(raw.get("by_length", False)),
        **sections,
    )
