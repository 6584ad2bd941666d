"""The public API as ``mypy --strict`` sees it: precise types (tests/typing/public_api.py,
with ``assert_type``), and the mistakes newcomers make reported (tests/typing/mistakes.py:
each line marked ``# error`` and no other)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "typing"

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed"),
    pytest.mark.timeout(600),
]


def mypy(path: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(cache),
         "--config-file", str(HERE.parent.parent / "pyproject.toml"), str(path)],
        capture_output=True, text=True, timeout=600, cwd=HERE.parent.parent,
    )


def test_the_public_api_is_precisely_typed(tmp_path: Path) -> None:
    proc = mypy(HERE / "public_api.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_reports_the_common_mistakes(tmp_path: Path) -> None:
    path = HERE / "mistakes.py"
    expected = {n for n, line in enumerate(path.read_text().splitlines(), 1) if re.search(r"# error:", line)}
    proc = mypy(path, tmp_path)
    reported = {int(m[1]) for m in re.finditer(r"mistakes\.py:(\d+): error", proc.stdout)}
    assert expected and reported == expected, proc.stdout
