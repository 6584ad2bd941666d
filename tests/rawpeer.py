"""A hand-driven JSON-RPC peer over a plain socket (exact bytes in, exact bytes out), and
small waiting helpers: shared by the blocking adapter's tests and the shared suite."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll a condition that no event signals (a counter, another thread's state)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


# ---- a raw peer: exact bytes ------------------------------------------------------------


def host_port(address: str) -> tuple[str, int]:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return host.strip("[]"), int(port)


class RawPeer:
    """A hand-driven peer over a plain socket: exact bytes in, exact bytes out."""

    def __init__(self, sock: socket.socket, framing: str = "ndjson") -> None:
        self.sock = sock
        self.framing = framing
        self.buffer = b""

    def frame(self, data: bytes | str | dict[str, Any] | list[Any]) -> bytes:
        if isinstance(data, (dict, list)):
            data = json.dumps(data)
        if isinstance(data, str):
            data = data.encode()
        if self.framing == "ndjson":
            return data + b"\n"
        return b"Content-Length: %d\r\n\r\n" % len(data) + data

    def send(self, *items: bytes | str | dict[str, Any] | list[Any]) -> None:
        """Send one or more messages (several go in one write)."""
        self.sock.sendall(b"".join(self.frame(item) for item in items))

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
                raise EOFError(f"the peer closed; buffered {self.buffer[:200]!r}")
            self.buffer += data

    def receive_eof(self, timeout: float = 5.0) -> bytes:
        """Everything until the peer closes."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the peer did not close; buffered {self.buffer[:200]!r}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return self.buffer
            if not data:
                return self.buffer
            self.buffer += data

    def nothing_within(self, seconds: float) -> bool:
        """True if no byte arrives (and the peer does not close) for ``seconds``."""
        if self.buffer:
            return False
        self.sock.settimeout(seconds)
        try:
            self.sock.recv(65536, socket.MSG_PEEK)
        except TimeoutError:
            return True
        return False  # data, or EOF

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


class WebSocketRawPeer:
    """The same hand-driven peer over a WebSocket, one message per text frame, with the
    ``websockets`` library's client (a peer no one here wrote)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    def send(self, *items: bytes | str | dict[str, Any] | list[Any]) -> None:
        for item in items:
            self.ws.send(json.dumps(item) if isinstance(item, (dict, list)) else item)

    def receive(self, timeout: float = 5.0) -> Any:
        return json.loads(self.ws.recv(timeout))

    def nothing_within(self, seconds: float) -> bool:
        try:
            self.ws.recv(seconds)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.ws.close()


def _raw_socket(address: str) -> socket.socket:
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(address[5:])
        return sock
    return socket.create_connection(host_port(address), timeout=5)


@contextmanager
def raw_connect(address: str, framing: str = "ndjson") -> Iterator[Any]:
    """A RawPeer (a WebSocketRawPeer for a ws:// address)."""
    if address.startswith("ws://"):
        from websockets.sync.client import connect

        with connect(address, open_timeout=5, max_size=None) as ws:
            yield WebSocketRawPeer(ws)
        return
    with _raw_socket(address) as sock:
        yield RawPeer(sock, framing)


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
