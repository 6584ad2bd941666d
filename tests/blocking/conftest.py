"""Helpers for the blocking adapter's tests: a server in a background thread, and a raw
socket peer that writes and reads exact bytes."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ezipc_adapters.blocking import Server


@contextmanager
def serving(server: Server, *addresses: str) -> Iterator[list[str]]:
    """Serve in a background thread; yield the bound addresses; shut down after."""
    bound = server.serve_in_thread(*(addresses or ("tcp://127.0.0.1:0",)))
    try:
        yield bound
    finally:
        server.shutdown(timeout=20)
        assert server._stopped.is_set(), "the server did not stop"


def host_port(address: str) -> tuple[str, int]:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return host.strip("[]"), int(port)


class RawPeer:
    """A hand-driven peer over a plain socket: exact bytes in, exact bytes out."""

    def __init__(self, sock: socket.socket, framing: str = "ndjson") -> None:
        self.sock = sock
        self.framing = framing
        self.buffer = b""

    def send(self, data: bytes | str | dict[str, Any] | list[Any]) -> None:
        if isinstance(data, (dict, list)):
            data = json.dumps(data)
        if isinstance(data, str):
            data = data.encode()
        if self.framing == "ndjson":
            self.sock.sendall(data + b"\n")
        else:
            self.sock.sendall(b"Content-Length: %d\r\n\r\n" % len(data) + data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self, timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
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
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete message; buffered {self.buffer[:200]!r}")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"the server closed; buffered {self.buffer[:200]!r}")
            self.buffer += data

    def receive_eof(self, timeout: float = 5.0) -> bytes:
        """Everything until the server closes."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the server did not close")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return self.buffer
            if not data:
                return self.buffer
            self.buffer += data

    def close(self) -> None:
        self.sock.close()


@contextmanager
def raw_connect(address: str, framing: str = "ndjson") -> Iterator[RawPeer]:
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address[5:])
    else:
        sock = socket.create_connection(host_port(address), timeout=5)
    with sock:
        yield RawPeer(sock, framing)


def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll a condition that no event can signal (another process, a counter)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


@contextmanager
def raw_server(framing: str = "ndjson") -> Iterator[tuple[str, Callable[[], RawPeer]]]:
    """A listening socket; yields its address and ``accept()`` giving a RawPeer."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    peers: list[RawPeer] = []

    def accept() -> RawPeer:
        sock, _ = listener.accept()
        peers.append(RawPeer(sock, framing))
        return peers[-1]

    try:
        yield f"tcp://127.0.0.1:{listener.getsockname()[1]}", accept
    finally:
        for peer in peers:
            peer.close()
        listener.close()
