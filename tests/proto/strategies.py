"""Hypothesis strategies and the properties they feed, shared by the unit tests
(``test_properties.py``, few examples) and the long-running harness (``fuzz/run.py``,
many). Each ``check_*`` function states one invariant for one concrete input; the
``PROPERTIES`` table pairs it with the strategies that draw its arguments."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import strategies as st

from ezipc_proto import (
    NEED_DATA,
    Cancel,
    Closed,
    Connection,
    Error,
    ErrorCode,
    Event,
    InvalidMessage,
    JsonCodec,
    LocalProtocolError,
    MsgspecCodec,
    Notification,
    RemoteProtocolError,
    Request,
    Response,
    State,
)

from .helpers import buffer_bound, buffered, drain, frame, same, unframe

# ---- values ------------------------------------------------------------------------------------

#: Any text, lone surrogates included (JSON can carry them as escapes).
texts = st.text(st.characters(exclude_categories=()), max_size=20)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
    max_leaves=20,
)

_CANCEL_METHODS = ("$/cancelRequest", "notifications/cancelled")
methods = texts.filter(lambda m: not m.startswith("rpc.") and m not in _CANCEL_METHODS)
ids = st.integers() | texts  # what we send: int or str
params = st.none() | st.lists(json_values, max_size=5) | st.dictionaries(texts, json_values, max_size=5)
error_codes = st.integers() | st.sampled_from([-32700, -32600, -32601, -32602, -32603, -32800, -32007])

requests = st.builds(Request, methods, params, ids)
notifications = st.builds(Notification, methods, params)
responses = st.builds(Response, ids, json_values)
errors = st.builds(Error, ids | st.none(), error_codes, texts, json_values)
cancels = st.builds(Cancel, ids)
events = requests | notifications | responses | errors | cancels

#: (how the sender frames, how the receiver reads)
FRAMING_PAIRS = [
    ("ndjson", "ndjson"),
    ("content-length", "content-length"),
    ("message", "message"),
    ("ndjson", "auto"),
    ("content-length", "auto"),
    ("auto", "auto"),
]
framing_pairs = st.sampled_from(FRAMING_PAIRS)
stream_framings = st.sampled_from(["ndjson", "content-length", "auto"])
all_framings = st.sampled_from(["ndjson", "content-length", "auto", "message"])
codecs = st.sampled_from(["json", "msgspec"])
cancellations = st.sampled_from(["lsp", "mcp"])

# ---- streams -------------------------------------------------------------------------------------

_message_objects = st.one_of(
    # well-formed calls and answers, as a peer writes them
    st.builds(
        lambda m, p, i: {"jsonrpc": "2.0", "method": m, **({"params": p} if p is not None else {}), "id": i},
        methods, params, ids | st.none() | st.floats(allow_nan=False, allow_infinity=False),
    ),
    st.builds(
        lambda m, p: {"jsonrpc": "2.0", "method": m, "params": p}, methods, st.lists(json_values, max_size=3)
    ),
    st.builds(lambda i, r: {"jsonrpc": "2.0", "id": i, "result": r}, ids | st.none(), json_values),
    st.builds(lambda i, c, m: {"jsonrpc": "2.0", "id": i, "error": {"code": c, "message": m}},
              ids | st.none(), error_codes, texts),
    st.builds(lambda m, i: {"jsonrpc": "2.0", "method": m, "params": {"id": i, "requestId": i}},
              st.sampled_from(_CANCEL_METHODS), ids),
    st.builds(lambda m, i: {"jsonrpc": "2.0", "method": m, "id": i},
              st.sampled_from(["rpc.x", "rpc.discover", "ok"]), st.integers(0, 3)),
    # anything JSON at all, objects with the right member names included
    st.dictionaries(st.sampled_from(["jsonrpc", "method", "params", "id", "result", "error"]), json_values),
    json_values,
)
messages = _message_objects | st.lists(_message_objects, max_size=6)  # batches too


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """One message body: usually JSON (compact, spaced, or with a BOM), sometimes junk."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(min_size=1, max_size=40)).replace(b"\n", b" ")
    obj = draw(messages)
    text = json.dumps(obj, separators=(",", ":") if kind % 2 else (", ", ": ")).encode()
    if kind == 9:
        text = b"\xef\xbb\xbf" + text
    return text


@st.composite
def streams(draw: st.DrawFn, framing: str) -> bytes:
    """A stream of correctly framed messages, whatever their content."""
    out = b""
    for body in draw(st.lists(bodies(), max_size=8)):
        if framing == "ndjson" and draw(st.integers(0, 5)) == 0:
            out += draw(st.sampled_from([b"\n", b"\r\n", b"  \n"]))
        out += frame(body, framing)
    return out


_INTERESTING = [
    b"\n", b"\r\n", b"\r\n\r\n", b"[", b"]", b"{", b"}", b'"', b",", b":", b"\\", b"\x00", b"\xff",
    b"\xef\xbb\xbf", b"\xed\xa0\x80", b"NaN", b"1e400", b"null", b"[]", b"Content-Length: ",
    b"Content-Length: 99999999\r\n\r\n", b"Content-Length: 3\r\n\r\n", b"9" * 30,
    b'{"jsonrpc":"2.0","method":"m","id":1}', b'{"jsonrpc":"2.0","result":1,"id":1}',
]


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` with a few bytes flipped, inserted, deleted, duplicated or replaced."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.integers(0, 4))
        if op == 0 and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            data[at:at] = draw(st.sampled_from(_INTERESTING) | st.binary(min_size=1, max_size=4))
        elif op == 2:
            del data[at : at + draw(st.integers(1, 8))]
        elif op == 3:
            data[at:at] = data[at : at + draw(st.integers(1, 16))]
        else:
            data[at : at + 1] = draw(st.binary(min_size=1, max_size=1))
    return bytes(data)


@st.composite
def hostile_streams(draw: st.DrawFn, framing: str) -> bytes:
    wire = "content-length" if framing == "content-length" else "ndjson"
    if framing == "auto":
        wire = draw(st.sampled_from(["ndjson", "content-length"]))
    elif framing == "message":
        return draw(bodies())
    valid = streams(wire)
    return draw(st.one_of(valid, mutated(valid), st.binary(max_size=200)))


chunk_sizes = st.lists(st.integers(1, 80), min_size=1, max_size=8) | st.just([1]) | st.just([1 << 20])


def split(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    """``data`` in chunks of the given sizes, cycling through them."""
    i = n = 0
    while i < len(data):
        size = sizes[n % len(sizes)]
        yield data[i : i + size]
        i += size
        n += 1


# ---- JSON texts, for the codecs ------------------------------------------------------------------

number_texts = st.from_regex(r"\A-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,4})?\Z")
_WHITESPACE = st.sampled_from(
    [b"", b" ", b"\t", b"\n", b"\r\n", b"\x0c", b"\x0b", b"\xc2\xa0", b"\xef\xbb\xbf"]
)


@st.composite
def json_texts(draw: st.DrawFn) -> bytes:
    """Mostly-JSON bytes: valid texts, odd numbers, odd whitespace, escapes, mutations."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(number_texts).encode()
    if kind == 1:
        return draw(_WHITESPACE) + draw(number_texts).encode() + draw(_WHITESPACE)
    if kind == 2:
        return draw(st.binary(max_size=30))
    if kind == 3:
        escape = draw(st.from_regex(r"\A\\(u[0-9a-fA-F]{4}|[\"\\/bfnrt'0xU])\Z"))
        return b'"' + escape.encode() + draw(st.binary(max_size=4)) + b'"'
    text = json.dumps(draw(json_values), ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if kind == 5:
        return draw(mutated(st.just(text)))
    return text


# ---- the properties ------------------------------------------------------------------------------


def _register_owed(conn: Connection, id: Any, framing: str) -> None:
    """Make ``conn`` owe an answer to ``id``, as if its peer had asked."""
    conn.receive_data(frame({"jsonrpc": "2.0", "method": "setup", "id": id}, framing))
    got = drain(conn)
    assert same(got, [Request("setup", None, id)]), got


def check_roundtrip(event: Event, framings: tuple[str, str], codec: str, cancellation: str) -> None:
    """Any valid event, sent by one connection and fed to another, arrives unchanged (and
    the id tables on both sides follow)."""
    send_framing, recv_framing = framings
    sender = Connection(send_framing, codec=codec, cancellation=cancellation)  # type: ignore[arg-type]
    receiver = Connection(recv_framing, codec=codec, cancellation=cancellation)  # type: ignore[arg-type]
    kind = type(event)
    id = getattr(event, "id", None)
    answer = kind is Response or (kind is Error and id is not None)
    if answer:
        _register_owed(sender, id, "ndjson" if send_framing == "auto" else send_framing)
        receiver.send(Request("setup", None, id))  # now awaited (the bytes are not needed)
    elif kind is Cancel:
        receiver.receive_data(sender.send(Request("setup", None, id)))
        assert same(drain(receiver), [Request("setup", None, id)])
    data = sender.send(event)
    assert data
    receiver.receive_data(data)
    got = drain(receiver)
    assert same(got, [event]), (got, event, data)
    if kind is Request:
        assert list(receiver.owed) == [id] and list(sender.awaiting) == [id]
    elif answer:
        assert list(sender.owed) == [] and list(receiver.awaiting) == []
    elif kind is Cancel:
        assert list(sender.awaiting) == [] and list(receiver.owed) == [id]


def check_batch_roundtrip(calls: list[Request | Notification], framings: tuple[str, str], codec: str) -> None:
    """A batch we send arrives as its members, in order."""
    sender = Connection(framings[0], codec=codec)  # type: ignore[arg-type]
    receiver = Connection(framings[1], codec=codec)  # type: ignore[arg-type]
    receiver.receive_data(sender.send_batch(calls))
    assert same(drain(receiver), calls)


def run_stream(conn: Connection, chunks: Iterator[bytes] | list[bytes], *, eof: bool = True,
               answer: bool = True) -> tuple[list[Event], str, bytes]:
    """Feed ``chunks`` and drain after each, as an application would: answer every
    request, write every reply. Only ``RemoteProtocolError`` may escape ``next_event``, and
    only with headers to break. Checks the memory bound after every chunk, and that when
    ``receive_data`` answers False, ``next_event`` has nothing. Returns the events (in
    order), how it ended, and every byte written."""
    events: list[Event] = []
    written = b""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        may = conn.receive_data(chunk)
        try:
            for _ in range(total + 2):  # bounded: an event needs at least one byte
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                assert may, f"receive_data({chunk!r}) said False, yet next_event gave {event!r}"
                events.append(event)
                written += _react(conn, event, answer)
            else:
                raise AssertionError("next_event never returned NEED_DATA")
        except RemoteProtocolError:
            assert may, f"receive_data({chunk!r}) said False, yet next_event raised"
            assert conn.framing in ("content-length", "auto"), conn.framing
            assert conn.their_state is State.ERROR
            # it stays broken, and stops buffering
            before = buffered(conn)
            conn.receive_data(b"x" * 1000)
            assert buffered(conn) == before <= buffer_bound(conn, len(chunk))
            try:
                conn.next_event()
            except RemoteProtocolError:
                return events, "error", written
            raise AssertionError("next_event did not raise again after RemoteProtocolError") from None
        assert buffered(conn) <= buffer_bound(conn, len(chunk)), (buffered(conn), len(chunk))
    if not eof:
        return events, "open", written
    assert conn.receive_data(b"") is True
    for _ in range(total + 2):
        event = conn.next_event()
        assert event is not NEED_DATA
        events.append(event)
        written += _react(conn, event, answer)
        if type(event) is Closed:
            break
    assert conn.next_event() == events[-1]
    if answer:
        assert list(conn.owed) == []  # every request was answerable, exactly once
    return events, "closed", written


def _react(conn: Connection, event: Event | Any, answer: bool) -> bytes:
    if type(event) is InvalidMessage:
        # An error reply never names an id we still owe an answer to (the peer would get
        # two answers for one id): not the reply written now, nor a reserved method's
        # error (which may wait in a batch's reply).
        if event.error.code == ErrorCode.METHOD_NOT_FOUND and event.error.id is not None:
            assert event.error.id not in conn.owed, event
        for msg in _messages(event.reply, conn.framing):
            if isinstance(msg, dict):
                assert msg["id"] is None or msg["id"] not in conn.owed, event
        return event.reply
    if answer and type(event) is Request:
        try:
            return conn.send(Response(event.id, None))
        except LocalProtocolError as exc:
            # Even a null result can pass max_message_size: a request at the limit with
            # a short method (a response is two bytes longer), or a batch whose reply
            # already holds error replies. Then a short error says so, as a Session's
            # answer does, and it always goes.
            assert exc.error_code == ErrorCode.MESSAGE_TOO_LARGE, exc
            return conn.send(Error(event.id, ErrorCode.MESSAGE_TOO_LARGE, "Result too large"))
    return b""


def _messages(data: bytes, framing: str) -> list[Any]:
    """Messages a connection wrote, read independently of the core."""
    if framing == "message":
        return [json.loads(data)] if data else []
    return unframe(data, "ndjson" if framing == "auto" else framing)


def check_written(data: bytes, framing: str) -> None:
    """What a connection writes is well framed JSON-RPC answers (read independently)."""
    if framing == "message":
        return
    for msg in _messages(data, framing):
        for answer in msg if isinstance(msg, list) else [msg]:
            assert answer["jsonrpc"] == "2.0" and "id" in answer
            assert ("result" in answer) != ("error" in answer)


def check_hostile(case: tuple[str, bytes], sizes: list[int], limit: int | None, codec: str) -> None:
    """Any bytes: only RemoteProtocolError escapes, nothing hangs, memory stays bounded,
    every request is answerable once, and what is written is well formed."""
    framing, data = case
    options: dict[str, Any] = {"codec": codec}
    if limit is not None:
        options["max_message_size"] = limit
    conn = Connection(framing, **options)  # type: ignore[arg-type]
    chunks = [data] if framing == "message" else split(data, sizes)
    _, _, written = run_stream(conn, chunks)
    check_written(written, conn.framing)


def check_chunking(case: tuple[str, bytes], sizes: list[int], limit: int | None, codec: str) -> None:
    """However a stream is cut into chunks, the same events come out, and it ends the same."""
    framing, data = case
    options: dict[str, Any] = {"codec": codec}
    if limit is not None:
        options["max_message_size"] = limit
    whole = run_stream(Connection(framing, **options), [data] if data else [])  # type: ignore[arg-type]
    chunked = run_stream(Connection(framing, **options), split(data, sizes))  # type: ignore[arg-type]
    bytewise = run_stream(Connection(framing, **options), split(data, [1]))  # type: ignore[arg-type]
    assert same(chunked[:2], whole[:2]), (chunked[:2], whole[:2])
    assert same(bytewise[:2], whole[:2]), (bytewise[:2], whole[:2])
    assert chunked[2] == whole[2] == bytewise[2]  # and the same bytes written


_json = JsonCodec()
_msgspec = MsgspecCodec()


def _decode(codec: Any, data: bytes) -> tuple[bool, Any]:
    try:
        return True, codec.decode(data)
    except ValueError as exc:
        return False, type(exc)


def check_codecs_agree_on_bytes(data: bytes) -> None:
    """The msgspec codec accepts exactly what the stdlib codec accepts, with the same value."""
    ok_json, value_json = _decode(_json, data)
    ok_msgspec, value_msgspec = _decode(_msgspec, data)
    assert ok_json == ok_msgspec, (data, value_json, value_msgspec)
    if ok_json:
        assert same(value_msgspec, value_json), (data, value_json, value_msgspec)


def check_codecs_agree_on_values(value: Any) -> None:
    """Either codec's encoding of a value decodes, by either codec, to that very value."""
    for encoder in (_json, _msgspec):
        data = encoder.encode(value)
        for decoder in (_json, _msgspec):
            assert same(decoder.decode(data), value), (encoder.name, decoder.name, data, value)
        check_codecs_agree_on_bytes(data)


def _calls() -> st.SearchStrategy[list[Request | Notification]]:
    def unique(calls: list[Request | Notification]) -> list[Request | Notification]:
        seen: set[Any] = set()
        out: list[Request | Notification] = []
        for call in calls:
            if type(call) is Request:
                if call.id in seen:
                    continue
                seen.add(call.id)
            out.append(call)
        return out

    return st.lists(requests | notifications, min_size=1, max_size=6).map(unique).filter(bool)


#: name -> (the check, its strategies by argument name)
PROPERTIES: dict[str, tuple[Callable[..., None], dict[str, st.SearchStrategy[Any]]]] = {
    "roundtrip": (
        check_roundtrip,
        {"event": events, "framings": framing_pairs, "codec": codecs, "cancellation": cancellations},
    ),
    "batch_roundtrip": (
        check_batch_roundtrip,
        {"calls": _calls(), "framings": framing_pairs, "codec": codecs},
    ),
    "chunking": (
        check_chunking,
        {
            "case": stream_framings.flatmap(lambda f: st.tuples(st.just(f), hostile_streams(f))),
            "sizes": chunk_sizes,
            "limit": st.none() | st.integers(1, 200),
            "codec": codecs,
        },
    ),
    "hostile": (
        check_hostile,
        {
            "case": all_framings.flatmap(lambda f: st.tuples(st.just(f), hostile_streams(f))),
            "sizes": chunk_sizes,
            "limit": st.none() | st.integers(1, 200),
            "codec": codecs,
        },
    ),
    "codecs_bytes": (check_codecs_agree_on_bytes, {"data": json_texts()}),
    "codecs_values": (check_codecs_agree_on_values, {"value": json_values}),
}
