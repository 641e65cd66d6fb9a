"""The study config (YAML): one file drives dump -> analyze -> viz. Validated before any work."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dump.errors import UsageError


@dataclass
class DumpSection:
    model: str = "smollm2-135m"
    lengths: list = field(default_factory=lambda: ["1k"])
    depths: object = field(default_factory=lambda: [0.1, 0.5, 0.9])  # list or "linspace:0,1,11"
    samples: int = 1
    seed: int = 0
    filler: str = "ruler"
    window: int = 64
    block: object = 64
    store: str = "stats"
    layers: object = None
    device: str = "auto"
    dtype: str = "auto"


@dataclass
class AnalyzeSection:
    methods: list = field(
        default_factory=lambda: [
            "full",
            "oracle",
            "random",
            "streaming",
            "h2o",
            "snapkv",
            "tova",
            "cab",
            "cab_high",
            "cab_hybrid",
            "cab_3c",
        ]
    )
    sparsities: list = field(default_factory=lambda: [0.9, 0.95, 0.99])
    gqa: str = "kv"
    seed: int = 0
    retrieval_heads: int = 10


@dataclass
class DaskSection:
    scheduler: str | None = None
    workers: int | None = None


@dataclass
class VizSection:
    dpi: int = 150
    keptset: bool = True


@dataclass
class Config:
    out: str
    name: str = "study"
    dump: DumpSection = field(default_factory=DumpSection)
    analyze: AnalyzeSection = field(default_factory=AnalyzeSection)
    dask: DaskSection = field(default_factory=DaskSection)
    viz: VizSection = field(default_factory=VizSection)

    @property
    def run_store(self) -> str:
        return str(Path(self.out) / "run.zarr")

    @property
    def results_store(self) -> str:
        return str(Path(self.out) / "results.zarr")

    @property
    def report_dir(self) -> str:
        return str(Path(self.out) / "report")


SECTIONS = {"dump": DumpSection, "analyze": AnalyzeSection, "dask": DaskSection, "viz": VizSection}


def _section(name: str, cls, raw, where: str):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: section {name!r} must be a mapping of settings")
    allowed = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in allowed:
            raise UsageError(f"{where}: unknown setting {name}.{key}; allowed: {', '.join(allowed)}")
    return cls(**raw)


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
    if not raw.get("out"):
        raise UsageError(f"{path}: `out:` (the study's output folder) is required")
    cfg = Config(
        out=str(raw["out"]),
        name=str(raw.get("name", p.stem)),
        **{name: _section(name, cls, raw.get(name), path) for name, cls in SECTIONS.items()},
    )
    validate(cfg, path)
    return cfg


def validate(cfg: Config, where: str) -> None:
    from analyze import policies
    from analyze.cli import parse_sparsities
    from dump import haystack

    d = cfg.dump
    d.lengths = haystack.parse_lengths(",".join(str(x) for x in _as_list(d.lengths, "dump.lengths", where)))
    d.depths = haystack.parse_depths(
        d.depths
        if isinstance(d.depths, str)
        else ",".join(str(x) for x in _as_list(d.depths, "dump.depths", where))
    )
    for key in ("samples", "window", "seed"):
        value = getattr(d, key)
        if not isinstance(value, int) or isinstance(value, bool) or (value < 1 and key != "seed"):
            raise UsageError(
                f"{where}: dump.{key} = {value!r} must be a whole number"
                + (" of at least 1" if key != "seed" else "")
            )
    if d.block != "auto" and (not isinstance(d.block, int) or d.block < 1):
        raise UsageError(f"{where}: dump.block = {d.block!r} must be a positive whole number or 'auto'")
    haystack.parse_filler(d.filler)
    a = cfg.analyze
    for m in _as_list(a.methods, "analyze.methods", where):
        policies.parse_method(str(m))
    a.sparsities = parse_sparsities(
        ",".join(str(x) for x in _as_list(a.sparsities, "analyze.sparsities", where))
    )
    if a.gqa not in ("kv", "head"):
        raise UsageError(f"{where}: analyze.gqa = {a.gqa!r}: use kv or head")
    if cfg.dask.workers is not None and (not isinstance(cfg.dask.workers, int) or cfg.dask.workers < 1):
        raise UsageError(f"{where}: dask.workers = {cfg.dask.workers!r} must be a whole number of at least 1")
    if not isinstance(cfg.viz.dpi, int) or not 30 <= cfg.viz.dpi <= 1200:
        raise UsageError(f"{where}: viz.dpi = {cfg.viz.dpi!r} must be a whole number in 30..1200")


def _as_list(value, name, where):
    if isinstance(value, (list, tuple)) and value:
        return list(value)
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return [value]
    raise UsageError(f"{where}: {name} = {value!r} must be a non-empty list")
