"""Framers: a byte stream in, whole message bodies out; a body in, framed bytes out.

Every framer buffers in one ``bytearray``, remembers how far it has searched so no byte
is scanned twice, consumes with ``del buf[:n]`` only when it must wait for more data (so
a chunk holding many messages is not shifted once per message), and enforces
``max_message_size`` while scanning. ``scanned`` counts the bytes searched, so tests can
show that feeding a stream one byte at a time costs the same order as feeding it whole.

A message over the limit is skipped, not buffered: the framer discards its bytes as they
arrive and reports ``OVERSIZE`` once in its place. Both framings can do this without
losing their place (a newline ends an NDJSON message; the header gives the length of a
Content-Length one), so the connection survives and the peer gets an error reply.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Literal, Union

from ._errors import RemoteProtocolError

__all__ = ["Framer", "NdjsonFramer", "ContentLengthFramer", "MessageFramer", "AutoFramer", "OVERSIZE"]

#: Largest header block a Content-Length peer may send before its body.
MAX_HEADER_SIZE = 8192


class _Oversize(enum.Enum):
    OVERSIZE = "OVERSIZE"


OVERSIZE: Literal[_Oversize.OVERSIZE] = _Oversize.OVERSIZE
Frame = Union[bytes, bytearray, None, Literal[_Oversize.OVERSIZE]]

_BLANK = frozenset(b" \t\r")


class NdjsonFramer:
    """One message per line, ended by ``\\n``; blank lines are skipped."""

    name = "ndjson"

    def __init__(self, max_size: int) -> None:
        self._max = max_size
        self._buf = bytearray()
        self._start = 0  # first byte not yet consumed
        self._scan = 0  # bytes before this offset hold no newline
        self._skipping = False  # discarding an oversize line up to its newline
        self.scanned = 0

    def feed(self, data: bytes) -> None:
        if self._skipping:  # the buffer is empty: drop bytes up to the newline
            nl = data.find(b"\n")
            if nl < 0:
                self.scanned += len(data)
                return
            self.scanned += nl + 1
            self._skipping = False
            data = data[nl + 1 :]
        self._buf += data

    def next_frame(self) -> Frame:
        buf = self._buf
        while True:
            nl = buf.find(b"\n", self._scan)
            if nl < 0:
                end = len(buf)
                self.scanned += end - self._scan
                if self._start:
                    del buf[: self._start]
                    end -= self._start
                    self._start = 0
                self._scan = end
                if end > self._max:
                    del buf[:]
                    self._scan = 0
                    self._skipping = True
                    return OVERSIZE
                return None
            self.scanned += nl + 1 - self._scan
            start = self._start
            self._start = self._scan = nl + 1
            if nl - start > self._max:
                return OVERSIZE
            if start == nl or buf[start] in _BLANK and not buf[start:nl].strip():
                continue
            return buf[start:nl]

    def unfinished(self) -> bytes:
        return bytes(self._buf[self._start :])

    @property
    def in_message(self) -> bool:
        return self._skipping or len(self._buf) > self._start

    @staticmethod
    def frame(body: bytes) -> bytes:
        return body + b"\n"


class ContentLengthFramer:
    """The Language Server Protocol's base protocol: ``Content-Length: N\\r\\n``, other
    headers (ignored), ``\\r\\n``, then N bytes of body."""

    name = "content-length"

    def __init__(self, max_size: int) -> None:
        self._max = max_size
        self._buf = bytearray()
        self._start = 0
        self._scan = 0  # header search resumes here
        self._need = -1  # body length once the header is read, -1 while reading headers
        self._skip = 0  # body bytes still to discard (an oversize message)
        self.scanned = 0

    def feed(self, data: bytes) -> None:
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            self.scanned += n
            data = data[n:]
        self._buf += data

    def next_frame(self) -> Frame:
        buf = self._buf
        if self._skip:
            return None
        if self._need < 0:
            end = buf.find(b"\r\n\r\n", self._scan)
            if end < 0:
                size = len(buf)
                self.scanned += size - self._scan
                self._scan = max(self._start, size - 3)  # a delimiter may straddle chunks
                if size - self._start > MAX_HEADER_SIZE:
                    raise RemoteProtocolError(f"header block longer than {MAX_HEADER_SIZE} bytes")
                self._compact()
                return None
            self.scanned += end + 4 - self._scan
            if end - self._start > MAX_HEADER_SIZE:
                raise RemoteProtocolError(f"header block longer than {MAX_HEADER_SIZE} bytes")
            length = _content_length(buf[self._start : end])
            self._start = self._scan = end + 4
            if length > self._max:
                available = len(buf) - self._start
                if available >= length:
                    self._start = self._scan = self._start + length
                else:
                    del buf[:]
                    self._start = self._scan = 0
                    self._skip = length - available
                self.scanned += min(available, length)
                return OVERSIZE
            self._need = length
        start, need = self._start, self._need
        if len(buf) - start < need:
            self._compact()
            return None
        self.scanned += need
        self._need = -1
        self._start = self._scan = start + need
        return buf[start : start + need]

    def _compact(self) -> None:
        if self._start:
            del self._buf[: self._start]
            self._scan -= self._start
            self._start = 0

    def unfinished(self) -> bytes:
        return bytes(self._buf[self._start :])

    @property
    def in_message(self) -> bool:
        return bool(self._skip) or self._need >= 0 or len(self._buf) > self._start

    @staticmethod
    def frame(body: bytes) -> bytes:
        return b"Content-Length: %d\r\n\r\n" % len(body) + body


def _content_length(block: bytearray) -> int:
    if block.startswith(b"Content-Length: ") and b"\r\n" not in block:  # the usual case
        value = block[16:]
        if value.isdigit() and len(value) <= 20:
            return int(value)
    length = -1
    for line in bytes(block).split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon or not name or not name.isascii() or not value.isascii():
            raise RemoteProtocolError(f"malformed header line {line[:80]!r}")
        if name.strip().lower() == b"content-length":
            value = value.strip()
            if not value.isdigit() or len(value) > 20:
                raise RemoteProtocolError(f"malformed Content-Length {value[:40]!r}")
            if length >= 0 and int(value) != length:
                raise RemoteProtocolError("conflicting Content-Length headers")
            length = int(value)
    if length < 0:
        raise RemoteProtocolError("header block without Content-Length")
    return length


class MessageFramer:
    """No framing: each ``feed`` is one whole message (a WebSocket message, a datagram)."""

    name = "message"

    def __init__(self, max_size: int) -> None:
        self._max = max_size
        self._queue: deque[bytes] = deque()
        self.scanned = 0

    def feed(self, data: bytes) -> None:
        self._queue.append(data)

    def next_frame(self) -> Frame:
        if not self._queue:
            return None
        body = self._queue.popleft()
        self.scanned += len(body)
        return OVERSIZE if len(body) > self._max else body

    def unfinished(self) -> bytes:
        return b""

    in_message = False

    @staticmethod
    def frame(body: bytes) -> bytes:
        return body


class AutoFramer:
    """Detects the peer's framing from its first bytes: ``{`` or ``[`` (or anything that
    is not a header name) means NDJSON, a letter means Content-Length headers. Until it
    has seen a byte that decides, it frames what it sends as NDJSON."""

    name = "auto"

    def __init__(self, max_size: int) -> None:
        self._max = max_size
        self._pending = bytearray()
        self.detected: NdjsonFramer | ContentLengthFramer | None = None

    def feed(self, data: bytes) -> None:
        if self.detected is not None:
            self.detected.feed(data)
            return
        self._pending += data
        head = self._pending.lstrip()
        if not head:
            if len(self._pending) > self._max:  # an endless run of blank space
                del self._pending[:]
            return
        cls = ContentLengthFramer if head[:1].isalpha() else NdjsonFramer
        self.detected = cls(self._max)
        self.detected.feed(bytes(head))
        del self._pending[:]

    def next_frame(self) -> Frame:
        return None if self.detected is None else self.detected.next_frame()

    def unfinished(self) -> bytes:
        return b"" if self.detected is None else self.detected.unfinished()

    @property
    def in_message(self) -> bool:
        return self.detected is not None and self.detected.in_message

    @property
    def scanned(self) -> int:
        return 0 if self.detected is None else self.detected.scanned

    def frame(self, body: bytes) -> bytes:
        return (self.detected or NdjsonFramer).frame(body)


Framer = Union[NdjsonFramer, ContentLengthFramer, MessageFramer, AutoFramer]

FRAMERS: dict[str, type[Framer]] = {
    "ndjson": NdjsonFramer,
    "content-length": ContentLengthFramer,
    "message": MessageFramer,
    "auto": AutoFramer,
}
