"""Output paths are ours or untouched: every stage refuses to replace what it did not make.

A RUN or RESULTS store carries its kind in the root attribute `niah_store`; a report folder carries
the file `REPORT_MARKER`. A command may only write into (or replace, with --overwrite) a path that
does not exist, is an empty directory, or carries its own kind's marker; never its own input.
A store being written is locked (a file `<store>.lock` beside it, holding the writer's host and pid).
A single file (a page, a table) may only replace a file this lab wrote there and nobody changed since:
each one it writes is recorded, with its sha256, in `FILES_RECORD` in the file's folder.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from core import schema
from core.errors import UsageError

REPORT_MARKER = ".niah-report"
LOCK_SUFFIX = ".lock"
FILES_RECORD = ".niah-files"
STALE_EMPTY_S = 10.0  # an empty lock file older than this was left by a start that failed


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


def overlap(out: str, source: str) -> str | None:
    """How an output would overlap an input, or None: "is" (the same path), "contains" (the input
    lies inside it) or "lies inside" (it lies inside the input). Local paths are compared resolved,
    so a symlink to either counts as the path it points to."""
    if is_local(out) and is_local(source):
        a, b = local_path(out), local_path(source)
    else:
        a, b = Path(out.rstrip("/")), Path(source.rstrip("/"))
    if a == b:
        return "is"
    if a in b.parents:
        return "contains"
    if b in a.parents:
        return "lies inside"
    return None


def check_protocol(path: str, option: str = "--out") -> None:
    """Refuse, before any work, an output URL whose protocol fsspec does not know, or one whose
    contents would not outlive the process (`memory://`)."""
    if is_local(path):
        return
    protocol = path.split("://", 1)[0]
    if protocol == "memory":
        raise UsageError(
            f"{option} {path!r} is in memory: it would be lost when the process ends; give a "
            f"directory or a lasting URL (s3://, gs://, ...)"
        )
    import fsspec

    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as err:
        raise UsageError(f"{option} {path!r}: unknown or unavailable protocol {protocol!r} ({err})") from None


def check_output(path: str, kind: str, option: str = "--out", inputs: tuple[str, ...] = ()) -> bool:
    """Refuse `path` unless it is free or a `kind` store/report, and apart from every input (not it,
    not inside it, not holding it); returns whether it exists already. Recovers first from a
    replacement a kill interrupted (`recover`).

    kind: schema.RUN_KIND, schema.RESULTS_KIND or "report"."""
    check_protocol(path, option)
    for source in inputs:
        how = overlap(path, source) if source else None
        if how == "is":
            raise UsageError(f"{option} {path!r} is the input it reads: choose another path")
        if how:
            raise UsageError(
                f"{option} {path!r} {how} the input {source!r}: replacing it would destroy what it reads; "
                f"choose a path apart from it"
            )
    if kind == "report" and not is_local(path):
        raise UsageError(f"{option} {path!r} is a URL: a report is a local folder; give a local path")
    if is_local(path):
        recover(path)
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


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files_written(folder: Path) -> dict:
    try:
        record = json.loads((folder / FILES_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def check_file(path: str, option: str = "--out") -> None:
    """Refuse, before any work, a single-file output that is not a local file path, or that would
    replace a file this lab did not write there (or one changed since it did)."""
    check_protocol(path, option)
    if not is_local(path):
        raise UsageError(f"{option} {path!r} is a URL: this file is written locally; give a local path")
    p = local_path(path)
    if p.is_dir():
        raise UsageError(
            f"{option} {path!r} is a directory: give the file to write in it (e.g. {p / 'page.html'})"
        )
    if p.exists() or p.is_symlink():
        if not p.is_file() or _files_written(p.parent).get(p.name) != _sha256(p):
            raise UsageError(
                f"{option} {path!r} exists and this tool did not write it (or it changed since): "
                f"refusing to replace it; choose another path"
            )
    check_writable(str(p.parent), option)


@contextmanager
def file_output(path: str | Path):
    """Write a single file whole: yields a temporary sibling to write, then renames it in and records
    its digest (`FILES_RECORD`), so that a later run may replace it. A failure leaves the old file."""
    target = Path(path).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        yield tmp
        tmp.replace(target)
        record = _files_written(target.parent)
        record[target.name] = _sha256(target)
        rec_tmp = target.parent / f"{FILES_RECORD}.tmp{os.getpid()}"
        rec_tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        rec_tmp.replace(target.parent / FILES_RECORD)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(path: str, option: str = "--out") -> None:
    """Refuse a local path we cannot create, before any work is done."""
    check_protocol(path, option)
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


def lock_of(path: str) -> Path:
    """The lock file beside a local store (the store stays pure zarr)."""
    target = local_path(path)
    return target.with_name(target.name + LOCK_SUFFIX)


def lock_holder(lock: Path) -> tuple[dict, bool]:
    """(who holds the lock: host and pid, as far as it can be read; whether that writer is known to be
    dead: a process of this host that no longer runs)."""
    try:
        holder = json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not isinstance(holder, dict) or "pid" not in holder:
        # empty or unreadable: a start that failed between creating the lock and writing it (a full
        # disk); stale once older than a writer takes to write it
        try:
            age = time.time() - lock.stat().st_mtime
        except OSError:
            age = 0.0
        return {}, age > STALE_EMPTY_S
    dead = holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", 0) or 0))
    return holder, dead


def check_not_being_written(path: str) -> None:
    """Refuse to read a store whose writer still holds its lock (a live process on this host, or any
    on another host): its unfinished documents are being written, not missing."""
    if not is_local(path):
        return
    lock = lock_of(path)
    if not lock.is_file():
        return
    holder, dead = lock_holder(lock)
    if dead:
        return  # a dead writer's lock: the store is as it left it
    raise UsageError(
        f"store {path!r} is being written by process {holder.get('pid', '?')} on {holder.get('host', '?')}: "
        f"wait for the dump to finish (or delete {lock} if that process is gone)"
    )


@contextmanager
def write_lock(path: str, what: str = "store"):
    """Hold the store's lock while writing it; a second writer is refused with who holds it.
    A lock left by a dead process on this host is taken over. Remote stores are not locked."""
    if not is_local(path):
        yield
        return
    lock = lock_of(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder, dead = lock_holder(lock)
            if dead:
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


# -- replacing an output whole ------------------------------------------------------------------
# A new output is written into a temporary sibling `<name>.tmp<pid>-<random>`; `replace` then moves
# the old one aside to `.<name>.replaced`, renames the new one in, and removes the old one last. A
# kill at any moment leaves the old output, or the new one, under the name, or neither with the old
# one aside: `recover` (run by every stage before it checks an output) restores or completes that,
# and removes temporary siblings whose writer is dead.


def aside_of(target: Path) -> Path:
    return target.with_name(f".{target.name}.replaced")


def temporary_sibling(target: Path) -> Path:
    """A new empty directory beside `target`, named for this process (so `recover` knows its owner)."""
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp{os.getpid()}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; an output is as readable as any other folder
    return tmp


def _kill_point(name: str) -> None:
    """Deterministic fault injection for the catalogue: NIAH_KILL_AT=name SIGKILLs this process here."""
    if os.environ.get("NIAH_KILL_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def replace(tmp: Path, target: Path) -> None:
    """Put the finished output `tmp` at `target`: the old one aside, the new one in, the old one removed."""
    import shutil

    recover(target)
    aside = aside_of(target)
    if target.exists():
        os.rename(target, aside)
        _kill_point("replace:aside")
    os.rename(tmp, target)
    _kill_point("replace:swapped")
    shutil.rmtree(aside, ignore_errors=True)


def recover(path: str | Path) -> str | None:
    """Finish a replacement a kill interrupted: the old output restored when the new one never
    arrived, the old one removed when it did; temporary siblings of dead writers removed. Returns
    what it did, or None."""
    import re
    import shutil

    target = local_path(str(path)) if isinstance(path, str) else path
    if not target.parent.is_dir():
        return None
    done = None
    aside = aside_of(target)
    if aside.exists():
        if target.exists():
            shutil.rmtree(aside, ignore_errors=True)
            done = "completed"
        else:
            os.rename(aside, target)
            done = "restored"
    stale = re.compile(re.escape(target.name) + r"\.tmp(\d+)-")
    for sibling in target.parent.iterdir():
        m = stale.match(sibling.name)
        if m and sibling.is_dir() and not _alive(int(m.group(1))):
            shutil.rmtree(sibling, ignore_errors=True)
    return done


def write_dataset(ds, out: str) -> None:
    """Write an xarray Dataset (RESULTS) to a temporary sibling, then `replace`: a failed or killed
    run leaves the old output (or nothing) at `out`, never half of either."""
    import shutil
    import warnings

    from core.errors import check_signals

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not is_local(out):
            ds.to_zarr(out, mode="w", consolidated=True)
            return
        target = local_path(out)
        tmp = temporary_sibling(target)
        try:
            ds.to_zarr(tmp, mode="w", consolidated=True)
            check_signals()
            replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
