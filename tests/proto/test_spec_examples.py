"""The twelve examples of the JSON-RPC 2.0 specification, as golden transcripts through
the core in both stream framings: the bytes written must be exactly the spec's answers
(compared as JSON; a batch reply as a multiset; error messages by their spec prefix)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from ezipc_proto import NEED_DATA, Connection, Error, ErrorCode, InvalidMessage, Request, Response

from .helpers import STREAM_FRAMINGS, unframe


def SORT(value: Any) -> str:
    """A sort key for JSON values: a batch reply is compared as a multiset."""
    return json.dumps(value, sort_keys=True)


# (what the client sends, as the spec prints it) -> (what the server must answer: a list of
# messages, or [] for "nothing at all")
EXAMPLES: list[tuple[str, list[str], list[Any]]] = [
    (
        "1 positional parameters",
        [
            '{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
            '{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
        ],
        [{"jsonrpc": "2.0", "result": 19, "id": 1}, {"jsonrpc": "2.0", "result": -19, "id": 2}],
    ),
    (
        "2 named parameters",
        [
            '{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}',
            '{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}',
        ],
        [{"jsonrpc": "2.0", "result": 19, "id": 3}, {"jsonrpc": "2.0", "result": 19, "id": 4}],
    ),
    (
        "3 notifications",
        [
            '{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}',
            '{"jsonrpc": "2.0", "method": "foobar"}',
        ],
        [],
    ),
    (
        "4 non-existent method",
        ['{"jsonrpc": "2.0", "method": "foobar", "id": "1"}'],
        [{"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}],
    ),
    (
        "5 invalid JSON",
        ['{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]'],
        [{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}],
    ),
    (
        "6 invalid Request object",
        ['{"jsonrpc": "2.0", "method": 1, "params": "bar"}'],
        [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}],
    ),
    (
        "7 batch, invalid JSON",
        [
            """[
  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
  {"jsonrpc": "2.0", "method"
]"""
        ],
        [{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}],
    ),
    (
        "8 empty array",
        ["[]"],
        [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}],
    ),
    (
        "9 invalid batch, not empty",
        ["[1]"],
        [[{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}]],
    ),
    (
        "10 invalid batch",
        ["[1,2,3]"],
        [[{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}] * 3],
    ),
    (
        "11 batch",
        [
            """[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]"""
        ],
        [
            [
                {"jsonrpc": "2.0", "result": 7, "id": "1"},
                {"jsonrpc": "2.0", "result": 19, "id": "2"},
                {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
                {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
                {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"},
            ]
        ],
    ),
    (
        "12 batch of notifications",
        [
            """[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
    ]"""
        ],
        [],
    ),
]


def subtract(*args: Any, minuend: Any = None, subtrahend: Any = None) -> Any:
    if args:
        minuend, subtrahend = args
    return minuend - subtrahend


METHODS: dict[str, Callable[..., Any]] = {
    "subtract": subtract,
    "sum": lambda *xs: sum(xs),
    "get_data": lambda: ["hello", 5],
}


def answer(request: Request) -> Response | Error:
    """The application: what the spec's example server computes."""
    fn = METHODS.get(request.method)
    if fn is None:
        return Error(request.id, ErrorCode.METHOD_NOT_FOUND, "Method not found")
    params = request.params
    result = fn(**params) if isinstance(params, dict) else fn(*(params or ()))
    return Response(request.id, result)


def serve(conn: Connection, data: bytes, chunk: int, reverse: bool) -> bytes:
    """Feed ``data`` in chunks; answer every request (all at the end, in reverse, when
    ``reverse``); write every ready-made reply. Returns every byte written."""
    out = b""
    pending: list[Request] = []
    for i in range(0, len(data), chunk):
        conn.receive_data(data[i : i + chunk])
        while (event := conn.next_event()) is not NEED_DATA:  # answered as they come
            if type(event) is InvalidMessage:
                out += event.reply
            elif type(event) is Request:
                if reverse:
                    pending.append(event)
                else:
                    out += conn.send(answer(event))
    for request in reversed(pending):
        out += conn.send(answer(request))
    assert list(conn.owed) == []
    return out


def canonical(msg: Any) -> Any:
    """A reply made comparable: a batch as a sorted list (a multiset), an error's message
    cut to the spec's words (ours add a reason after a colon)."""
    if isinstance(msg, list):
        return sorted((canonical(m) for m in msg), key=SORT)
    if "error" in msg:
        error = dict(msg["error"])
        error["message"] = error["message"].split(":")[0]
        msg = {**msg, "error": error}
    return msg


def encode_for(text: str, framing: str) -> bytes:
    raw = text.encode()
    if framing == "ndjson":
        raw = raw.replace(b"\n", b"")  # one message per line
        return raw + b"\n"
    return b"Content-Length: %d\r\n\r\n" % len(raw) + raw


@pytest.mark.parametrize("framing", STREAM_FRAMINGS)
@pytest.mark.parametrize("chunk", [1, 5, 1 << 20], ids=["bytewise", "chunks", "whole"])
@pytest.mark.parametrize("reverse", [False, True], ids=["in-order", "reversed"])
@pytest.mark.parametrize(("name", "sent", "expected"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_spec_example(
    framing: str, chunk: int, reverse: bool, name: str, sent: list[str], expected: list[Any]
) -> None:
    conn = Connection(framing)  # type: ignore[arg-type]
    data = b"".join(encode_for(text, framing) for text in sent)
    written = serve(conn, data, chunk, reverse)
    if not expected:
        assert written == b""  # nothing at all: not even an empty array
        return
    got = [canonical(m) for m in unframe(written, framing)]
    want = [canonical(m) for m in expected]
    if reverse:
        got.sort(key=SORT)
        want.sort(key=SORT)
    assert got == want


@pytest.mark.parametrize("framing", STREAM_FRAMINGS)
@pytest.mark.parametrize("codec", ["json", "msgspec"])
def test_all_examples_on_one_connection(framing: str, codec: str) -> None:
    """The whole transcript as one stream on one connection: the same answers, in order."""
    conn = Connection(framing, codec=codec)  # type: ignore[arg-type]
    data = b"".join(encode_for(text, framing) for _, sent, _ in EXAMPLES for text in sent)
    written = serve(conn, data, 1 << 20, reverse=False)
    got = [canonical(m) for m in unframe(written, framing)]
    assert got == [canonical(m) for _, _, expected in EXAMPLES for m in expected]


def test_examples_are_twelve() -> None:
    assert len(EXAMPLES) == 12
    assert [int(name.split()[0]) for name, _, _ in EXAMPLES] == list(range(1, 13))
