from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from ezipc_adapters import Server

BACKENDS = ["asyncio", "trio"]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@asynccontextmanager
async def serving(server: Server, *addresses: str) -> AsyncIterator[list[str]]:
    """Run ``server`` in the background; yield its bound addresses; shut it down after."""
    async with anyio.create_task_group() as tg:
        bound = await tg.start(server.serve, *(addresses or ("tcp://127.0.0.1:0",)))
        try:
            yield bound
        finally:
            server.shutdown()


class RawPeer:
    """A hand-driven peer over a plain anyio stream: exact bytes in, exact bytes out."""

    def __init__(self, stream: anyio.abc.ByteStream, framing: str) -> None:
        self.stream = stream
        self.framing = framing
        self.buffer = b""

    async def send(self, data: bytes | str | dict[str, Any] | list[Any]) -> None:
        if isinstance(data, (dict, list)):
            data = json.dumps(data)
        if isinstance(data, str):
            data = data.encode()
        if self.framing == "ndjson":
            await self.stream.send(data + b"\n")
        else:
            await self.stream.send(b"Content-Length: %d\r\n\r\n" % len(data) + data)

    async def receive(self, timeout: float = 5.0) -> Any:
        with anyio.fail_after(timeout):
            while True:
                if self.framing == "ndjson":
                    line, sep, rest = self.buffer.partition(b"\n")
                    if sep:
                        self.buffer = rest
                        return json.loads(line)
                else:
                    head, sep, rest = self.buffer.partition(b"\r\n\r\n")
                    if sep:
                        length = int(head.split(b":")[1])
                        if len(rest) >= length:
                            self.buffer = rest[length:]
                            return json.loads(rest[:length])
                self.buffer += await self.stream.receive()

    async def receive_eof(self, timeout: float = 5.0) -> bytes:
        """Everything until the peer closes."""
        with anyio.fail_after(timeout):
            while True:
                try:
                    self.buffer += await self.stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return self.buffer


@asynccontextmanager
async def raw_connect(address: str, framing: str = "ndjson") -> AsyncIterator[RawPeer]:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    stream = await anyio.connect_tcp(host.strip("[]"), int(port))
    async with stream:
        yield RawPeer(stream, framing)
