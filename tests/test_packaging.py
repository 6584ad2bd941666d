"""What the package says about itself agrees: one version everywhere, the MIT license
(file, metadata), a classifier per supported Python, and a changelog entry for the
version."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

import ezipc_proto

ROOT = Path(__file__).resolve().parent.parent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def test_one_version(project: dict[str, Any]) -> None:
    assert project["version"] == ezipc_proto.__version__


def test_mit_license(project: dict[str, Any]) -> None:
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text


def test_a_classifier_per_supported_python(project: dict[str, Any]) -> None:
    assert project["requires-python"] == ">=3.10"
    versions = sorted(
        (int(m[1]), int(m[2]))
        for c in project["classifiers"]
        if (m := re.fullmatch(r"Programming Language :: Python :: (\d+)\.(\d+)", c))
    )
    assert versions == [(3, 10), (3, 11), (3, 12), (3, 13)]


def test_the_changelog_has_the_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[?(\d+\.\d+\.\d+)\]?", changelog, flags=re.M)
    assert headings[0] == ezipc_proto.__version__  # the newest first
    assert "0.1.0" in headings
