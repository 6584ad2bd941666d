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
import re
from collections import deque
from itertools import islice
from typing import Literal

from ._errors import RemoteProtocolError

__all__ = ["Framer", "NdjsonFramer", "ContentLengthFramer", "MessageFramer", "AutoFramer", "OVERSIZE"]

#: Largest header block a Content-Length peer may send before its body.
MAX_HEADER_SIZE = 8192


class _Oversize(enum.Enum):
    OVERSIZE = "OVERSIZE"


OVERSIZE: Literal[_Oversize.OVERSIZE] = _Oversize.OVERSIZE
Frame = bytes | bytearray | None | Literal[_Oversize.OVERSIZE]
#: A frame already cut: a message body, or OVERSIZE in place of one.
Cut = bytes | bytearray | Literal[_Oversize.OVERSIZE]
#: What ``feed`` does while no frame can be complete, as data, so that a caller feeding
#: tiny chunks can do it without a call: append to this buffer; a frame may be complete
#: once the buffer reaches this length or, if the flag is set, once a chunk holds b"\n".
#: It holds until ``next_frame`` is called again.
Sink = tuple[bytearray, int, bool]

_BLANK = frozenset(b" \t\r")
#: The usual header block, alone: taken by one regular-expression match (in C).
_SIMPLE_HEADER = re.compile(rb"Content-Length: ([0-9]{1,20})\r\n\r\n")
_LENGTHS: dict[bytes, int] = {}  # its digits -> int, for the commonest lengths
# A header's name: an HTTP token (RFC 9110), with blanks around it tolerated.
_HEADER_NAME = re.compile(rb"[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+[ \t]*")
_BARE_LF = r"header lines must end with \r\n, not a bare \n"
#: Up to this many buffered bytes, usual Content-Length messages are cut by one split of a
#: copy of the buffer (cheaper per message); beyond, by a match each (no big copies).
_SPLIT_MAX = 1 << 18
_HEADERS: dict[int, bytes] = {}  # a length -> its header block, for the commonest lengths


def _drop_blank_lines(frames: deque[Cut]) -> None:
    """Blank lines (empty, or blank space that begins with a space, tab or CR) are
    skipped; an oversize one was already replaced by ``OVERSIZE``."""
    kept = [
        f
        for f in frames
        if not isinstance(f, (bytes, bytearray)) or (f and not (f[0] in _BLANK and not f.strip()))
    ]
    frames.clear()
    frames.extend(kept)


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
        #: Frames cut but not yet taken, in order. All the complete lines in the buffer
        #: are cut at once; a connection pops this directly (one call less per message).
        self.ready: deque[Cut] = deque()

    def feed(self, data: bytes) -> bool:
        """Buffer ``data``; False if ``next_frame`` surely has nothing new to give (no
        newline came, and the line is within the limit)."""
        if self._skipping:  # the buffer is empty: drop bytes up to the newline
            nl = data.find(b"\n")
            if nl < 0:
                self.scanned += len(data)
                return False
            self.scanned += nl + 1
            self._skipping = False
            data = data[nl + 1 :]
        buf = self._buf
        buf += data
        # (``10 in data``: memchr, ~15 ns; ``b"\n" in data`` costs ~150 ns on 3.11)
        return 10 in data or len(buf) - self._start > self._max

    def sink(self) -> Sink | None:
        """What ``feed`` does now, as data (see ``Sink``); None while it discards."""
        if self._skipping:
            return None
        return self._buf, self._start + self._max + 1, True

    def next_frame(self) -> Frame:
        ready = self.ready
        if ready:
            return ready.popleft()
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
            # Cut every complete line now: the first (which may have begun in an earlier
            # chunk) by a slice, the rest by one split in C. Every byte is scanned once.
            start = self._start
            last = buf.rfind(b"\n", nl)
            self.scanned += len(buf) - self._scan
            limit = self._max
            ready.append(OVERSIZE if nl - start > limit else buf[start:nl])
            # A blank line is empty or begins with a byte <= 32, and so does the least of
            # the lines if any is: one min() in C, not a test per line.
            maybe_blank = buf[start] <= 32
            if last > nl:
                with memoryview(buf) as view:
                    lines = view[nl + 1 : last].tobytes().split(b"\n")
                maybe_blank = maybe_blank or min(lines)[:1] <= b" "
                if last - nl > limit and max(map(len, lines)) > limit:
                    ready.extend(OVERSIZE if len(line) > limit else line for line in lines)
                else:
                    ready.extend(lines)
            if maybe_blank:
                _drop_blank_lines(ready)
            del buf[: last + 1]
            self._start = 0
            self._scan = len(buf)  # what follows the last newline holds none
            if ready:
                return ready.popleft()

    def unfinished(self) -> bytes:
        return bytes(self._buf[self._start :])

    @property
    def in_message(self) -> bool:
        return self._skipping or len(self._buf) > self._start or bool(self.ready)

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
        self._split_ok = True  # the peer sends only the usual header (see _cut_by_split)
        self.scanned = 0
        #: Frames cut but not yet taken, in order (see ``NdjsonFramer.ready``).
        self.ready: deque[Cut] = deque()

    def feed(self, data: bytes) -> bool:
        """Buffer ``data``; False if ``next_frame`` surely has nothing new to give (a
        body still short of its length, or a header block not ended and within the limit)."""
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            self.scanned += n
            data = data[n:]
        buf = self._buf
        buf += data
        if self._need >= 0:
            return len(buf) - self._start >= self._need
        return 10 in data or len(buf) - self._start > MAX_HEADER_SIZE + 3  # (10: b"\n")

    def sink(self) -> Sink | None:
        """What ``feed`` does now, as data (see ``Sink``); None while it discards."""
        if self._skip:
            return None
        if self._need >= 0:  # in a body: complete at its length
            return self._buf, self._start + self._need, False
        return self._buf, self._start + MAX_HEADER_SIZE + 4, True  # (as feed's check)

    def next_frame(self) -> Frame:
        ready = self.ready
        if ready:
            return ready.popleft()
        buf = self._buf
        if self._skip:
            return None
        if self._need < 0:
            end = buf.find(b"\r\n\r\n", self._scan)
            if end < 0:
                size = len(buf)
                self.scanned += size - self._scan
                self._scan = max(self._start, size - 3)  # a delimiter may straddle chunks
                # + 3: up to three bytes of a delimiter may follow an acceptable block
                if size - self._start > MAX_HEADER_SIZE + 3:
                    raise RemoteProtocolError(f"header block longer than {MAX_HEADER_SIZE} bytes")
                if buf.find(b"\n\n", self._start) >= 0 or buf.find(b"\n\r\n", self._start) >= 0:
                    # A blank line ended by a bare LF, or after one: no CRLF CRLF will ever end
                    # this block (a hand-written "Content-Length: 2\n\n{}" waited for good).
                    raise RemoteProtocolError(_BARE_LF)
                if self._start:
                    self._compact()
                return None
            self._cut_simple()  # a header block is complete: take the usual ones at once
            if ready:
                return ready.popleft()
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
            if start:
                self._compact()
            return None
        self.scanned += need
        self._need = -1
        frame = buf[start : start + need]
        if start + need == len(buf):  # all taken: free the buffer now (a big message's peak)
            del buf[:]
            self._start = self._scan = 0
        else:
            self._start = self._scan = start + need
        return frame

    def _cut_simple(self) -> None:
        """Cut, into ``ready``, every complete message from here on whose header block is
        exactly the usual ``Content-Length: N\\r\\n\\r\\n`` and whose body is within the
        limit. Anything else (other headers, a partial or oversize message, a bad header)
        is left to the general code in ``next_frame``, which calls this only once a header
        block is complete."""
        first = self._start
        if self._split_ok and len(self._buf) - first <= _SPLIT_MAX:
            start = self._cut_by_split(first)
        else:
            start = self._cut_by_match(first)
        if start != first:
            self.scanned += start - max(first, self._scan)
            if start == len(self._buf):  # all taken: free the buffer now
                del self._buf[:]
                start = 0
            self._start = self._scan = start

    def _cut_by_split(self, first: int) -> int:
        """All at once: one copy of the buffer and one split on ``Content-Length: `` (in
        C), then per part a partition and a check that it is exactly the digits, the
        blank line and a body of that length. A body holding that text, or another header,
        makes a part of the wrong length: cutting stops there, and if that was not the
        last part (which may just be incomplete) this way is off for the connection, so
        that such a peer does not make every call copy the buffer again. Returns the
        offset after the last message cut."""
        with memoryview(self._buf) as view:
            parts = view[first:].tobytes().split(b"Content-Length: ")
        if parts[0]:  # another header first
            self._split_ok = False
            return first
        ready, limit, lengths = self.ready, self._max, _LENGTHS
        taken = 0
        for part in islice(parts, 1, None):
            digits, blank, body = part.partition(b"\r\n\r\n")
            if not blank:  # the header is not all there yet (or not the usual one)
                break
            length = lengths.get(digits)
            if length is None:
                if not digits.isdigit() or len(digits) > 20:
                    break
                length = int(digits)
                if len(lengths) < 4096:  # int() of bytes is dear: remember a few
                    lengths[digits] = length
            if len(body) != length or length > limit:
                break
            ready.append(body)
            taken += 1
        if taken < len(parts) - 2:  # stopped before the last part
            self._split_ok = False
        return first + sum(map(len, islice(parts, 1, taken + 1))) + 16 * taken

    def _cut_by_match(self, start: int) -> int:
        """One match of a regular expression and one slice per message (a failed match
        looks at no more than about 40 bytes). Returns the offset after the last cut."""
        buf, ready, limit, size = self._buf, self.ready, self._max, len(self._buf)
        match, lengths = _SIMPLE_HEADER.match, _LENGTHS
        while (header := match(buf, start)) is not None:
            digits = header[1]
            length = lengths.get(digits)
            if length is None:
                length = int(digits)
                if len(lengths) < 4096:
                    lengths[digits] = length
            body = header.end()
            end = body + length
            if end > size or length > limit:
                break
            ready.append(buf[body:end])
            start = end
        return start

    def _compact(self) -> None:
        if self._start:
            del self._buf[: self._start]
            self._scan -= self._start
            self._start = 0

    def unfinished(self) -> bytes:
        return bytes(self._buf[self._start :])

    @property
    def in_message(self) -> bool:
        return bool(self._skip) or self._need >= 0 or len(self._buf) > self._start or bool(self.ready)

    @staticmethod
    def frame(body: bytes) -> bytes:
        n = len(body)
        header = _HEADERS.get(n)
        if header is None:  # formatting costs more than the lookup: remember a few
            header = b"Content-Length: %d\r\n\r\n" % n
            if len(_HEADERS) < 4096:
                _HEADERS[n] = header
        return header + body


def _content_length(block: bytearray) -> int:
    if block.startswith(b"Content-Length: ") and b"\r\n" not in block:  # the usual case
        value: bytes | bytearray = block[16:]
        if value.isdigit() and len(value) <= 20:
            return int(value)
    length = -1
    for line in bytes(block).split(b"\r\n"):
        if b"\n" in line:  # (a block ended by a CRLF CRLF that came later, a body between)
            raise RemoteProtocolError(_BARE_LF)
        name, colon, value = line.partition(b":")
        if not colon or _HEADER_NAME.fullmatch(name) is None or not value.isascii():
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
        self.ready: deque[Cut] = deque()  # always empty: next_frame checks each message

    def feed(self, data: bytes) -> bool:
        self._queue.append(bytes(data))  # a copy: the caller may reuse its buffer
        return True

    def sink(self) -> Sink | None:
        return None  # (every feed is a whole message)

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
        self.ready: deque[Cut] = deque()  # handed to the detected framer

    def feed(self, data: bytes) -> bool:
        if self.detected is not None:
            return self.detected.feed(data)
        self._pending += data
        head = self._pending.lstrip()
        if not head:
            if len(self._pending) > self._max:  # an endless run of blank space
                del self._pending[:]
            return False
        cls = ContentLengthFramer if head[:1].isalpha() else NdjsonFramer
        self.detected = cls(self._max)
        self.detected.ready = self.ready
        del self._pending[:]
        self.detected.feed(bytes(head))
        return True

    def next_frame(self) -> Frame:
        return None if self.detected is None else self.detected.next_frame()

    def sink(self) -> Sink | None:
        return None if self.detected is None else self.detected.sink()

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


Framer = NdjsonFramer | ContentLengthFramer | MessageFramer | AutoFramer

FRAMERS: dict[str, type[Framer]] = {
    "ndjson": NdjsonFramer,
    "content-length": ContentLengthFramer,
    "message": MessageFramer,
    "auto": AutoFramer,
}
