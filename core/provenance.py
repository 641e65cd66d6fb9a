"""What an output was made from: identities that change whenever their source does.

- A RUN store's identity: its path, creation time and settings, and the state of every document
  (`done` chunks: a document re-dumped, by a resume or `dump --redo`, rewrites its chunk).
- RESULTS record that identity with the analysis settings (`results_key`); a report records its
  RESULTS' identity and the viz options (`report_key`). The pipeline reruns a stage when a key
  differs; viz refuses to draw kept sets from a RUN store that is not the results' source.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from core import schema
from core.outputs import is_local, local_path


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_path(path: str) -> str:
    """A store's path as outputs record it: absolute for a local one (valid from any directory)."""
    return str(local_path(path)) if is_local(path) else path


def run_identity(path: str) -> dict:
    """The RUN store's identity: where, when made, with which settings (`settings`), and the state
    of its documents (`documents`: the `done` flags and their chunks' write times)."""
    import zarr

    root = zarr.open_group(path, mode="r")
    attrs = dict(root.attrs)
    state = {}
    for n in schema.lengths_in(root):
        name = schema.group_name(n)
        flags = root[name]["done"][:].astype(int).tolist()
        written = []
        if is_local(path):
            chunks = local_path(path) / name / "done"
            written = sorted(
                (str(p.relative_to(chunks)), p.stat().st_mtime_ns) for p in chunks.rglob("*") if p.is_file()
            )
        state[name] = [flags, written]
    return {
        "path": source_path(path),
        "created": attrs.get("created", ""),
        "settings": digest(attrs.get("settings", {})),
        "documents": digest(state),
    }


def same_study(recorded: dict, current: dict) -> bool:
    """Two identities of one RUN store as made (path aside: a store may move), documents aside."""
    return recorded.get("created") == current.get("created") and recorded.get("settings") == current.get(
        "settings"
    )


def results_identity(path: str) -> dict:
    """A RESULTS store's identity: its provenance and when it was written."""
    import zarr

    attrs = dict(zarr.open_group(path, mode="r").attrs)
    return {
        "path": source_path(path),
        "written": attrs.get("written", ""),
        "provenance": attrs.get("provenance", ""),
    }


def read_marker(report: str | Path) -> dict:
    """The provenance a report folder records in its marker file ({} for an older report)."""
    from core.outputs import REPORT_MARKER

    try:
        text = (Path(report) / REPORT_MARKER).read_text()
        return json.loads(text.split("\n", 1)[1]) if "\n" in text else {}
    except (OSError, ValueError, IndexError):
        return {}
