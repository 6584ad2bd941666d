"""docs/core.md's program is run, so the page cannot drift from the code."""

from __future__ import annotations

import builtins
import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import ezipc_proto
from ezipc_proto import Connection, Error, Notification, Request, Response

from .helpers import drain

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "core.md"


def program(index: int = 0) -> str:
    """The page's programs: the core on a plain socket, then a session driver."""
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
    assert len(blocks) == 2
    return blocks[index]


def exchange(sock: socket.socket) -> None:
    """Talk to the documented server as a client built on the core; check every answer."""
    sock.settimeout(10)
    client = Connection("ndjson")
    out = client.send(Request("subtract", [42, 23], 1))
    out += client.send(Notification("update", [1, 2]))
    out += client.send(Request("nope", None, 2))
    out += client.send_batch([Request("sum", [1, 2, 4], 3), Request("subtract", [1], 4)])
    sock.sendall(out)
    sock.sendall(b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]\n')
    got: list[Any] = []
    while len(got) < 5:
        data = sock.recv(65536)
        assert data, f"server closed early; got {got}"
        client.receive_data(data)
        got += drain(client)
    assert got[0] == Response(1, 19)
    assert type(got[1]) is Error and got[1].id == 2 and got[1].code == -32601
    rest = sorted(got[2:4], key=lambda e: e.id)
    assert rest[0] == Response(3, 7)
    assert type(rest[1]) is Error and rest[1].id == 4 and rest[1].code == -32602
    assert type(got[4]) is Error and got[4].id is None and got[4].code == -32700
    assert list(client.awaiting) == []


def test_program_over_a_socketpair() -> None:
    namespace: dict[str, Any] = {"__name__": "docs_core"}
    exec(compile(program(), str(DOC), "exec"), namespace)
    server_end, client_end = socket.socketpair()
    server_end.settimeout(10)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            namespace["serve"](server_end)
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    with client_end:
        exchange(client_end)
        client_end.shutdown(socket.SHUT_WR)  # EOF: serve() must return
        thread.join(10)
    server_end.close()
    assert not thread.is_alive(), "serve() did not return after EOF"
    assert errors == []


@pytest.mark.timeout(30)
def test_program_runs_as_written() -> None:
    """The whole program, as a process on a loopback port, served twice in a row."""
    proc = subprocess.Popen(
        [sys.executable, "-c", program(), "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"listening on port (\d+)\n", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
        port = int(match.group(1))
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                exchange(sock)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b'{"jsonrpc":"2.0","method":"subtract","params":[42,23],"id":1}\n')
            assert json.loads(sock.makefile("rb").readline()) == {"jsonrpc": "2.0", "id": 1, "result": 19}
        assert proc.poll() is None  # still serving
    finally:
        proc.terminate()
        proc.wait(10)


def test_documented_names_exist() -> None:
    text = DOC.read_text()
    for name in re.findall(r"`(?:ezipc_proto\.)?([A-Z][A-Za-z_]+)`", text):
        if name in ("EOF", "NDJSON", "OPEN", "CLOSED", "ERROR", "BOM", "NaN", "Infinity"):
            continue
        assert hasattr(ezipc_proto, name) or hasattr(builtins, name), name
    for state in ("OPEN", "CLOSED", "ERROR"):
        assert f"`{state}`" in text and hasattr(ezipc_proto.State, state)


@pytest.mark.timeout(30)
def test_the_session_driver() -> None:
    """The page's session driver: answers, an error, a timeout whose late answer is dropped
    and counted, the cancel notice the server receives, and the server's end at EOF."""
    code = program(1)
    assert len(code.splitlines()) < 80
    namespace: dict[str, Any] = {"__name__": "docs_session"}
    exec(compile(code, str(DOC), "exec"), namespace)
    server_end, client_end = socket.socketpair()
    thread = threading.Thread(target=namespace["serve"], args=(server_end,), daemon=True)
    thread.start()
    call, session = namespace["call"], ezipc_proto.Session("ndjson", now=time.monotonic())
    with client_end:
        assert call(client_end, session, "subtract", [42, 23]) == 19
        with pytest.raises(ezipc_proto.RemoteError) as info:
            call(client_end, session, "nope", [])
        assert info.value.code == -32601
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            call(client_end, session, "sleep", [0.5], timeout=0.1)
        assert time.monotonic() - started < 0.4
        assert call(client_end, session, "subtract", [1, 2]) == -1  # after the late answer
        assert session.stats.late_responses == 1 and session.stats.requests_pending == 0
        client_end.shutdown(socket.SHUT_WR)  # EOF: the server's session closes
        thread.join(10)
    server_end.close()
    assert not thread.is_alive()
