"""Output paths are ours or untouched: every stage refuses to replace what it did not make.

A RUN or RESULTS store carries its kind in the root attribute `niah_store`; a report folder carries
the file `REPORT_MARKER`. A command may only write into (or replace, with --overwrite) a path that
does not exist, is an empty directory, or carries its own kind's marker; never its own input.
A store being written is locked (a file `<store>.lock` beside it, holding the writer's host and pid).
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path

from core import schema
from core.errors import UsageError

REPORT_MARKER = ".niah-report"
LOCK_SUFFIX = ".lock"


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def local_path(path: str) -> Path:
    return Path(path.removeprefix("file://")).expanduser().resolve()


def store_kind(path: str) -> str | None:
    """'run' / 'results' for a store made here (schema 1 stores: by their layout), else None."""
    import zarr

    try:
        root = zarr.open_group(path, mode="r")
    except Exception:  # not a zarr group at all (zarr raises several kinds)
        return None
    kind = root.attrs.get(schema.KIND_ATTR)
    if kind:
        return str(kind)
    if "settings" in root.attrs and "model_config" in root.attrs:  # a schema-1 RUN store
        return schema.RUN_KIND
    if "budget_rule" in root.attrs:  # schema-1 RESULTS
        return schema.RESULTS_KIND
    return None


def same_path(a: str, b: str) -> bool:
    if is_local(a) and is_local(b):
        return local_path(a) == local_path(b)
    return a.rstrip("/") == b.rstrip("/")


def check_output(path: str, kind: str, option: str = "--out", inputs: tuple[str, ...] = ()) -> bool:
    """Refuse `path` unless it is free or a `kind` store/report; returns whether it exists already.

    kind: schema.RUN_KIND, schema.RESULTS_KIND or "report"."""
    for source in inputs:
        if source and same_path(path, source):
            raise UsageError(f"{option} {path!r} is the input it reads: choose another path")
    if not is_local(path):
        found = store_kind(path)
        if found is None:
            return False
        if found != kind:
            raise UsageError(f"{option} {path!r} is a {found} store, not a {kind} store: choose another path")
        return True
    p = local_path(path)
    if not p.exists():
        return False
    if not p.is_dir():
        raise UsageError(f"{option} {path!r} is an existing file: choose a new directory")
    if not any(p.iterdir()):
        return False
    found = "report" if (p / REPORT_MARKER).is_file() else store_kind(str(p))
    if found == kind:
        return True
    what = f"a {found} store" if found else "a directory this tool did not make"
    raise UsageError(f"{option} {path!r} exists and is {what}: refusing to replace it; choose another path")


def check_writable(path: str, option: str = "--out") -> None:
    """Refuse a local path we cannot create, before any work is done."""
    if not is_local(path):
        return
    import tempfile

    p = local_path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{option} {path!r} is an existing file: choose a new directory")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path!r} lies inside {str(parent)!r}, which is a file")
    try:  # the only honest test of writability (root passes os.access everywhere, /proc included)
        os.rmdir(tempfile.mkdtemp(prefix=".niah-probe-", dir=parent))
    except OSError:
        raise UsageError(f"{option} {path!r} is not writable (cannot create anything in {parent})") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def write_lock(path: str, what: str = "store"):
    """Hold the store's lock while writing it; a second writer is refused with who holds it.
    A lock left by a dead process on this host is taken over. Remote stores are not locked."""
    if not is_local(path):
        yield
        return
    target = local_path(path)
    lock = target.with_name(target.name + LOCK_SUFFIX)  # beside the store: the store stays pure zarr
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            if holder.get("host") == me["host"] and not _alive(int(holder.get("pid", 0) or 0)):
                lock.unlink(missing_ok=True)  # its writer died: take over
                continue
            raise UsageError(
                f"{what} {path!r} is being written by process {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}: wait for it to finish (or delete {lock} if that process is gone)"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def write_dataset(ds, out: str) -> None:
    """Write an xarray Dataset (RESULTS) to a temporary sibling, then rename: a failed run leaves
    nothing at `out`."""
    import shutil
    import tempfile
    import warnings

    from core.errors import check_signals

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not is_local(out):
            ds.to_zarr(out, mode="w", consolidated=True)
            return
        target = Path(out.removeprefix("file://")).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent)
        try:
            ds.to_zarr(tmp, mode="w", consolidated=True)
            check_signals()
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
