"""Framing: NDJSON, Content-Length headers, auto detection and bare messages, fed every
way; limits; EOF; and the linear-time guarantee, counted in bytes scanned."""

from __future__ import annotations

import pytest

from ezipc_proto import (
    Closed,
    Connection,
    Error,
    ErrorCode,
    InvalidMessage,
    LocalProtocolError,
    Notification,
    RemoteProtocolError,
    Request,
    Response,
    State,
)
from ezipc_proto._framing import MAX_HEADER_SIZE

from .helpers import (
    STREAM_FRAMINGS,
    TRAILER_EVENT,
    body,
    buffered,
    drain,
    fatal_three_ways,
    feed_bytewise,
    feed_whole,
    frame,
    parse_three_ways,
    same,
)

NOTE = {"jsonrpc": "2.0", "method": "note", "params": [1]}
NOTE_EVENT = Notification("note", [1])
REQ = {"jsonrpc": "2.0", "method": "req", "params": {"a": "b"}, "id": 7}
REQ_EVENT = Request("req", {"a": "b"}, 7)


# ---- NDJSON ---------------------------------------------------------------------------


def test_ndjson_one_message_per_line() -> None:
    data = frame(NOTE) + frame(REQ)
    assert same(parse_three_ways(data), [NOTE_EVENT, REQ_EVENT])


@pytest.mark.parametrize("blank", [b"\n", b"\r\n", b"  \n", b"\t \r\n", b"\n\n\n"])
def test_ndjson_blank_lines_are_skipped(blank: bytes) -> None:
    data = blank + frame(NOTE) + blank + frame(REQ) + blank
    assert same(parse_three_ways(data), [NOTE_EVENT, REQ_EVENT])


def test_ndjson_crlf_lines() -> None:
    data = body(NOTE) + b"\r\n" + body(REQ) + b"\r\n"
    assert same(parse_three_ways(data), [NOTE_EVENT, REQ_EVENT])


def test_ndjson_whitespace_around_message() -> None:
    data = b"  \t" + body(NOTE) + b" \t\r\n"
    assert same(parse_three_ways(data), [NOTE_EVENT])


def test_ndjson_send_writes_one_line() -> None:
    conn = Connection("ndjson")
    data = conn.send(Notification("a\nb", ["x\ny", "\u2028"]))
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    peer = Connection("ndjson")
    assert same(feed_whole(peer, data), [Notification("a\nb", ["x\ny", "\u2028"])])


# ---- Content-Length -------------------------------------------------------------------


def test_content_length_basic() -> None:
    data = frame(NOTE, "content-length") + frame(REQ, "content-length")
    assert same(parse_three_ways(data, "content-length"), [NOTE_EVENT, REQ_EVENT])


def test_content_length_send() -> None:
    conn = Connection("content-length")
    data = conn.send(Notification("note", [1]))
    assert data == b"Content-Length: %d\r\n\r\n" % len(body(NOTE)) + body(NOTE)


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Length: %d\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8",
        b"Content-Type: application/vscode-jsonrpc; charset=utf8\r\nContent-Length: %d",
        b"content-length: %d",
        b"CONTENT-LENGTH:%d",
        b"Content-Length:    %d   ",
        b"Content-Length: 000%d",
        b"X-Whatever: yes\r\nContent-Length: %d\r\nX-Other:",
        b"Content-Length: %d\r\nContent-Length: %d",  # the same twice: no conflict
    ],
)
def test_content_length_other_headers_ignored(headers: bytes) -> None:
    msg = body(NOTE)
    n = headers.count(b"%d")
    data = headers % ((len(msg),) * n) + b"\r\n\r\n" + msg
    assert same(parse_three_ways(data * 2, "content-length"), [NOTE_EVENT, NOTE_EVENT])


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Type: application/json",  # no length at all
        b"Content-Length: abc",
        b"Content-Length: -1",
        b"Content-Length: +5",
        b"Content-Length: 1.5",
        b"Content-Length: 0x10",
        b"Content-Length: ",
        b"Content-Length: 123456789012345678901",  # 21 digits
        b"Content-Length: 5\r\nContent-Length: 6",  # conflicting
        b"Content-Length 5",  # no colon
        b": 5",  # no name
        b"Content-Length: 5\r\nbroken line",
        "Cont\u00e9nt-Length: 5".encode(),  # not ASCII
        b"Content-Length: \xd9\xa5",  # a non-ASCII digit
        b"\r\nContent-Length: 5",  # a stray blank line before the headers
        b'{"jsonrpc": "2.0"}\r\nContent-Length: 5',  # not a header's name (not a token)
        b"Content Length: 5",  # nor this
    ],
)
def test_content_length_bad_header_is_fatal(headers: bytes) -> None:
    data = frame(NOTE, "content-length") + headers + b"\r\n\r\n" + b'{"a":1}'
    events, conn = fatal_three_ways(data, "content-length", RemoteProtocolError)
    assert same(events, [NOTE_EVENT])  # what came before the bad header was delivered
    assert conn.their_state is State.ERROR
    with pytest.raises(RemoteProtocolError):  # and it stays broken
        conn.next_event()
    assert conn.our_state is State.OPEN
    # sending still works, e.g. a last error reply before closing
    err = conn.send(Error(None, ErrorCode.PARSE_ERROR, "bad header"))
    assert err.startswith(b"Content-Length: ")
    assert conn.send(Notification("bye")).endswith(b'"bye"}')
    # and bytes arriving afterwards are not buffered
    before = buffered(conn)
    conn.receive_data(b"x" * 100_000)
    assert buffered(conn) == before


@pytest.mark.parametrize(
    "block",
    [
        b"Content-Length: %d\n\n",  # every line ended by a bare LF
        b"Content-Length: %d\r\n\n",  # the blank line's
        b"Content-Length: %d\n\r\n",  # the header line's
        b"Content-Type: x\nContent-Length: %d\r\n\n",
    ],
)
def test_content_length_bare_lf_header_lines_are_fatal_at_once(block: bytes) -> None:
    """The base protocol ends each header line with CRLF: a block ended otherwise would
    never end, so it is refused as soon as its blank line is in (it waited for good, or
    until message_timeout, for the CRLF CRLF that never came)."""
    msg = body(NOTE)
    data = frame(NOTE, "content-length") + block % len(msg) + msg
    events, conn = fatal_three_ways(data, "content-length", RemoteProtocolError)
    assert same(events, [NOTE_EVENT])
    conn = Connection("content-length")
    conn.receive_data(block % len(msg))  # (the body not even sent)
    with pytest.raises(RemoteProtocolError, match="bare"):
        drain(conn)


def test_content_length_header_block_too_long() -> None:
    data = b"X-Pad: " + b"a" * MAX_HEADER_SIZE + b"\r\nContent-Length: 2\r\n\r\n{}"
    fatal_three_ways(data, "content-length", RemoteProtocolError)
    # and without a delimiter ever coming, buffering stops at the header limit
    conn = Connection("content-length")
    with pytest.raises(RemoteProtocolError, match="header"):
        for _ in range(100):
            conn.receive_data(b"a" * 1000)
            drain(conn)
    assert conn.their_state is State.ERROR


@pytest.mark.parametrize("size", [MAX_HEADER_SIZE - 3, MAX_HEADER_SIZE - 1, MAX_HEADER_SIZE])
def test_content_length_header_block_at_the_limit(size: int) -> None:
    """A header block of up to MAX_HEADER_SIZE bytes is fine however it is chunked."""
    msg = body(NOTE)
    head = b"Content-Length: %d\r\nX-Pad: " % len(msg)
    head += b"a" * (size - len(head))
    assert len(head) == size
    data = head + b"\r\n\r\n" + msg
    assert same(parse_three_ways(data, "content-length"), [NOTE_EVENT])


def test_content_length_body_may_hold_anything() -> None:
    # the body is read by its length, newlines and header-like text included
    msg = b'{"jsonrpc":"2.0",\r\n\r\n"method":"Content-Length: 5",\n"params":[]}'
    data = frame(msg, "content-length")
    assert same(parse_three_ways(data, "content-length"), [Notification("Content-Length: 5", [])])


def test_content_length_zero_is_a_parse_error() -> None:
    events = parse_three_ways(b"Content-Length: 0\r\n\r\n", "content-length")
    assert len(events) == 1 and type(events[0]) is InvalidMessage
    assert events[0].error.code == ErrorCode.PARSE_ERROR


# ---- oversize ----------------------------------------------------------------------------


@pytest.mark.parametrize("framing", STREAM_FRAMINGS)
def test_message_at_the_limit_is_accepted(framing: str) -> None:
    msg = body({"jsonrpc": "2.0", "method": "m", "params": ["x" * 100]})
    events = parse_three_ways(frame(msg, framing), framing, max_message_size=len(msg))
    assert same(events, [Notification("m", ["x" * 100])])


@pytest.mark.parametrize("framing", STREAM_FRAMINGS)
@pytest.mark.parametrize("extra", [1, 2, 1000])
def test_oversize_is_skipped_and_reported(framing: str, extra: int) -> None:
    limit = 200
    big = body({"jsonrpc": "2.0", "method": "m", "params": ["x" * (limit + extra)], "id": 1})
    assert len(big) > limit
    data = frame(NOTE, framing) + frame(big, framing) + frame(REQ, framing)
    events = parse_three_ways(data, framing, max_message_size=limit)
    assert len(events) == 3
    assert same(events[0], NOTE_EVENT)
    assert same(events[2], REQ_EVENT)
    bad = events[1]
    assert type(bad) is InvalidMessage
    assert bad.error.code == ErrorCode.MESSAGE_TOO_LARGE == -32007
    assert bad.error.id is None
    (reply,) = feed_whole(Connection(framing), bad.reply)  # the reply is a framed -32007 error
    assert type(reply) is Error and reply.code == -32007 and reply.id is None


@pytest.mark.parametrize(
    ("framing", "wire"),
    [
        ("ndjson", "ndjson"),
        ("content-length", "content-length"),
        ("auto", "ndjson"),
        ("auto", "content-length"),
    ],
)
@pytest.mark.parametrize("chunk", [1, 7, 1000, 5000])
def test_oversize_memory_stays_bounded(framing: str, wire: str, chunk: int) -> None:
    limit = 1000
    big = b'{"jsonrpc":"2.0","method":"m","params":["' + b"x" * 50_000 + b'"]}'
    data = frame(big, wire) * 2 + frame(NOTE, wire)
    conn = Connection(framing, max_message_size=limit)  # type: ignore[arg-type]
    events = []
    for i in range(0, len(data), chunk):
        conn.receive_data(data[i : i + chunk])
        events += drain(conn)
        assert buffered(conn) <= limit + chunk
    assert conn.framing == wire
    assert [type(e) for e in events] == [InvalidMessage, InvalidMessage, Notification]
    assert all(e.error.code == ErrorCode.MESSAGE_TOO_LARGE for e in events[:2])  # type: ignore[union-attr]
    assert same(events[2], NOTE_EVENT)


@pytest.mark.parametrize("framing", STREAM_FRAMINGS)
def test_oversize_cut_off_by_eof(framing: str) -> None:
    big = frame(b"[" + b"1," * 1000 + b"1]", framing)[:-10]
    for feed in (feed_whole, feed_bytewise):
        conn = Connection(framing, max_message_size=100)  # type: ignore[arg-type]
        events = feed(conn, big)
        assert [type(e) for e in events] == [InvalidMessage]
        conn.receive_data(b"")
        assert drain(conn) == [Closed(b"")]  # the skipped bytes are gone, not kept


def test_oversize_ndjson_blank_run() -> None:
    # a line of nothing but blanks longer than the limit counts as oversize, not as blank
    data = b" " * 300 + b"\n" + frame(NOTE)
    events = parse_three_ways(data, max_message_size=100)
    assert [type(e) for e in events] == [InvalidMessage, Notification]


# ---- auto detection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "detected"),
    [
        (frame(NOTE, "ndjson") * 2, "ndjson"),
        (b"\n\r\n  " + frame(NOTE, "ndjson") * 2, "ndjson"),
        (b"[" + body(NOTE) + b"]\n" + frame(NOTE, "ndjson"), "ndjson"),
        (frame(NOTE, "content-length") * 2, "content-length"),
        (b"\r\n" + frame(NOTE, "content-length") * 2, "content-length"),
        (
            b"content-length: %d\r\n\r\n" % len(body(NOTE)) + body(NOTE) + frame(NOTE, "content-length"),
            "content-length",
        ),
    ],
)
def test_auto_detects(data: bytes, detected: str) -> None:
    events = parse_three_ways(data, "auto", trailing=False)
    assert same(events, [NOTE_EVENT, NOTE_EVENT])
    conn = Connection("auto")
    assert conn.framing == "auto"
    assert conn.send(Notification("x")) == b'{"jsonrpc":"2.0","method":"x"}\n'  # NDJSON until detected
    conn.receive_data(b"\n ")
    assert conn.framing == "auto"  # blank space decides nothing
    conn.receive_data(data.lstrip())
    assert conn.framing == detected
    # answers in kind
    sent = conn.send(Notification("x"))
    peer = Connection(detected)  # type: ignore[arg-type]
    assert same(feed_whole(peer, sent), [Notification("x")])
    if detected == "content-length":
        assert sent.startswith(b"Content-Length: ")


def test_auto_with_trailer() -> None:
    for framing in STREAM_FRAMINGS:
        assert same(parse_three_ways(frame(REQ, framing), "auto", trailing=False), [REQ_EVENT])
    # the trailer in the detected framing
    data = frame(REQ, "content-length") + frame(NOTE, "content-length")
    assert same(parse_three_ways(data, "auto", trailing=False), [REQ_EVENT, NOTE_EVENT])


def test_auto_eof_before_detection() -> None:
    conn = Connection("auto")
    conn.receive_data(b"  \n")
    conn.receive_data(b"")
    assert drain(conn) == [Closed()]
    assert conn.their_state is State.CLOSED


def test_auto_garbage_as_headers_is_fatal() -> None:
    # a letter first means headers; garbage there is as fatal as in content-length
    fatal_three_ways(b"hello world\r\n\r\n{}", "auto", RemoteProtocolError)


# ---- message framing ---------------------------------------------------------------------


def test_message_framing() -> None:
    conn = Connection("message")
    pretty = b'{\n  "jsonrpc": "2.0",\n  "method": "m",\n  "id": 1\n}'
    conn.receive_data(pretty)
    conn.receive_data(body(NOTE))
    conn.receive_data(b"{oops")
    events = drain(conn)
    assert same(events[:2], [Request("m", None, 1), NOTE_EVENT])
    assert type(events[2]) is InvalidMessage and events[2].error.code == ErrorCode.PARSE_ERROR
    assert events[2].reply.startswith(b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700')
    assert not events[2].reply.endswith(b"\n")  # bare JSON
    assert conn.send(Response(1, 2)) == b'{"jsonrpc":"2.0","id":1,"result":2}'
    # one receive_data is one message: two in one call are not valid JSON
    conn.receive_data(body(NOTE) + body(NOTE))
    (bad,) = drain(conn)
    assert type(bad) is InvalidMessage and bad.error.code == ErrorCode.PARSE_ERROR
    conn.receive_data(b"")
    assert drain(conn) == [Closed()]


def test_message_framing_oversize() -> None:
    conn = Connection("message", max_message_size=10)
    conn.receive_data(b"[" + b"1," * 10 + b"1]")
    conn.receive_data(b"[1]")
    big, small = drain(conn)
    assert type(big) is InvalidMessage and big.error.code == ErrorCode.MESSAGE_TOO_LARGE
    assert type(small) is InvalidMessage and small.error.code == ErrorCode.INVALID_REQUEST


# ---- EOF -------------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", STREAM_FRAMINGS)
def test_eof_between_messages(framing: str) -> None:
    for feed in (feed_whole, feed_bytewise):
        conn = Connection(framing)  # type: ignore[arg-type]
        assert same(feed(conn, frame(NOTE, framing)), [NOTE_EVENT])
        assert not conn.in_message
        conn.receive_data(b"")
        assert drain(conn) == [Closed(b"")]
        assert conn.their_state is State.CLOSED
        assert conn.next_event() == Closed(b"")  # again on every call
        assert conn.next_event() == Closed(b"")
        conn.receive_data(b"")  # a second EOF is harmless
        with pytest.raises(LocalProtocolError, match="after EOF"):
            conn.receive_data(b"more")
        # our side is still open: answers and notifications can still be written
        assert conn.send(Notification("bye"))


@pytest.mark.parametrize(
    ("framing", "data", "unfinished"),
    [
        ("ndjson", b'{"jsonrpc":"2.0"', b'{"jsonrpc":"2.0"'),
        ("ndjson", body(NOTE), body(NOTE)),  # a last line without its newline is not taken
        ("ndjson", b"\n\n" + body(NOTE)[:5], body(NOTE)[:5]),
        ("content-length", b"Content-Len", b"Content-Len"),
        ("content-length", b"Content-Length: 36\r\n\r", b"Content-Length: 36\r\n\r"),
        # cut in the body: the partial body
        ("content-length", frame(NOTE, "content-length")[:-10], body(NOTE)[:-10]),
    ],
)
def test_eof_mid_message(framing: str, data: bytes, unfinished: bytes) -> None:
    for feed in (feed_whole, feed_bytewise):
        conn = Connection(framing)  # type: ignore[arg-type]
        stream = frame(NOTE, framing) + data
        assert same(feed(conn, stream), [NOTE_EVENT])
        assert conn.in_message
        conn.receive_data(b"")
        assert drain(conn) == [Closed(unfinished)]
        assert conn.next_event() == Closed(unfinished)


def test_eof_delivers_buffered_messages_first() -> None:
    conn = Connection()
    conn.receive_data(frame(NOTE) * 3)
    conn.receive_data(b"")
    assert same(drain(conn), [NOTE_EVENT] * 3 + [Closed()])


# ---- linear time -----------------------------------------------------------------------------


def _stream(framing: str) -> bytes:
    many = b"".join(
        frame({"jsonrpc": "2.0", "method": "m", "params": [i, "x" * (i % 50)], "id": i}, framing)
        for i in range(1500)
    )
    big = frame({"jsonrpc": "2.0", "method": "big", "params": ["y" * 100_000]}, framing)
    return many + big + many[:30_000]  # ends mid-message: that costs nothing extra either


@pytest.mark.parametrize("framing", [*STREAM_FRAMINGS, "auto"])
def test_linear_time_bytes_scanned(framing: str) -> None:
    stream = _stream("content-length" if framing == "content-length" else "ndjson")
    n = len(stream)
    whole = Connection(framing)  # type: ignore[arg-type]
    events_whole = feed_whole(whole, stream)
    bytewise = Connection(framing)  # type: ignore[arg-type]
    events_bytewise = feed_bytewise(bytewise, stream)
    assert len(events_whole) > 1500
    assert events_bytewise == events_whole
    # every byte is looked at, and none more than a few times, however it arrives
    assert n * 0.9 <= whole.bytes_scanned <= 1.1 * n
    assert n * 0.9 <= bytewise.bytes_scanned <= 4 * n
    # chunks of every size in between, too
    for chunk in (3, 100, 4096, 65536):
        conn = Connection(framing)  # type: ignore[arg-type]
        events: list[object] = []
        for i in range(0, n, chunk):
            conn.receive_data(stream[i : i + chunk])
            events += drain(conn)
        assert events == events_whole
        assert conn.bytes_scanned <= 4 * n


@pytest.mark.parametrize("framing", STREAM_FRAMINGS)
def test_linear_time_one_big_message(framing: str) -> None:
    big = frame({"jsonrpc": "2.0", "method": "big", "params": ["y" * 300_000]}, framing)
    conn = Connection(framing)  # type: ignore[arg-type]
    for i in range(0, len(big), 7):
        conn.receive_data(big[i : i + 7])
        events = drain(conn)
    assert same(events, [Notification("big", ["y" * 300_000])])
    assert conn.bytes_scanned <= 2 * len(big)


def test_trailer_constant() -> None:
    assert TRAILER_EVENT == Notification("trailer", [1, "two"])
