"""``import ezipc_proto`` loads nothing outside the standard library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
sys.path.insert(0, {root!r})
before = set(sys.modules)
import ezipc_proto
conn = ezipc_proto.Connection()  # the default codec
conn.receive_data(b'{{"jsonrpc":"2.0","method":"m","id":1}}\\n')
conn.next_event()
conn.send(ezipc_proto.Response(1, [1.5, "x"]))
print(json.dumps({{"file": ezipc_proto.__file__, "before": sorted(before), "after": sorted(sys.modules)}}))
"""


def foreign(modules: list[str]) -> list[str]:
    return [
        name for name in modules
        if name.partition(".")[0] not in sys.stdlib_module_names
        and name.partition(".")[0] != "ezipc_proto"
        and name != "__main__"
    ]


def probe(*flags: str) -> dict[str, list[str]]:
    out = subprocess.run(
        [sys.executable, *flags, "-c", PROBE.format(root=str(ROOT))],
        capture_output=True, text=True, check=True, timeout=60, cwd=ROOT,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def test_only_stdlib_without_site() -> None:
    # no site-packages at all: the import cannot even find a third-party module
    result = probe("-S", "-E")
    assert result["file"].startswith(str(ROOT / "ezipc_proto"))
    assert "ezipc_proto._connection" in result["after"]
    assert foreign(result["after"]) == []


def test_only_stdlib_with_site() -> None:
    # with the installed environment (msgspec, anyio... importable): still nothing loaded
    result = probe()
    loaded = sorted(set(result["after"]) - set(result["before"]))
    assert "ezipc_proto" in loaded
    assert foreign(loaded) == []
    assert "msgspec" not in result["after"]


def test_probe_would_notice() -> None:
    # the check is able to fail: a third-party module is reported
    modules = ["msgspec", "anyio._core", "json", "ezipc_proto._codec", "__main__"]
    assert foreign(modules) == ["msgspec", "anyio._core"]
