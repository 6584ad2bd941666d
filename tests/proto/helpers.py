"""Shared helpers for the core's tests: drive a connection, run a parse case three ways,
and connect two connections back to back."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from ezipc_proto import (
    NEED_DATA,
    Closed,
    Connection,
    Event,
    InvalidMessage,
    Notification,
    ProtocolError,
    Request,
)
from ezipc_proto._framing import MAX_HEADER_SIZE, AutoFramer, ContentLengthFramer, MessageFramer

__all__ = [
    "FRAMINGS",
    "STREAM_FRAMINGS",
    "CODECS",
    "frame",
    "body",
    "drain",
    "feed_whole",
    "feed_bytewise",
    "parse_three_ways",
    "fatal_three_ways",
    "unframe",
    "buffered",
    "buffer_bound",
    "same",
    "Pair",
    "TRAILER",
    "TRAILER_EVENT",
    "replies",
]

#: The two stream framings every parse case runs in.
STREAM_FRAMINGS = ("ndjson", "content-length")
FRAMINGS = ("ndjson", "content-length", "auto", "message")
CODECS = ("json", "msgspec")


def body(obj: Any) -> bytes:
    """Compact JSON text of ``obj`` (what a well-behaved peer writes)."""
    return json.dumps(obj, separators=(",", ":")).encode()


def frame(data: bytes | str | Any, framing: str = "ndjson") -> bytes:
    """``data`` (bytes, str, or a value to serialize) framed for ``framing``."""
    if isinstance(data, str):
        data = data.encode()
    elif not isinstance(data, (bytes, bytearray)):
        data = body(data)
    if framing in ("ndjson", "auto"):
        return bytes(data) + b"\n"
    if framing == "content-length":
        return b"Content-Length: %d\r\n\r\n" % len(data) + data
    assert framing == "message"
    return bytes(data)


def unframe(data: bytes, framing: str) -> list[Any]:
    """Split bytes written by a connection into messages and decode each as JSON (an
    independent reader: the tests do not trust the core to read its own output)."""
    out: list[Any] = []
    if framing == "ndjson":
        assert data == b"" or data.endswith(b"\n"), data
        for line in data.split(b"\n")[:-1]:
            out.append(json.loads(line))
        return out
    assert framing == "content-length"
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data
        assert head.startswith(b"Content-Length: "), head
        n = int(head[len(b"Content-Length: ") :])
        out.append(json.loads(rest[:n]))
        data = rest[n:]
    return out


def drain(conn: Connection, limit: int = 100_000) -> list[Event]:
    """Every event available now, up to ``NEED_DATA`` or ``Closed`` (bounded: a core that
    never returned ``NEED_DATA`` would fail here instead of hanging)."""
    out: list[Event] = []
    for _ in range(limit):
        event = conn.next_event()
        if event is NEED_DATA:
            return out
        out.append(event)
        if type(event) is Closed:
            return out
    raise AssertionError(f"next_event returned {limit} events without NEED_DATA")


def feed_whole(conn: Connection, data: bytes) -> list[Event]:
    conn.receive_data(data)
    return drain(conn)


def feed_bytewise(conn: Connection, data: bytes) -> list[Event]:
    events: list[Event] = []
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
        events += drain(conn)
    return events


#: A valid message appended after each parse case, to prove the connection carries on.
TRAILER = {"jsonrpc": "2.0", "method": "trailer", "params": [1, "two"]}
TRAILER_EVENT = Notification("trailer", [1, "two"])


def parse_three_ways(
    data: bytes, framing: str = "ndjson", *, trailing: bool = True, **options: Any
) -> list[Event]:
    """Parse ``data`` (already framed) fed whole, byte by byte, and followed by a valid
    message; assert that each way gives the same events (and, with trailing data, the
    trailer's event after them) and that every received event compares strictly equal.
    Returns the events."""
    whole = feed_whole(Connection(framing, **options), data)  # type: ignore[arg-type]
    bytewise = feed_bytewise(Connection(framing, **options), data)  # type: ignore[arg-type]
    assert same(bytewise, whole), (bytewise, whole)
    if trailing:
        conn = Connection(framing, **options)  # type: ignore[arg-type]
        more = feed_whole(conn, data + frame(TRAILER, framing))
        assert same(more, [*whole, TRAILER_EVENT]), (more, whole)
        # and the trailer arriving in a later chunk
        conn = Connection(framing, **options)  # type: ignore[arg-type]
        later = feed_whole(conn, data) + feed_whole(conn, frame(TRAILER, framing))
        assert same(later, [*whole, TRAILER_EVENT]), (later, whole)
    return whole


def fatal_three_ways(
    data: bytes, framing: str = "content-length", exc: type[ProtocolError] = ProtocolError, **options: Any
) -> tuple[list[Event], Connection]:
    """Feed ``data`` whole, byte by byte, and with a valid message after it; each way must
    give the same events and then raise ``exc`` from ``next_event``. Returns the events
    before the error and the (whole-fed) connection, now in the ERROR state."""
    results = []
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))], [data + frame(TRAILER, framing)]):
        conn = Connection(framing, **options)  # type: ignore[arg-type]
        events: list[Event] = []
        raised = None
        for chunk in chunks:
            conn.receive_data(chunk)
            try:
                while (event := conn.next_event()) is not NEED_DATA:
                    events.append(event)
            except exc as e:
                raised = e
                break
        assert raised is not None, f"no {exc.__name__} for {data!r}: {events}"
        results.append((events, conn))
    assert same(results[1][0], results[0][0])
    assert same(results[2][0], results[0][0])
    return results[0]


# ---- looking inside ------------------------------------------------------------------


def buffered(conn: Connection) -> int:
    """Bytes the connection's framer holds right now (the memory a peer can make it use)."""
    framer = conn._framer
    if isinstance(framer, AutoFramer):
        if framer.detected is None:
            return len(framer._pending)
        framer = framer.detected
    # frames already cut but not yet taken count too, wherever the framer keeps them
    ready = sum(len(f) for f in getattr(framer, "ready", ()) if isinstance(f, (bytes, bytearray)))
    if isinstance(framer, MessageFramer):
        return ready + sum(map(len, framer._queue))
    return ready + len(framer._buf)


def buffer_bound(conn: Connection, chunk: int) -> int:
    """The most :func:`buffered` may be after a chunk of ``chunk`` bytes was fed and the
    events drained: the message limit (or, for Content-Length, the header limit if it is
    larger: a header block is bounded on its own) plus the chunk."""
    limit = conn.max_message_size
    framer = conn._framer
    if isinstance(framer, AutoFramer):
        framer = framer.detected  # type: ignore[assignment]
    if isinstance(framer, ContentLengthFramer):
        limit = max(limit, MAX_HEADER_SIZE + 3)
    return limit + chunk


# ---- strict comparison ---------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equality that also tells ``1`` from ``1.0`` and ``True``, ``0.0`` from ``-0.0``, a
    list from a tuple, and compares events field by field the same way."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    slots = getattr(type(a), "__slots__", None)
    if slots is not None and hasattr(type(a), "__dataclass_fields__"):
        return all(same(getattr(a, f), getattr(b, f)) for f in type(a).__dataclass_fields__)
    return bool(a == b)


# ---- two connections back to back ----------------------------------------------------


class Pair:
    """Two connections wired back to back: what one ``send``s, the other receives.

    ``a_framing``/``b_framing`` say how each side frames what it sends (and reads what
    it receives); an ``"auto"`` side detects the other's framing."""

    def __init__(self, framing: str = "ndjson", b_framing: str | None = None, **options: Any) -> None:
        self.a = Connection(framing, **options)  # type: ignore[arg-type]
        self.b = Connection(b_framing or framing, **options)  # type: ignore[arg-type]
        #: every chunk of bytes that crossed the wire, as (sender, bytes)
        self.wire: list[tuple[str, bytes]] = []

    def peer(self, conn: Connection) -> Connection:
        assert conn is self.a or conn is self.b
        return self.b if conn is self.a else self.a

    def deliver(self, sender: Connection, data: bytes) -> list[Event]:
        """Hand ``data`` written by ``sender`` to its peer; the peer's new events."""
        self.wire.append(("a" if sender is self.a else "b", data))
        peer = self.peer(sender)
        if data:
            peer.receive_data(data)
        return drain(peer)

    def send(self, sender: Connection, event: Event) -> list[Event]:
        return self.deliver(sender, sender.send(event))

    def send_batch(self, sender: Connection, events: Iterable[Request | Notification]) -> list[Event]:
        return self.deliver(sender, sender.send_batch(events))

    def call(self, sender: Connection, method: str, params: Any = None) -> Request:
        """Send a request with a fresh id; assert the peer receives exactly it."""
        request = Request(method, params, sender.next_id())
        got = self.send(sender, request)
        assert same(got, [request]), got
        return request

    def close(self, sender: Connection) -> list[Event]:
        """``sender`` closes: its peer sees EOF."""
        assert sender.send(Closed()) == b""
        peer = self.peer(sender)
        peer.receive_data(b"")
        return drain(peer)


def replies(events: Sequence[Event]) -> bytes:
    """The bytes an application writes for the invalid messages among ``events``."""
    return b"".join(ev.reply for ev in events if type(ev) is InvalidMessage)
