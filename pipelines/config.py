"""The study config (YAML): one file drives dump -> analyze -> viz. Validated before any work.

Its sections are the stages' own option dataclasses (`dump.options.DumpOptions`,
`analyze.options.AnalyzeOptions`, `viz.options.VizOptions`): every key is the CLI flag of the same
name, parsed and checked by the same code. The stores' paths come from `out:`.
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

    @property
    def run_store(self) -> str:
        return str(Path(self.out) / "run.zarr")

    @property
    def results_store(self) -> str:
        return str(Path(self.out) / "results.zarr")

    @property
    def report_dir(self) -> str:
        return str(Path(self.out) / "report")

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
    top = {"out", "name", *SECTIONS}
    for key in raw:
        if key not in top:
            raise UsageError(f"{path}: unknown top-level key {key!r}; allowed: {', '.join(sorted(top))}")
    if not raw.get("out") or not isinstance(raw["out"], str):
        raise UsageError(f"{path}: `out:` (the study's output folder) is required")
    out = Path(str(raw["out"])).expanduser()
    return Config(
        out=str(
            out if out.is_absolute() else (p.resolve().parent / out).resolve()
        ),  # relative to the config file
        name=str(raw.get("name", p.stem)),
        **{name: optionkit.from_mapping(cls, raw.get(name), name, path) for name, cls in SECTIONS.items()},
    )
