"""Servers for the web tests, each in a subprocess on loopback: ``ezipc serve
app.py:server --listen ws://127.0.0.1:0/rpc`` (uvicorn started by the CLI), plain
``uvicorn app:app --workers 2`` and ``hypercorn --worker-class trio``, all serving the
app module below."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ..cli.conftest import serving

APP = '''\
"""The app every web test serves."""
import os

import anyio

from ezipc_adapters import RemoteError, Server

server = Server(max_message_size=4096)
seen = {"cancelled": 0, "notes": []}


@server.method
def add(a, b):
    return a + b


@server.method
def echo(value):
    return value


@server.method
def pid():
    return os.getpid()


@server.method
def refuse():
    raise RemoteError(4000, "refused", {"why": "a test"})


@server.method
async def slow(seconds):
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        seen["cancelled"] += 1
        raise
    return "done"


@server.method
def cancelled():
    return seen["cancelled"]


@server.hook_notif
def note(text):
    seen["notes"].append(text)


@server.method
def notes():
    return seen["notes"]


@server.method
def connections(remote):
    return len(remote.server.remotes)


@server.method
async def ask_client(remote):
    return await remote.request("client/name", {"greeting": "hello"}, timeout=5)


@server.method
async def shout(text, remote):
    await remote.server.broadcast("shout", [text])
    return len(remote.server.remotes)


app = server.asgi()
'''


@pytest.fixture(scope="session")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("webapp")
    (folder / "webapp.py").write_text(APP)
    return folder


@pytest.fixture(scope="module")
def ws_url(app_dir: Path) -> Iterator[str]:
    """``ezipc serve webapp.py:server --listen ws://127.0.0.1:0/rpc``: its ws:// URL."""
    with serving(str(app_dir / "webapp.py") + ":server", "--listen", "ws://127.0.0.1:0/rpc") as served:
        yield served.address("ws://")


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


@contextmanager
def running(argv: list[str], port: int, cwd: Path, timeout: float = 20) -> Iterator[str]:
    """Run an ASGI server (``argv``) until the block ends; yield ``http://127.0.0.1:PORT``
    once it accepts connections."""
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError(f"{argv[2]} did not start: " + (proc.communicate()[1] or "")) from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def python_module(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", name, *args]
