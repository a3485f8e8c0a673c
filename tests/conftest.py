"""Shared test helpers: run the real ``nhl`` command in a subprocess."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_tiny_data_module():
    """The tiny-data generator beside the tests (``tests/data/make_tiny_data.py``), as a module."""
    spec = importlib.util.spec_from_file_location(
        "make_tiny_data", REPO / "tests" / "data" / "make_tiny_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_tiny_data = _load_tiny_data_module()


@dataclass
class Run:
    code: int
    out: str
    err: str


def run_nhl(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> Run:
    """Run ``python -m nhlcli ARGS`` as a user would, capturing exit status and both streams."""
    proc = subprocess.run(
        [sys.executable, "-m", "nhlcli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(run: Run, *fragments: str) -> None:
    """A failed command: non-zero exit, one ``error:`` line naming the problem, no traceback."""
    assert run.code != 0, run.out
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert len(lines) == 1, run.err
    assert lines[0].startswith("error: "), run.err
    assert "Traceback" not in run.err + run.out
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), lines[0]


@pytest.fixture
def nhl():
    return run_nhl
