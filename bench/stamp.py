"""The provenance line every benchmark prints first: the commit, the command line, the machine and
the date, so that a committed output says what made it (`docs/results.md` cites these outputs)."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys


def line() -> str:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "+uncommitted"
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            machine += ", " + ", ".join(
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            )
    except ImportError:
        pass
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"# commit {commit}; command: {command}; machine: {machine}; {when}"


def stamp() -> None:
    print(line(), flush=True)
