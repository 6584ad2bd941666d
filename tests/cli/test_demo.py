"""``ezipc demo``: runs with no arguments, exits 0, and shows each step with its outcome."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from ezipc_adapters._cli import main

from .conftest import CLI

pytestmark = pytest.mark.timeout(60)


def check_demo_output(out: str, *, wire: bool = True) -> None:
    assert "(unexpected!)" not in out
    for number in range(1, 7):
        assert re.search(rf"^{number}\. ", out, re.MULTILINE), f"step {number} missing:\n{out}"
    assert re.search(r"✓ result: 19 in \d+\.\d+ ms", out)  # subtract, timed
    assert "server: notification log received: 'hello from the client'" in out
    assert "4 answers for 4 requests" in out and "7, 19, error -32601" in out
    assert "result: 'hello, demo client'" in out  # the server called the client back
    assert "client: the server asked for my name" in out
    assert re.search(r"server: slow was cancelled after \d+\.\d+ ms", out)
    assert re.search(r"✓ TimeoutError after \d+\.\d+ ms", out)
    for code in ("-32601", "-32602", "4000", "-32603"):
        assert f"RemoteError [{code}]" in out
    assert "server log (error): handler for 'average' raised: ZeroDivisionError" in out
    assert re.search(r"Done in \d+\.\d+ ms: the client sent \d+ messages", out)
    if wire:
        assert 'client → server  {"jsonrpc":"2.0","method":"subtract","params":[42,23],"id":1}' in out
        assert 'client ← server  {"jsonrpc":"2.0","id":1,"result":19}' in out
        assert '"method":"$/cancelRequest","params":{"id":7}' in out
    else:
        assert '"jsonrpc"' not in out


def test_demo_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out, err = capsys.readouterr()
    check_demo_output(out)
    assert err == ""
    assert "\033[" not in out  # no colours when not on a terminal


def test_demo_no_wire(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--no-wire"]) == 0
    check_demo_output(capsys.readouterr().out, wire=False)


def test_demo_trio(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("trio")
    assert main(["demo", "--backend", "trio"]) == 0
    out = capsys.readouterr().out
    check_demo_output(out)
    assert "(trio," in out


def test_demo_trio_missing() -> None:
    """Without trio, --backend trio says in one line what to install, with no traceback."""
    code = (
        "import sys; sys.modules['trio'] = None  # as if trio were not installed\n"
        "from ezipc_adapters._cli import main; raise SystemExit(main(['demo', '--backend', 'trio']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "ezipc demo: error: --backend trio needs trio, which is not installed: pip install 'ezipc[trio]'"
    ]


def test_demo_subprocess() -> None:
    """As a newcomer runs it: no arguments, exit 0, nothing on stderr (in development mode,
    where a leaked socket or task would show there), in a few seconds."""
    proc = subprocess.run(
        [*CLI, "demo"], capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "PYTHONDEVMODE": "1", "PYTHONIOENCODING": "utf-8"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    check_demo_output(proc.stdout)


def test_demo_ascii_terminal() -> None:
    proc = subprocess.run(
        [*CLI, "demo"], capture_output=True, timeout=30, check=False,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode("ascii")
    assert "client -> server" in out and "ok result: 19" in out


def test_demo_python_m_and_console_script() -> None:
    script = os.path.join(os.path.dirname(sys.executable), "ezipc")
    if not os.path.exists(script):
        pytest.skip("the ezipc console script is not installed next to this Python")
    proc = subprocess.run([script, "demo", "--no-wire"], capture_output=True, text=True, timeout=30,
                          check=False, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert proc.returncode == 0, proc.stderr
    check_demo_output(proc.stdout, wire=False)
