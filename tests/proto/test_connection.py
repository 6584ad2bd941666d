"""The connection: every parse and error case (fed whole, byte by byte, and with trailing
data, in both stream framings), what send refuses, ids both ways, batches, cancellation,
and the state table."""

from __future__ import annotations

import json
from typing import Any

import pytest

import ezipc_proto._connection as connection_module
from ezipc_proto import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    NEED_DATA,
    TRANSITIONS,
    Cancel,
    Closed,
    Connection,
    Error,
    ErrorCode,
    InvalidMessage,
    LocalProtocolError,
    Notification,
    Request,
    Response,
    State,
)

from .helpers import (
    STREAM_FRAMINGS,
    Pair,
    body,
    drain,
    feed_whole,
    frame,
    parse_three_ways,
    replies,
    same,
    unframe,
)


def SORT(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


framings = pytest.mark.parametrize("framing", STREAM_FRAMINGS)


def one_invalid(data: bytes | str | Any, framing: str, **options: Any) -> tuple[Error, list[Any]]:
    """Parse one framed message three ways; it must give exactly one InvalidMessage.
    Returns its error and the messages of its reply (decoded independently)."""
    (event,) = parse_three_ways(frame(data, framing), framing, **options)
    assert type(event) is InvalidMessage, event
    return event.error, unframe(event.reply, framing)


def error_reply(code: int, id: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "error": {"code": code}}


def strip_messages(messages: list[Any]) -> list[Any]:
    """Replies without their human-readable error messages (checked separately)."""
    out = []
    for message in messages:
        if isinstance(message, list):
            out.append(strip_messages(message))
            continue
        msg = dict(message)
        if "error" in msg:
            error = dict(msg["error"])
            assert isinstance(error.pop("message"), str) and error.get("data", 0) is not None
            msg["error"] = error
        out.append(msg)
    return out


# ---- parse errors: -32700, id null -------------------------------------------------------------


@framings
@pytest.mark.parametrize(
    "text",
    [
        b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
        b"{",
        b"}",
        b'{"jsonrpc":"2.0","method":"m",}',
        b"nul",
        b"'x'",
        b'{"jsonrpc":"2.0","method":"m","id":1} {"x":1}',  # two values
        b'{"jsonrpc":"2.0","method":"\xff","id":1}',  # invalid UTF-8
        b'{"jsonrpc":"2.0","method":"\xed\xa0\x80","id":1}',  # an encoded surrogate
        b'{"jsonrpc":"2.0","method":"\xc0\xaf","id":1}',  # overlong
        b'{"jsonrpc":"2.0","method":"m","params":[NaN],"id":1}',
        b'{"jsonrpc":"2.0","method":"m","params":[Infinity],"id":1}',
        b'{"jsonrpc":"2.0","method":"m","params":[-Infinity],"id":1}',
        b'{"jsonrpc":"2.0","method":"m","params":[1e400],"id":1}',
        b'{"jsonrpc":"2.0","method":"m","params":{"x":-1e400},"id":1}',
        b'{"jsonrpc":"2.0","method":"m","params":[' + b"9" * 5000 + b"],\"id\":1}",
        b'{"jsonrpc":"2.0","method":"m","params":' + b"[" * 50_000 + b"]" * 50_000 + b',"id":1}',
        b"\xef\xbb\xbf\xef\xbb\xbf[1]",  # one BOM is tolerated, not two
    ],
    ids=lambda t: repr(t[:40]),
)
def test_parse_error(framing: str, text: bytes) -> None:
    error, reply = one_invalid(text, framing)
    assert error.code == ErrorCode.PARSE_ERROR and error.id is None
    assert error.message.startswith("Parse error")
    assert strip_messages(reply) == [error_reply(-32700)]


@framings
def test_bom_is_tolerated(framing: str) -> None:
    msg = b'{"jsonrpc":"2.0","method":"m","id":1}'
    events = parse_three_ways(frame(b"\xef\xbb\xbf" + msg, framing) * 2, framing)
    assert same(events, [Request("m", None, 1), InvalidMessage(events[1].error, events[1].reply)])
    assert events[1].error.code == ErrorCode.INVALID_REQUEST  # the same id again, while owed
    # and with whitespace after the BOM
    events = parse_three_ways(frame(b"\xef\xbb\xbf \t" + msg, framing), framing)
    assert same(events, [Request("m", None, 1)])


# ---- invalid requests: -32600 ----------------------------------------------------------------


@framings
@pytest.mark.parametrize(
    ("obj", "id"),
    [
        ({"jsonrpc": "2.0", "method": 1, "params": "bar"}, None),  # the spec's example
        ({"jsonrpc": "2.0", "method": "m", "params": None, "id": 1}, 1),
        ({"jsonrpc": "2.0", "method": "m", "params": "bar", "id": "a"}, "a"),
        ({"jsonrpc": "2.0", "method": "m", "params": 5, "id": 2}, 2),
        ({"jsonrpc": "2.0", "method": "m", "params": True, "id": 2}, 2),
        ({"jsonrpc": "2.0", "method": "m", "params": "bar"}, None),  # a broken notification
        ({"jsonrpc": "2.0", "method": "m", "params": None}, None),
        ({"jsonrpc": "2.0", "method": "m", "id": True}, None),
        ({"jsonrpc": "2.0", "method": "m", "id": False}, None),
        ({"jsonrpc": "2.0", "method": "m", "id": {"a": 1}}, None),
        ({"jsonrpc": "2.0", "method": "m", "id": [1]}, None),
        ({"jsonrpc": "2.0", "method": "m", "params": "x", "id": [1]}, None),
        ({"jsonrpc": "2.0", "method": None, "id": 3}, 3),
        ({"jsonrpc": "2.0", "method": ["m"], "id": 3}, 3),
        ({"jsonrpc": "2.0", "id": 3}, 3),  # neither a request nor a response
        ({"jsonrpc": "2.0"}, None),
        ({}, None),
        ({"foo": "boo"}, None),
        ({"method": "m", "id": 4}, 4),  # no jsonrpc member
        ({"jsonrpc": "1.0", "method": "m", "id": 4}, 4),
        ({"jsonrpc": 2.0, "method": "m", "id": 4}, 4),
        ({"jsonrpc": "2.0 ", "method": "m"}, None),
        ({"jsonrpc": "2.0", "method": "m", "result": 1, "params": "x", "id": 5}, 5),
        (1, None),
        ("x", None),
        (None, None),
        (True, None),
        (1.5, None),
    ],
    ids=repr,
)
def test_invalid_request(framing: str, obj: Any, id: Any) -> None:
    error, reply = one_invalid(body(obj), framing)
    assert error.code == ErrorCode.INVALID_REQUEST
    assert same(error.id, id)
    assert error.message.startswith("Invalid Request")
    assert strip_messages(reply) == [error_reply(-32600, id)]


@framings
def test_empty_batch_is_one_invalid_request(framing: str) -> None:
    for text in (b"[]", b" [ ] "):
        error, reply = one_invalid(text, framing)
        assert error.code == ErrorCode.INVALID_REQUEST and error.id is None
        assert strip_messages(reply) == [error_reply(-32600)]  # one object, not an array


@framings
def test_batch_too_large(framing: str) -> None:
    batch = [{"jsonrpc": "2.0", "method": "m", "id": i} for i in range(4)]
    error, reply = one_invalid(batch, framing, max_batch_size=3)
    assert error.code == ErrorCode.BATCH_TOO_LARGE
    assert strip_messages(reply) == [error_reply(ErrorCode.BATCH_TOO_LARGE)]
    events = parse_three_ways(frame(batch[:3], framing), framing, max_batch_size=3)
    assert same(events, [Request("m", None, i) for i in range(3)])


# ---- ids the spec discourages but allows -----------------------------------------------------


@framings
@pytest.mark.parametrize("id", [None, 1.5, -0.25, 1e300, 2**70, "", "\u00e9"], ids=repr)
def test_discouraged_ids_answered_with_the_same_id(framing: str, id: Any) -> None:
    msg = {"jsonrpc": "2.0", "method": "m", "params": [1], "id": id}
    events = parse_three_ways(frame(msg, framing), framing)
    assert same(events, [Request("m", [1], id)])
    conn = Connection(framing)  # type: ignore[arg-type]
    feed_whole(conn, frame(msg, framing))
    assert list(conn.owed) == [id]
    (answer,) = unframe(conn.send(Response(id, "ok")), framing)
    assert same(answer, {"jsonrpc": "2.0", "id": id, "result": "ok"})
    assert list(conn.owed) == []
    feed_whole(conn, frame(msg, framing))
    (answer,) = unframe(conn.send(Error(id, -1, "no")), framing)
    assert same(answer["id"], id)


def test_request_with_id_null_is_not_a_notification() -> None:
    (event,) = parse_three_ways(b'{"jsonrpc":"2.0","method":"m","id":null}\n')
    assert type(event) is Request and event.id is None


# ---- reserved methods --------------------------------------------------------------------------


@framings
def test_reserved_method_request(framing: str) -> None:
    error, reply = one_invalid({"jsonrpc": "2.0", "method": "rpc.discover", "id": 9}, framing)
    assert error.code == ErrorCode.METHOD_NOT_FOUND and error.id == 9
    assert strip_messages(reply) == [error_reply(-32601, 9)]


@framings
def test_reserved_method_notification_is_not_answered(framing: str) -> None:
    error, reply = one_invalid({"jsonrpc": "2.0", "method": "rpc.x", "params": [1]}, framing)
    assert error.code == ErrorCode.METHOD_NOT_FOUND
    assert reply == []  # a notification is never answered, even when wrong


@framings
def test_reserved_method_with_an_id_in_flight(framing: str) -> None:
    # answering with the id would give the peer a second answer for a request in progress
    first = {"jsonrpc": "2.0", "method": "m", "id": 9}
    data = frame(first, framing) + frame({"jsonrpc": "2.0", "method": "rpc.x", "id": 9}, framing)
    req, bad = parse_three_ways(data, framing)
    assert same(req, Request("m", None, 9))
    assert type(bad) is InvalidMessage
    assert strip_messages(unframe(bad.reply, framing)) == [error_reply(-32600)]


def test_method_names_merely_near_reserved_are_fine() -> None:
    data = b"".join(
        frame({"jsonrpc": "2.0", "method": m}) for m in ("rpc", "RPC.x", "xrpc.y", "rpc_x", " rpc.x")
    )
    events = parse_three_ways(data)
    assert [type(e) for e in events] == [Notification] * 5


# ---- duplicate ids in flight --------------------------------------------------------------------


@framings
def test_duplicate_in_flight_id(framing: str) -> None:
    req = {"jsonrpc": "2.0", "method": "m", "id": "x"}
    events = parse_three_ways(frame(req, framing) * 3, framing)
    assert same(events[0], Request("m", None, "x"))
    for dup in events[1:]:
        assert type(dup) is InvalidMessage
        assert dup.error.code == ErrorCode.INVALID_REQUEST and dup.error.id is None
        assert "already in use" in dup.error.message
        assert strip_messages(unframe(dup.reply, framing)) == [error_reply(-32600)]
    # once answered, the id may be used again
    conn = Connection(framing)  # type: ignore[arg-type]
    feed_whole(conn, frame(req, framing))
    conn.send(Response("x", 1))
    assert same(feed_whole(conn, frame(req, framing)), [Request("m", None, "x")])


def test_invalid_request_with_an_in_flight_id_gets_id_null() -> None:
    conn = Connection()
    feed_whole(conn, frame({"jsonrpc": "2.0", "method": "m", "id": 1}))
    (bad,) = feed_whole(conn, frame({"jsonrpc": "2.0", "method": "m", "params": "x", "id": 1}))
    assert type(bad) is InvalidMessage and bad.error.id is None
    assert list(conn.owed) == [1]


# ---- responses ------------------------------------------------------------------------------------


def awaiting(framing: str, *ids: Any) -> Connection:
    conn = Connection(framing)  # type: ignore[arg-type]
    for id in ids:
        conn.send(Request("m", None, id))
    return conn


@framings
@pytest.mark.parametrize(
    "obj",
    [
        {"jsonrpc": "2.0", "result": 1},  # no id
        {"jsonrpc": "2.0", "result": 1, "id": True},
        {"jsonrpc": "2.0", "result": 1, "id": [1]},
        {"result": 1, "id": 1},  # no jsonrpc
        {"jsonrpc": "1.0", "result": 1, "id": 1},
        {"jsonrpc": "2.0", "result": 1, "error": {"code": 1, "message": "x"}, "id": 1},
        {"jsonrpc": "2.0", "error": {"code": "1", "message": "x"}, "id": 1},
        {"jsonrpc": "2.0", "error": {"code": True, "message": "x"}, "id": 1},
        {"jsonrpc": "2.0", "error": {"code": 1.0, "message": "x"}, "id": 1},
        {"jsonrpc": "2.0", "error": {"code": 1}, "id": 1},
        {"jsonrpc": "2.0", "error": {"message": "x"}, "id": 1},
        {"jsonrpc": "2.0", "error": "boom", "id": 1},
        {"jsonrpc": "2.0", "error": None, "id": 1},
    ],
    ids=repr,
)
def test_invalid_response_is_reported_not_answered(framing: str, obj: Any) -> None:
    data = frame(obj, framing)
    for conn in (awaiting(framing, 1), Connection(framing)):  # type: ignore[arg-type]
        (event,) = feed_whole(conn, data)
        assert type(event) is InvalidMessage
        assert event.reply == b""  # never answer an answer
        assert event.error.code == ErrorCode.INVALID_REQUEST
    # three ways, on a connection awaiting nothing
    (event,) = parse_three_ways(data, framing)
    assert type(event) is InvalidMessage and event.reply == b""


@framings
@pytest.mark.parametrize("id", [1, "1", 2, None, 1.5])
def test_response_to_unknown_id(framing: str, id: Any) -> None:
    for answer in ({"jsonrpc": "2.0", "result": None, "id": id}, {"jsonrpc": "2.0", "result": [1], "id": id}):
        conn = awaiting(framing, 1) if id != 1 else Connection(framing)  # type: ignore[arg-type]
        (event,) = feed_whole(conn, frame(answer, framing))
        assert type(event) is InvalidMessage and event.reply == b""
        assert "unknown" in event.error.message and same(event.error.id, id)
        (event,) = parse_three_ways(frame(answer, framing), framing)
        assert type(event) is InvalidMessage and event.reply == b""


@framings
def test_error_with_null_id_is_delivered(framing: str) -> None:
    # the peer could not read something we sent: that is news, not a protocol violation
    obj = {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}
    (event,) = parse_three_ways(frame(obj, framing), framing)
    assert same(event, Error(None, -32700, "Parse error"))


@framings
def test_responses_delivered_once(framing: str) -> None:
    conn = awaiting(framing, 1, "a", 3)
    data = (
        frame({"jsonrpc": "2.0", "result": None, "id": 1}, framing)
        + frame({"jsonrpc": "2.0", "error": {"code": 5, "message": "m", "data": [1]}, "id": "a"}, framing)
        + frame({"jsonrpc": "2.0", "result": {"x": 1.5}, "id": 3}, framing)
        + frame({"jsonrpc": "2.0", "result": None, "id": 1}, framing)
    )
    events = feed_whole(conn, data)
    assert same(events[:3], [Response(1, None), Error("a", 5, "m", [1]), Response(3, {"x": 1.5})])
    assert type(events[3]) is InvalidMessage and events[3].reply == b""  # the second answer to 1
    assert list(conn.awaiting) == []


# ---- what send refuses ------------------------------------------------------------------------


def owing(*ids: Any, framing: str = "ndjson") -> Connection:
    conn = Connection(framing)  # type: ignore[arg-type]
    for id in ids:
        feed_whole(conn, frame({"jsonrpc": "2.0", "method": "m", "id": id}, framing))
    assert list(conn.owed) == list(ids)
    return conn


def refuse(conn: Connection, event: Any, match: str = "") -> LocalProtocolError:
    """send(event) raises LocalProtocolError (returned) and changes nothing."""
    before = (list(conn.owed), list(conn.awaiting), conn.our_state, conn._last_id)
    with pytest.raises(LocalProtocolError, match=match) as refused:
        conn.send(event)
    assert (list(conn.owed), list(conn.awaiting), conn.our_state, conn._last_id) == before
    return refused.value


@pytest.mark.parametrize("event", [Response(2, 1), Error(2, 1, "x"), Response("1", 1), Response(None, 1)])
def test_answer_to_an_id_not_owed(event: Any) -> None:
    refuse(owing(1), event, "awaits an answer")


def test_answer_twice() -> None:
    conn = owing(1)
    assert conn.send(Response(1, 1))
    refuse(conn, Response(1, 1), "awaits")
    refuse(conn, Error(1, 1, "x"), "awaits")


def test_error_with_null_id_may_always_be_sent() -> None:
    conn = Connection()
    assert json.loads(conn.send(Error(None, -32700, "Parse error")))["id"] is None
    refuse(conn, Response(None, 1), "awaits")  # but not a result


@framings
@pytest.mark.parametrize("case", ["request-at-the-limit", "batch-with-an-error-reply"])
def test_a_null_result_over_the_limit_is_refused_and_a_short_error_goes(framing: str, case: str) -> None:
    """Even a null result can pass max_message_size: a response is two bytes longer than
    a request with an empty method and no params; a batch's reply also holds the error
    replies to its invalid members (fuzz/run.py found that one). send refuses it (-32007)
    and changes nothing; a short error for the same id always goes, and nothing is owed."""
    if case == "request-at-the-limit":
        msg: Any = {"jsonrpc": "2.0", "method": "", "id": 1}
        id: Any = 1
    else:  # two members with id null: the second is refused as a duplicate in flight
        msg, id = [{"jsonrpc": "2.0", "method": "", "id": None}] * 2, None
    text = json.dumps(msg, separators=(",", ":")).encode()
    conn = Connection(framing, max_message_size=len(text))  # type: ignore[arg-type]
    events = feed_whole(conn, frame(msg, framing))
    assert same(events[0], Request("", None, id)) and list(conn.owed) == [id]
    refused = refuse(conn, Response(id, None), "exceeds max_message_size")
    assert refused.error_code == ErrorCode.MESSAGE_TOO_LARGE
    (reply,) = unframe(conn.send(Error(id, ErrorCode.MESSAGE_TOO_LARGE, "Result too large")), framing)
    if case == "batch-with-an-error-reply":  # one reply, the duplicate's error first
        assert [answer["error"]["code"] for answer in reply] == [-32600, -32007]
    else:
        assert reply["error"]["code"] == -32007 and reply["id"] == 1
    assert list(conn.owed) == []


@pytest.mark.parametrize("id", [None, 1.5, 1.0])
def test_request_needs_int_or_str_id(id: Any) -> None:
    conn = Connection()
    refuse(conn, Request("m", None, id), "int or str id")
    with pytest.raises(LocalProtocolError):
        conn.send_batch([Request("m", None, id)])
    assert list(conn.awaiting) == []


def test_duplicate_in_flight_id_refused() -> None:
    conn = Connection()
    assert conn.send(Request("m", None, 1))
    refuse(conn, Request("other", [1], 1), "in flight")
    with pytest.raises(LocalProtocolError, match="in flight"):
        conn.send_batch([Request("m", None, 2), Request("m", None, 1)])
    with pytest.raises(LocalProtocolError, match="in flight"):
        conn.send_batch([Request("m", None, 3), Request("m", None, 3)])
    assert list(conn.awaiting) == [1]  # the refused batches registered nothing
    # a received request may use the same id: the two tables are separate
    assert same(feed_whole(conn, frame({"jsonrpc": "2.0", "method": "m", "id": 1})), [Request("m", None, 1)])


@pytest.mark.parametrize("method", ["rpc.x", "rpc."])
def test_reserved_methods_refused(method: str) -> None:
    conn = Connection()
    refuse(conn, Request(method, None, 1), "reserved")
    refuse(conn, Notification(method), "reserved")
    with pytest.raises(LocalProtocolError, match="reserved"):
        conn.send_batch([Notification("fine"), Notification(method)])
    assert conn.send(Notification("rpcx"))


@pytest.mark.parametrize("codec", ["json", "msgspec"])
@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), [1, -float("inf")], {"a": object()}, {(1, 2): 3}], ids=repr
)
def test_unencodable_answer(codec: str, value: Any) -> None:
    conn = Connection(codec=codec)
    feed_whole(conn, frame({"jsonrpc": "2.0", "method": "m", "id": 1}))
    refuse(conn, Response(1, value), "encode")
    refuse(conn, Error(1, -32603, "x", value), "encode")
    assert list(conn.owed) == [1]  # still owed: an error can still be sent
    assert json.loads(conn.send(Error(1, -32603, "Internal error")))["error"]["code"] == -32603
    # and unencodable params are refused before the id is taken
    refuse(conn, Request("m", [value], 5), "encode")
    refuse(conn, Notification("m", {"v": value}), "encode")
    assert 5 not in conn.awaiting


def test_unencodable_answer_in_a_batch_keeps_the_batch_open() -> None:
    conn = Connection()
    feed_whole(conn, frame([{"jsonrpc": "2.0", "method": "m", "id": i} for i in (1, 2)]))
    assert conn.send(Response(1, 1)) == b""
    refuse(conn, Response(2, float("nan")), "encode")
    reply = json.loads(conn.send(Error(2, -32603, "Internal error")))
    assert sorted(r["id"] for r in reply) == [1, 2]


@pytest.mark.parametrize(
    "event", [InvalidMessage(Error(None, 1, "x")), NEED_DATA, "text", None, Request], ids=repr
)
def test_send_refuses_what_is_not_an_event(event: Any) -> None:
    refuse(Connection(), event, "cannot send")


def test_send_batch_refusals() -> None:
    conn = Connection()
    with pytest.raises(LocalProtocolError, match="at least one"):
        conn.send_batch([])
    with pytest.raises(LocalProtocolError, match="not Response"):
        conn.send_batch([Request("m", None, 1), Response(1, 1)])  # type: ignore[list-item]
    with pytest.raises(LocalProtocolError, match="not Cancel"):
        conn.send_batch([Cancel(1)])  # type: ignore[list-item]
    assert list(conn.awaiting) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"framing": "xml"},
        {"framing": "NDJSON"},
        {"cancellation": "grpc"},
        {"max_message_size": 0},
        {"max_message_size": -5},
        {"max_batch_size": 0},
        {"codec": "yaml"},
    ],
    ids=repr,
)
def test_constructor_value_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Connection(**kwargs)


def test_constructor_defaults() -> None:
    conn = Connection()
    assert conn.framing == "ndjson"
    assert conn.max_message_size == DEFAULT_MAX_MESSAGE_SIZE
    assert conn.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert conn.cancellation == "lsp"
    assert conn.our_state is conn.their_state is State.OPEN
    assert "ndjson" in repr(conn) and "OPEN" in repr(conn)


# ---- states ------------------------------------------------------------------------------------


def test_transitions_table() -> None:
    for kind in (Request, Notification, Response, Error, Cancel):
        assert TRANSITIONS[State.OPEN, kind] is State.OPEN
    assert TRANSITIONS[State.OPEN, Closed] is State.CLOSED
    assert not any(state is not State.OPEN for state, _ in TRANSITIONS)  # nothing after CLOSED
    assert (State.OPEN, InvalidMessage) not in TRANSITIONS


def test_sending_after_closed() -> None:
    conn = owing(1)
    conn.send(Request("m", None, 5))
    assert conn.send(Closed()) == b""
    assert conn.our_state is State.CLOSED
    assert conn.their_state is State.OPEN  # the other direction is independent
    for event in (Request("m", None, 2), Notification("m"), Response(1, 1), Error(1, 1, "x"), Cancel(5),
                  Closed()):
        refuse(conn, event, "state CLOSED")
    with pytest.raises(LocalProtocolError, match="CLOSED"):
        conn.send_batch([Notification("m")])
    # receiving still works
    assert same(feed_whole(conn, frame({"jsonrpc": "2.0", "result": 1, "id": 5})), [Response(5, 1)])


def test_their_state_after_eof() -> None:
    conn = owing(1)
    conn.receive_data(b"")
    assert drain(conn) == [Closed()]
    assert conn.their_state is State.CLOSED and conn.our_state is State.OPEN
    assert conn.send(Response(1, "still owed, still sendable"))


def test_events_iterator() -> None:
    conn = Connection()
    conn.receive_data(frame({"jsonrpc": "2.0", "method": "a"}) + b'{"jsonrpc"')
    assert same(list(conn.events()), [Notification("a")])
    assert conn.in_message
    conn.receive_data(b"")
    assert list(conn.events()) == [Closed(b'{"jsonrpc"')]


# ---- two peers ----------------------------------------------------------------------------------


@pytest.fixture(params=[("ndjson", "ndjson"), ("content-length", "content-length"), ("message", "message"),
                        ("ndjson", "auto"), ("content-length", "auto")], ids="-".join)
def pair(request: pytest.FixtureRequest) -> Pair:
    return Pair(*request.param)


def test_requests_both_ways(pair: Pair) -> None:
    a, b = pair.a, pair.b
    r1 = pair.call(a, "subtract", [42, 23])
    r2 = pair.call(b, "ping")  # the other way, while a's request is in flight
    r3 = pair.call(a, "named", {"x": None})
    assert list(a.awaiting) == [r1.id, r3.id] and list(b.owed) == [r1.id, r3.id]
    assert list(b.awaiting) == [r2.id] and list(a.owed) == [r2.id]
    assert same(pair.send(b, Response(r1.id, 19)), [Response(r1.id, 19)])
    assert same(pair.send(a, Response(r2.id, None)), [Response(r2.id, None)])
    assert same(pair.send(b, Error(r3.id, -32602, "Invalid params", {"why": "x"})),
                [Error(r3.id, -32602, "Invalid params", {"why": "x"})])
    for conn in (a, b):
        assert list(conn.awaiting) == list(conn.owed) == []
    assert a.next_id() not in (r1.id, r3.id)


def test_notifications(pair: Pair) -> None:
    assert same(pair.send(pair.a, Notification("update", [1, 2, 3])), [Notification("update", [1, 2, 3])])
    assert same(pair.send(pair.b, Notification("hello")), [Notification("hello")])
    assert list(pair.a.owed) == list(pair.b.owed) == []


def test_string_ids(pair: Pair) -> None:
    for id in ("a", "", "1"):
        assert same(pair.send(pair.a, Request("m", [], id)), [Request("m", [], id)])
    assert same(pair.send(pair.b, Response("1", 1)), [Response("1", 1)])
    assert list(pair.a.awaiting) == ["a", ""]


def test_batch_both_ways(pair: Pair) -> None:
    a, b = pair.a, pair.b
    calls = [
        Request("sum", [1, 2], a.next_id()), Notification("log", ["x"]), Request("get", None, a.next_id())
    ]
    got = pair.send_batch(a, calls)
    assert same(got, calls)  # flattened, in order
    assert list(b.owed) == [1, 2]
    assert pair.send(b, Response(2, "second")) == []  # nothing written until the batch is complete
    assert pair.wire[-1] == ("b", b"")
    got = pair.send(b, Error(1, -32601, "Method not found"))
    # the batch reply is one array; its answers arrive as separate events
    assert sorted(got, key=lambda e: e.id) == [Error(1, -32601, "Method not found"), Response(2, "second")]
    assert list(a.awaiting) == []
    # b sends a batch back
    got = pair.send_batch(b, [Request("x", None, b.next_id()), Request("y", {"k": 1}, b.next_id())])
    assert [e.method for e in got] == ["x", "y"]
    got = pair.send(a, Response(1, 1)) + pair.send(a, Response(2, 2))
    assert same(got, [Response(1, 1), Response(2, 2)])


def test_batch_of_notifications_gets_nothing(pair: Pair) -> None:
    got = pair.send_batch(pair.a, [Notification("a"), Notification("b", [1])])
    assert same(got, [Notification("a"), Notification("b", [1])])
    assert list(pair.b.owed) == []


def test_close(pair: Pair) -> None:
    pair.send(pair.a, Notification("first"))  # an "auto" side answers in kind once it has heard
    assert pair.close(pair.a) == [Closed()]
    assert pair.a.our_state is State.CLOSED and pair.b.their_state is State.CLOSED
    assert same(pair.send(pair.b, Notification("after")), [Notification("after")])


# ---- received batches: the core assembles the reply --------------------------------------------


def batch_reply(data: bytes, framing: str = "ndjson") -> list[Any]:
    (msg,) = unframe(data, framing)
    assert isinstance(msg, list)
    return sorted(strip_messages(msg), key=SORT)


@framings
def test_received_batch_reply_assembled(framing: str) -> None:
    batch = [
        {"jsonrpc": "2.0", "method": "a", "id": 1},
        {"jsonrpc": "2.0", "method": "n"},
        5,
        {"jsonrpc": "2.0", "method": "b", "id": "two"},
        {"jsonrpc": "2.0", "method": "c", "id": 1},  # the same id twice in one batch
        {"jsonrpc": "2.0", "method": "rpc.n"},  # reserved, but a notification: no answer
        {"jsonrpc": "2.0", "result": 1, "id": 99},  # an answer to nothing: reported, no answer
    ]
    events = parse_three_ways(frame(batch, framing), framing)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Request", "Notification", "InvalidMessage", "Request", "InvalidMessage",
                     "InvalidMessage", "InvalidMessage"]
    assert replies(events) == b""  # the application owes answers: the reply waits for them
    conn = Connection(framing)  # type: ignore[arg-type]
    feed_whole(conn, frame(batch, framing))
    assert conn.send(Response("two", [2])) == b""
    out = conn.send(Error(1, -32601, "Method not found"))
    assert batch_reply(out, framing) == sorted(
        [
            {"jsonrpc": "2.0", "id": "two", "result": [2]},
            {"jsonrpc": "2.0", "id": 1, "error": {"code": -32601}},
            error_reply(-32600),
            error_reply(-32600),
        ],
        key=SORT,
    )
    assert list(conn.owed) == []


@framings
def test_received_batch_all_invalid(framing: str) -> None:
    events = parse_three_ways(frame([1, {"jsonrpc": "2.0"}, {"jsonrpc": "2.0", "method": "m", "id": True}],
                                    framing), framing)
    assert [type(e) for e in events] == [InvalidMessage] * 3
    assert events[1].reply == events[2].reply == b""  # the whole reply travels with the first
    assert batch_reply(events[0].reply, framing) == [error_reply(-32600)] * 3


def test_received_batch_only_unanswered_invalid() -> None:
    events = parse_three_ways(frame([{"jsonrpc": "2.0", "method": "rpc.x"}, {"jsonrpc": "2.0", "result": 1}]))
    assert [type(e) for e in events] == [InvalidMessage] * 2
    assert replies(events) == b""  # nothing at all is owed


def test_received_batch_answers_in_any_order() -> None:
    batch = [{"jsonrpc": "2.0", "method": "m", "id": i} for i in range(5)]
    for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]):
        conn = Connection()
        feed_whole(conn, frame(batch))
        outs = [conn.send(Response(i, i * 10)) for i in order]
        assert outs[:-1] == [b""] * 4
        assert sorted(r["id"] for r in json.loads(outs[-1])) == [0, 1, 2, 3, 4]
        assert all(r["result"] == r["id"] * 10 for r in json.loads(outs[-1]))


def test_two_batches_in_flight_and_a_single_request() -> None:
    conn = Connection()
    feed_whole(conn, frame([{"jsonrpc": "2.0", "method": "m", "id": i} for i in (1, 2)]))
    feed_whole(conn, frame([{"jsonrpc": "2.0", "method": "m", "id": i} for i in (3, 4)]))
    feed_whole(conn, frame({"jsonrpc": "2.0", "method": "m", "id": 5}))
    assert conn.send(Response(3, 3)) == b""
    assert json.loads(conn.send(Response(5, 5))) == {"jsonrpc": "2.0", "id": 5, "result": 5}
    assert conn.send(Response(1, 1)) == b""
    assert sorted(r["id"] for r in json.loads(conn.send(Response(4, 4)))) == [3, 4]
    assert sorted(r["id"] for r in json.loads(conn.send(Response(2, 2)))) == [1, 2]


def test_batch_of_responses_to_our_batch() -> None:
    conn = Connection()
    conn.send_batch([Request("m", None, 1), Request("m", None, 2)])
    events = feed_whole(conn, frame([{"jsonrpc": "2.0", "result": 2, "id": 2},
                                     {"jsonrpc": "2.0", "error": {"code": 1, "message": "x"}, "id": 1}]))
    assert same(events, [Response(2, 2), Error(1, 1, "x")])


# ---- cancellation ------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["ndjson", "content-length"])
def test_cancel_lsp(framing: str) -> None:
    pair = Pair(framing, cancellation="lsp")
    a, b = pair.a, pair.b
    req = pair.call(a, "slow")
    data = a.send(Cancel(req.id))
    (msg,) = unframe(data, framing)
    assert msg == {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": req.id}}
    assert same(pair.deliver(a, data), [Cancel(req.id)])
    assert list(b.owed) == [req.id]  # still owed: LSP wants the answer
    out = b.send(Error(req.id, ErrorCode.REQUEST_CANCELLED, "cancelled"))
    assert out
    assert pair.deliver(b, out) == []  # a asked to cancel: the late answer is dropped
    assert a.late_responses == 1
    assert a.send(Cancel(req.id)) == b""  # nothing left to cancel


@pytest.mark.parametrize("framing", ["ndjson", "content-length"])
def test_cancel_mcp(framing: str) -> None:
    pair = Pair(framing, cancellation="mcp")
    a, b = pair.a, pair.b
    req = pair.call(b, "slow")  # this time b calls a
    data = b.send(Cancel(req.id))
    (msg,) = unframe(data, framing)
    assert msg == {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": req.id}}
    assert same(pair.deliver(b, data), [Cancel(req.id)])
    assert a.send(Response(req.id, "too late")) == b""  # MCP: the answer is withheld
    assert list(a.owed) == []
    refuse(a, Response(req.id, 1), "awaits")


def test_cancel_both_ways_and_both_profiles_understood() -> None:
    pair = Pair(cancellation="lsp")
    a, b = pair.a, pair.b
    ra, rb = pair.call(a, "x"), pair.call(b, "y")
    # a peer speaking the other profile is understood too
    mcp = frame({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": ra.id}})
    assert same(pair.deliver(a, mcp), [Cancel(ra.id)])
    a.send(Cancel(ra.id))  # a forgets ra (the bytes were the MCP form above)
    assert same(pair.send(b, Cancel(rb.id)), [Cancel(rb.id)])
    assert b.send(Response(ra.id, 1)) == b""  # withheld: it came as MCP's
    assert pair.send(a, Response(rb.id, 1)) == []  # written (LSP), and dropped by b as late
    assert b.late_responses == 1 and a.late_responses == 0
    for conn in (a, b):
        assert list(conn.awaiting) == list(conn.owed) == []


def test_cancel_profile_none() -> None:
    pair = Pair(cancellation=None)
    a, b = pair.a, pair.b
    req = pair.call(a, "x")
    assert a.send(Cancel(req.id)) == b""  # not written, only forgotten
    assert list(a.awaiting) == []
    assert pair.send(b, Response(req.id, 1)) == []
    assert a.late_responses == 1
    # and cancellation notifications are plain notifications
    req = pair.call(a, "y")
    cancel = {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": req.id}}
    assert same(pair.deliver(a, frame(cancel)), [Notification("$/cancelRequest", {"id": req.id})])


def test_cancel_in_a_batch_withheld() -> None:
    conn = Connection(cancellation="mcp")
    batch = [{"jsonrpc": "2.0", "method": "m", "id": i} for i in (1, 2)]
    feed_whole(conn, frame(batch))
    events = feed_whole(conn, frame({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                     "params": {"requestId": 2}}))
    assert same(events, [Cancel(2)])
    assert conn.send(Response(2, "withheld")) == b""
    assert [r["id"] for r in json.loads(conn.send(Response(1, 1)))] == [1]
    # a batch whose every answer is withheld gets nothing at all
    feed_whole(conn, frame(batch))
    for i in (1, 2):
        feed_whole(conn, frame({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                "params": {"requestId": i}}))
    assert conn.send(Response(1, 1)) == conn.send(Response(2, 2)) == b""


@pytest.mark.parametrize(
    "params",
    [None, [1], {}, {"id": True}, {"id": [1]}, {"requestId": 1}],
    ids=repr,
)
def test_malformed_lsp_cancel_is_a_plain_notification(params: Any) -> None:
    conn = owing(1)
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": "$/cancelRequest"}
    if params is not None:
        msg["params"] = params
    assert same(feed_whole(conn, frame(msg)), [Notification("$/cancelRequest", params)])


def test_cancel_for_an_id_not_owed_is_dropped() -> None:
    conn = owing(1)
    data = frame({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 2}}) + frame(
        {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 1}})
    events = parse_three_ways(data)
    assert events == []  # a fresh connection owes nothing: both dropped, quietly (a normal race)
    assert same(feed_whole(conn, data), [Cancel(1)])


def test_cancelled_ids_are_not_reused() -> None:
    conn = Connection()
    first = conn.next_id()
    conn.send(Request("m", None, first))
    conn.send(Cancel(first))
    assert conn.next_id() != first
    refuse(conn, Request("m", None, first), "in flight")
    # the late answer clears it
    assert feed_whole(conn, frame({"jsonrpc": "2.0", "result": 1, "id": first})) == []
    assert conn.send(Request("m", None, first))


def test_next_id_skips_ids_in_flight() -> None:
    conn = Connection()
    conn.send(Request("m", None, 1))
    conn.send(Request("m", None, 2))
    assert conn.next_id() == 3
    assert conn.next_id() == 4  # fresh every call, even unused


def test_abandoned_ids_are_bounded() -> None:
    conn = Connection(cancellation=None)
    n = connection_module.MAX_ABANDONED + 1
    for _ in range(n):
        id = conn.next_id()
        conn.send(Request("m", None, id))
        conn.send(Cancel(id))
    assert len(conn._abandoned) == connection_module.MAX_ABANDONED
    # the oldest was forgotten: its late answer is now an answer to an unknown id
    (event,) = feed_whole(conn, frame({"jsonrpc": "2.0", "result": 1, "id": 1}))
    assert type(event) is InvalidMessage and event.reply == b""
    assert feed_whole(conn, frame({"jsonrpc": "2.0", "result": 1, "id": n})) == []
    assert conn.late_responses == 1


@framings
@pytest.mark.parametrize(
    "first",
    [
        {"jsonrpc": "2.0", "method": "rpc.x", "id": 0},  # -32601 with id 0
        {"method": "m", "id": 0},  # -32600 with id 0 (no jsonrpc member)
        {"jsonrpc": "2.0", "method": "m", "params": "bad", "id": 0},
    ],
    ids=["reserved", "no-jsonrpc", "bad-params"],
)
def test_batch_never_answers_one_id_twice(framing: str, first: dict[str, Any]) -> None:
    # a batch's answers travel in one array: an id that an invalid member's error already
    # names is in use, like an owed one, for the members after it
    batch = [first, {"jsonrpc": "2.0", "method": "m", "id": 0}, {"method": "m", "id": 0}]
    events = parse_three_ways(frame(batch, framing), framing)
    assert [type(e) for e in events] == [InvalidMessage] * 3
    assert [e.error.id for e in events] == [0, None, None]
    (reply,) = unframe(events[0].reply, framing)
    assert sorted((r["id"] is None) for r in reply) == [False, True, True]
    # while a request first, then the invalid member with its id, is the in-flight case
    conn = Connection(framing)  # type: ignore[arg-type]
    events = feed_whole(conn, frame([batch[1], first], framing))
    assert same(events[0], Request("m", None, 0))
    assert events[1].error.id is None  # type: ignore[union-attr]
    (reply,) = unframe(conn.send(Response(0, "ok")), framing)
    assert sorted(json.dumps(r["id"]) for r in reply) == ["0", "null"]
