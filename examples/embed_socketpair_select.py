"""Embedding ezipc_proto: a JSON-RPC server and client over ``socket.socketpair()``.

Both ends live in this one program and run in one thread: a ``select`` loop reads a
socket only when it is readable and writes only when it is writable, and each end's
``ezipc_proto.Connection`` turns bytes into events and events into bytes. Nothing in
the core blocks or owns the socket, which is what lets two peers share one loop.

The client sends the requests of the JSON-RPC 2.0 specification's examples: single
requests, one notification, a batch (``send_batch``), and one line that is not JSON,
which the server answers with a ready-made parse error (``InvalidMessage.reply``).

Run it: ``python examples/embed_socketpair_select.py``
"""

from __future__ import annotations

import inspect
import select
import socket
import time
from collections.abc import Callable
from typing import Any

from ezipc_proto import (
    Closed,
    Connection,
    Error,
    ErrorCode,
    Event,
    Id,
    InvalidMessage,
    Notification,
    Params,
    Request,
    Response,
)

# ---- the server's methods ----------------------------------------------------------


def subtract(minuend: float, subtrahend: float) -> float:
    return minuend - subtrahend


def total(*numbers: float) -> float:
    return sum(numbers)


def get_data() -> list[Any]:
    return ["hello", 5]


METHODS: dict[str, Callable[..., Any]] = {"subtract": subtract, "sum": total, "get_data": get_data}


def answer(request: Request) -> Response | Error:
    """Call the method a request names; any failure becomes the matching error."""
    function = METHODS.get(request.method)
    if function is None:
        return Error(request.id, ErrorCode.METHOD_NOT_FOUND, f"Method not found: {request.method}")
    args, kwargs = (request.params, {}) if isinstance(request.params, list) else ((), request.params or {})
    try:  # bind first, so a TypeError raised *inside* the method is not reported as bad params
        inspect.signature(function).bind(*args, **kwargs)
    except TypeError as exc:
        return Error(request.id, ErrorCode.INVALID_PARAMS, f"Invalid params: {exc}")
    try:
        return Response(request.id, function(*args, **kwargs))
    except Exception as exc:
        return Error(request.id, ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")


# ---- one end of the socket pair ----------------------------------------------------


class Peer:
    """A non-blocking socket, its JSON-RPC connection, and the bytes not yet written."""

    def __init__(self, sock: socket.socket, on_event: Callable[[Peer, Event], None]) -> None:
        self.sock = sock
        self.on_event = on_event
        sock.setblocking(False)
        self.conn = Connection(framing="ndjson")
        self.outbox = bytearray()  # send() gives bytes; a non-blocking socket may take only part
        self.finished = False  # we have sent Closed: shut the socket down once the outbox is empty
        self.eof = False  # the peer closed its side

    def write(self, data: bytes) -> None:
        self.outbox += data  # b"" (nothing to write yet) is harmless here

    def read(self) -> None:
        """Called when the socket is readable: feed what arrived, handle every event."""
        data = self.sock.recv(65536)  # b"" at EOF, which is also what receive_data() expects
        self.eof = not data
        self.conn.receive_data(data)
        for event in self.conn.events():  # all events available now (ending with Closed at EOF)
            self.on_event(self, event)

    def flush(self) -> None:
        """Called when the socket is writable."""
        sent = self.sock.send(self.outbox)
        del self.outbox[:sent]
        if self.finished and not self.outbox:
            self.sock.shutdown(socket.SHUT_WR)  # the peer's recv() returns b"": its EOF

    def finish(self) -> None:
        """Send nothing more: shut our side of the socket once the outbox is written."""
        self.conn.send(Closed())  # returns b"": it only stops this connection from sending
        self.finished = True
        if not self.outbox:
            self.sock.shutdown(socket.SHUT_WR)


def serve(server: Peer, event: Event) -> None:
    if isinstance(event, Request):
        # Answers to the members of a received batch come back as b"" until the last
        # one, and then as the whole batch reply: write whatever send() returns.
        server.write(server.conn.send(answer(event)))
    elif isinstance(event, Notification):
        print(f"server: notification {event.method} {event.params}")
    elif isinstance(event, InvalidMessage):
        print(f"server: invalid message ({event.error.code}), answered")
        server.write(event.reply)  # the error reply the specification prescribes, framed
    elif isinstance(event, Closed):
        server.finish()  # the client is done, so are we


def describe(method: str, params: Params) -> str:
    if isinstance(params, dict):
        return f"{method}({', '.join(f'{k}={v!r}' for k, v in params.items())})"
    return f"{method}({', '.join(map(repr, params or []))})"


def main() -> None:
    server_sock, client_sock = socket.socketpair()

    # The client's calls. Connection.next_id() gives ids that are not in flight; the
    # connection matches answers to ids only, so we remember what each id was for.
    calls: dict[Id, str] = {}

    def on_answer(client: Peer, event: Event) -> None:
        if isinstance(event, Response):
            print(f"client: {calls.pop(event.id)} = {event.result!r}")
        elif isinstance(event, Error) and event.id is None:
            print(f"client: the server could not read a message: error {event.code}")
        elif isinstance(event, Error):
            print(f"client: {calls.pop(event.id)} -> error {event.code}: {event.message}")

    server, client = Peer(server_sock, serve), Peer(client_sock, on_answer)

    def call(method: str, params: Params = None) -> Request:
        request = Request(method, params, client.conn.next_id())
        calls[request.id] = describe(method, params)
        return request

    # A line that is not JSON, first: the server's parse error (id null) then arrives
    # before every other answer, so "no request awaits an answer" means "all done".
    client.write(b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]\n')
    client.write(client.conn.send(call("subtract", [42, 23])))
    client.write(client.conn.send(call("subtract", [23, 42])))
    client.write(client.conn.send(call("subtract", {"subtrahend": 23, "minuend": 42})))
    client.write(client.conn.send(Notification("update", [1, 2, 3, 4, 5])))
    batch: list[Request | Notification] = [
        call("sum", [1, 2, 4]),
        Notification("notify_hello", [7]),
        call("get_data"),
        call("foo.get", {"name": "myself"}),
    ]
    client.write(client.conn.send_batch(batch))  # one message; its answers arrive one by one

    peers = {server.sock: server, client.sock: client}
    deadline = time.monotonic() + 5
    while not (server.eof and client.eof):
        if time.monotonic() > deadline:
            raise TimeoutError("the example took too long")
        readable = [p.sock for p in peers.values() if not p.eof]
        writable = [p.sock for p in peers.values() if p.outbox]
        ready_to_read, ready_to_write, _ = select.select(readable, writable, [], 1.0)
        for sock in ready_to_write:
            peers[sock].flush()
        for sock in ready_to_read:
            peers[sock].read()
        if not client.conn.awaiting and not client.finished:
            client.finish()  # every answer is in: close our side; the server follows

    server_sock.close()
    client_sock.close()
    print("client: done; both sides closed")


if __name__ == "__main__":
    main()
