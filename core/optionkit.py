"""Stage options declared once: a dataclass field per option, from which the CLI flags, the YAML
config keys, their checks and their help are all derived.

    samples: int = option(1, "documents per (length, depth)", integer(minimum=1))

`parse` turns the text a user typed (a CLI value, or a YAML value written back as text) into the
value and raises ValueError with what is allowed; `add_arguments`, `from_args` and `from_mapping`
apply the same parse to a command line and to a config section, so both refuse the same values with
the same sentence. Fields marked `config=False` exist on the command line only (the study's paths
come from the config's `out:`); `cli=False` fields are config-only.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

from core.errors import UsageError

MISSING = dataclasses.MISSING


def option(
    default: Any,
    help: str,
    parse: Callable[[str], Any] | None = None,
    *,
    flag: bool = False,
    cli: bool = True,
    config: bool = True,
    metavar: str | None = None,
    positional: bool = False,
    alias: str | None = None,
):
    """A dataclass field that is a stage option (see the module docstring). `alias` is an older name
    that the command line (`--alias`) and a config (`alias:`) still accept, saying that it is one."""
    if alias:
        help = f"{help} (--{alias.replace('_', '-')} is an alias)"
    meta = {
        "alias": alias,
        "help": help,
        "parse": parse or (lambda v: v),
        "flag": flag,
        "cli": cli,
        "config": config,
        "metavar": metavar,
        "positional": positional,
    }
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def cli_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def cli_options(cls) -> set[str]:
    return {f.name for f in fields(cls) if f.metadata["cli"]}


def config_keys(cls) -> set[str]:
    return {f.name for f in fields(cls) if f.metadata["config"]}


# -- parsers: text -> value, ValueError("what is allowed") -------------------------------------
def integer(minimum: int | None = None, maximum: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise ValueError("must be a whole number") from None
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}")
        return value

    parse.__doc__ = f"integer in [{minimum}, {maximum}]"
    return parse


def number(minimum: float | None = None, maximum: float | None = None, above: float | None = None):
    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise ValueError("must be a number") from None
        if value != value:
            raise ValueError("must be a number, not NaN")
        if above is not None and value <= above:
            raise ValueError(f"must be greater than {above:g}")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum:g}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum:g}")
        return value

    return parse


def choice(*allowed: str):
    def parse(text: str) -> str:
        value = str(text).strip()
        if value not in allowed:
            raise ValueError(f"is unknown: use {', '.join(allowed)}")
        return value

    parse.choices = allowed
    return parse


def optional(parse: Callable[[str], Any]):
    """None stays None (YAML `null`, or an empty value)."""

    def wrapped(text):
        if text is None or str(text).strip() in ("", "null", "None"):
            return None
        return parse(text)

    return wrapped


def text(value) -> str:
    return str(value)


def comma_list(parse_item: Callable[[str], Any], unique: bool = True):
    """`a,b,c` -> [parse(a), parse(b), parse(c)]; a repeated value is refused."""

    def parse(value) -> list:
        items = [x.strip() for x in str(value).split(",") if x.strip()]
        if not items:
            raise ValueError("is empty: give at least one value")
        out = [parse_item(x) for x in items]
        if unique:
            seen = set()
            for raw, v in zip(items, out):
                key = repr(v)
                if key in seen:
                    raise ValueError(f"repeats {raw!r}: give each value once")
                seen.add(key)
        return out

    return parse


def boolean(value) -> bool:
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower()
    if low in ("true", "yes", "1", "on"):
        return True
    if low in ("false", "no", "0", "off"):
        return False
    raise ValueError("must be true or false")


# -- derivations -------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One CLI argument per option field (values stay text; `from_args` parses and checks them)."""
    for f in fields(cls):
        m = f.metadata
        if not m["cli"]:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        help_text = m["help"]
        names = [cli_name(f.name)] + ([cli_name(m["alias"])] if m["alias"] else [])
        if m["positional"]:
            parser.add_argument(f.name, nargs="?", default=None, help=help_text)
        elif m["flag"]:
            if default:  # a flag that is on by default is turned off with --no-NAME
                parser.add_argument(
                    "--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false", help=help_text
                )
            else:
                parser.add_argument(*names, dest=f.name, action="store_true", help=help_text)
        else:
            shown = _show(default)
            parser.add_argument(
                *names,
                dest=f.name,
                default=None,
                metavar=m["metavar"] or f.name.upper(),
                help=help_text if "default" in help_text else f"{help_text} (default: {shown})",
            )


def _show(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def _as_text(value) -> str:
    """A YAML value as the text a user would type on the command line."""
    if isinstance(value, (list, tuple)):
        return ",".join(_as_text(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _parse(f: dataclasses.Field, value, name: str):
    try:
        if f.metadata["flag"]:
            return boolean(value)
        return f.metadata["parse"](_as_text(value) if not isinstance(value, str) else value)
    except UsageError as err:  # a parser that already says what it read and what is allowed
        raise UsageError(f"{name} {_as_text(value)}: {err}") from None
    except ValueError as err:
        raise UsageError(f"{name} {_as_text(value)} {err}") from None


def from_args(cls, args: argparse.Namespace, **fixed):
    """The options of a parsed command line: every given value parsed and checked."""
    kwargs = dict(fixed)
    for f in fields(cls):
        if not f.metadata["cli"] or f.name in kwargs:
            continue
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if f.metadata["flag"]:
            kwargs[f.name] = bool(value)
        else:
            label = f.name if f.metadata["positional"] else cli_name(f.name)
            kwargs[f.name] = _parse(f, value, label)
    return cls(**kwargs)


def from_mapping(cls, raw: dict | None, section: str, where: str, **fixed):
    """The options of a config section: unknown keys refused, every value parsed and checked."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: section {section!r} must be a mapping of settings")
    known = {f.name: f for f in fields(cls) if f.metadata["config"]}
    aliases = {f.metadata["alias"]: f.name for f in known.values() if f.metadata["alias"]}
    for old, new in aliases.items():
        if old in raw and new in raw:
            raise UsageError(
                f"{where}: {section}.{old} and {section}.{new} name one setting ({old} is an alias): give one"
            )
    raw = {aliases.get(key, key): value for key, value in raw.items()}
    kwargs = dict(fixed)
    for key, value in raw.items():
        if key not in known:
            raise UsageError(f"{where}: unknown setting {section}.{key}; allowed: {', '.join(sorted(known))}")
        if value is None and known[key].default is None:
            kwargs[key] = None
            continue
        kwargs[key] = _parse(known[key], value, f"{where}: {section}.{key} =")
    return cls(**kwargs)


# -- values several stages share --------------------------------------------------------------
def device(value: str) -> str:
    value = str(value).strip()
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise ValueError("is not a device: use auto, cpu, cuda or cuda:N")


def devices(value: str) -> list[str]:
    if str(value).strip() == "all":
        return ["all"]
    return comma_list(device, unique=False)(value)  # cpu,cpu: two processes on the CPU


def scheduler(value: str) -> str:
    value = str(value).strip()
    if "://" not in value or not value.split("://", 1)[1]:
        raise ValueError("is not a scheduler address: use tcp://HOST:PORT")
    return value


ROPE_MAX_FACTOR = 64.0  # 32k positions x 64 = 2M: beyond any context this lab can hold


def rope_scaling(value: str) -> str:
    kind, _, factor = str(value).strip().partition(":")
    try:
        ok = kind in ("linear", "yarn") and 1 < float(factor) <= ROPE_MAX_FACTOR
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"is not linear:F or yarn:F with a finite factor 1 < F <= {ROPE_MAX_FACTOR:g} (e.g. yarn:4)"
        )
    return f"{kind}:{float(factor):g}"
