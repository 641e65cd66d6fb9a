"""The README's commands run as shown: the quick ones (listings, a config check) are run; every
other `python -m STAGE ...` line is parsed and its option values checked by the stage's own parser."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT

QUICK = ("--list-tasks", "--list-policies", "pipelines check")


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```\n(.*?)```", text, re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("python -m ")]


def test_the_readme_is_short_and_shows_each_stage():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
    stages = {cmd.split()[2] for cmd in readme_commands()}
    assert stages == {"dump", "analyze", "viz", "pipelines"}


@pytest.mark.parametrize("command", readme_commands())
def test_a_readme_command_runs_or_parses_as_shown(command):
    argv = shlex.split(command)[2:]
    stage = argv[0]
    if any(q in command for q in QUICK):
        r = subprocess.run(
            [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip()
        return
    from core import optionkit

    if stage == "dump":
        from dump.cli import build_parser
        from dump.options import DumpOptions as cls
    elif stage == "analyze":
        from analyze.cli import build_parser
        from analyze.options import AnalyzeOptions as cls
    elif stage == "viz":
        import argparse

        from viz.options import VizOptions as cls

        def build_parser():
            p = argparse.ArgumentParser()
            optionkit.add_arguments(p, cls)
            return p
    else:
        assert argv[:2] == ["pipelines", "run"] and (ROOT / argv[2]).exists(), command
        return
    args = build_parser().parse_args(argv[1:])
    optionkit.from_args(cls, args)  # every value parsed and range-checked, as the stage does


def test_the_results_page_cites_every_output_and_matches_its_json():
    page = (ROOT / "docs" / "results.md").read_text()
    uncited = [p.name for p in (ROOT / "bench" / "results").iterdir() if p.name not in page]
    assert not uncited, f"bench/results files that docs/results.md does not cite: {uncited}"
    r = subprocess.run(
        [sys.executable, "bench/results_page.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
