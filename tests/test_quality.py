"""The code stays ruff-clean and `mypy --strict`-clean: checked by the test suite itself,
so CI fails on a regression (skipped only where the tools are not installed)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed")
def test_ruff_is_clean() -> None:
    proc = run("ruff", "check", "--output-format", "concise", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
@pytest.mark.timeout(600)
def test_mypy_strict_is_clean() -> None:
    proc = run("mypy", "--strict", "--no-incremental")  # files come from pyproject.toml
    assert proc.returncode == 0, proc.stdout + proc.stderr
