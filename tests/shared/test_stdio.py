"""Servers in child processes: every client kind drives a child that serves on its stdio
with every server kind (``connect_subprocess`` / ``Server.start("stdio")``), calls both
ways, and a clean end (closing stdin makes the child's server shut down and exit by
itself); ``start(ready=)`` and a graceful shutdown on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from .conftest import connecting_subprocess, message, raw_connect

pytestmark = pytest.mark.timeout(30)

CHILD = """
import os, sys
kind = sys.argv[1]
if kind == "blocking":
    from ezipc_adapters.blocking import Server
elif kind == "trio":
    from ezipc_adapters.trio import Server
else:
    from ezipc_adapters.asyncio import Server

server = Server()
server.hook_request("add", lambda a, b: a + b)
server.hook_request("pid", lambda: os.getpid())

@server.method
async def ask(remote):
    result = remote.request("client/name")
    return await result if hasattr(result, "__await__") else result

server.start("stdio")
"""


def test_a_child_serving_on_stdio(server_kind: str, client_kind: str) -> None:
    def hooks(client: Any) -> None:
        client.hook_request("client/name", lambda: client_kind)

    argv = [sys.executable, "-c", CHILD, server_kind]
    for framing in ("ndjson", "content-length"):
        with connecting_subprocess(client_kind, argv, setup=hooks, framing=framing) as peer:
            process = peer.run(lambda: peer.remote.data["process"])
            assert peer.request("add", [1, 2]) == 3
            assert peer.request("pid") == process.pid
            assert peer.request("ask") == client_kind  # the child calls back
            assert peer.batch([("add", [2, 2]), ("add", [3, 3])]) == [4, 6]
        assert process.returncode == 0  # it ended by itself once its stdin closed


SLOW_SERVER = """
import sys
kind, address = sys.argv[1], sys.argv[2]
out = sys.stderr if address == "stdio" else sys.stdout  # (stdio: stdout is the connection)
if kind == "blocking":
    from ezipc_adapters.blocking import Server
elif kind == "trio":
    from ezipc_adapters.trio import Server
else:
    from ezipc_adapters.asyncio import Server

server = Server(shutdown_timeout=5)

@server.method
async def slow():
    import anyio
    print("started", file=out, flush=True)
    await anyio.sleep(0.3)
    return "finished"

server.start(address, ready=lambda addresses: print(*addresses, file=out, flush=True))
print("stopped", file=out, flush=True)
"""


def test_start_reports_readiness_and_a_signal_shuts_down_gracefully(server_kind: str) -> None:
    """``start(*addresses, ready=)`` blocks until SIGTERM, then shuts down gracefully
    (work in flight finishes) and returns."""
    argv = [sys.executable, "-c", SLOW_SERVER, server_kind, "tcp://127.0.0.1:0"]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout is not None
        address = child.stdout.readline().strip()
        assert address.startswith("tcp://127.0.0.1:")
        with raw_connect(address) as peer:
            peer.send(message("slow", id=1))
            assert child.stdout.readline() == "started\n"
            child.send_signal(signal.SIGTERM)
            assert peer.receive() == {"jsonrpc": "2.0", "id": 1, "result": "finished"}
            assert peer.receive_eof() == b""
        assert child.wait(10) == 0
        assert child.stdout.read() == "stopped\n"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_signal_shuts_a_stdio_server_down_gracefully(server_kind: str) -> None:
    """A server on its stdio shuts down on SIGTERM as one on a socket does: the call in
    flight finishes and is answered, nothing is logged as failed, and it exits by itself.
    (The async servers used to cancel the stdio connection outright: the call went
    unanswered, and its handler was logged as having raised.)"""
    child = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, server_kind, "stdio"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stdin is not None and child.stdout is not None and child.stderr is not None
        child.stdin.write(b'{"jsonrpc": "2.0", "id": 1, "method": "slow"}\n')
        child.stdin.flush()
        while (line := child.stderr.readline()) != b"started\n":  # (after start()'s own lines)
            assert line, "the child ended"
        child.send_signal(signal.SIGTERM)
        assert child.stdout.readline() == b'{"jsonrpc":"2.0","id":1,"result":"finished"}\n'
        assert child.stdout.read() == b""  # EOF: it closed its side
        assert child.wait(10) == 0
        log = child.stderr.read().decode()
        assert log.splitlines()[-1:] == ["stopped"]
        assert "raised" not in log and "Traceback" not in log
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


STUBBORN = """
import signal, sys, time
if "--ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
sys.stdout.write('{"jsonrpc": "2.0", "method": "ready"}\\n')
sys.stdout.flush()
time.sleep(60)
"""


@pytest.mark.parametrize("ignore_term", [False, True], ids=["terminated", "killed"])
def test_closing_gives_a_child_terminate_timeout_to_exit_then_ends_it(client_kind: str, ignore_term: bool) -> None:
    """``connect_subprocess``'s close: stdin closed, ``terminate_timeout`` for the child to
    exit, then SIGTERM, as long again, then SIGKILL. (The blocking client waited 2 s more
    first, for the child's stdout to end, whatever ``terminate_timeout`` said.)"""
    ready = threading.Event()

    def hooks(client: Any) -> None:
        client.hook_notif("ready", ready.set)

    argv = [sys.executable, "-c", STUBBORN, *(["--ignore-term"] if ignore_term else [])]
    with connecting_subprocess(client_kind, argv, setup=hooks, terminate_timeout=0.4) as peer:
        process = peer.run(lambda: peer.remote.data["process"])
        assert ready.wait(10)  # its signal handling is set up
        start = time.monotonic()
    elapsed = time.monotonic() - start
    assert process.returncode == (-signal.SIGKILL if ignore_term else -signal.SIGTERM)
    steps = 2 if ignore_term else 1  # wait after EOF, (wait after SIGTERM,) then it ends
    assert steps * 0.4 * 0.9 <= elapsed < steps * 0.4 + 1.0
