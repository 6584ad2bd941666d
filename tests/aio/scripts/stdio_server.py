"""A tiny server on this process's stdin/stdout: ``stdio_server.py FRAMING``.

Used by tests/aio/test_transports.py through ``connect_subprocess``.
"""

from __future__ import annotations

import os
import sys

import anyio

from ezipc_adapters import Remote, Server

server = Server(framing=sys.argv[1])


@server.method
def add(a: int, b: int) -> int:
    return a + b


@server.method
def pid() -> int:
    return os.getpid()


@server.method
async def sleep(seconds: float) -> str:
    await anyio.sleep(seconds)
    return "slept"


@server.method
async def ask_parent(remote: Remote, method: str, params: object = None) -> object:
    """Call back into the parent (the client) and return its answer."""
    return await remote.request(method, params, timeout=10)


@server.method
async def tell_parent(remote: Remote, method: str, params: object = None) -> str:
    await remote.notify(method, params)
    return "sent"


if __name__ == "__main__":
    server.start("stdio")
