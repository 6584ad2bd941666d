"""A hostile-input corpus, as data: malformed and edge-case messages, each with the answer
the JSON-RPC 2.0 specification (and docs/limits.md, where the specification leaves it to
us) requires. ``test_corpus.py`` replays it against servers in both framings.

The server it is written for (``corpus_server`` in test_corpus.py) has request handlers
``subtract(minuend, subtrahend)``, ``sum(*xs)`` and ``echo(value)``, notification
handlers ``update`` and ``notify_hello``, ``max_batch_size=10`` and
``max_message_size=65536``.

Expected answers are tuples:

* ``("result", value, id)``: ``{"jsonrpc": "2.0", "id": id, "result": value}``;
* ``("error", code, id)``: ``{"jsonrpc": "2.0", "id": id, "error": {"code": code,
  "message": <a string>}}``, with no ``data`` member (nothing of ours leaks);
* ``("batch", [answers...])``: one array holding these answers, in any order.

A case's ``answers`` is the whole sequence of answers it must get; ``()`` means none at
all (notifications, answers nobody asked for).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
MESSAGE_TOO_LARGE = -32007
BATCH_TOO_LARGE = -32010

MAX_BATCH = 10
MAX_MESSAGE = 65536

Answer = tuple[Any, ...]


def R(value: Any, id: Any) -> Answer:
    return ("result", value, id)


def E(code: int, id: Any = None) -> Answer:
    return ("error", code, id)


def B(*answers: Answer) -> Answer:
    return ("batch", list(answers))


@dataclass(frozen=True)
class Case:
    """A message body, framed by the test in either framing."""

    name: str
    body: bytes
    answers: tuple[Answer, ...]


@dataclass(frozen=True)
class Raw:
    """Bytes sent as they are, in one framing. ``closes``: the framing is broken beyond
    repair, so the server answers ``answers`` (the last being its protocol error) and
    closes. ``swallows``: the input leaves the server waiting for more bytes (a body not
    yet complete), so nothing more on that connection is answered."""

    name: str
    data: bytes
    answers: tuple[Answer, ...]
    closes: bool = False
    swallows: bool = False


def _req(method: str, params: Any = None, id: Any = 1, **extra: Any) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    msg["id"] = id
    msg.update(extra)
    return json.dumps(msg, separators=(",", ":")).encode()


ECHO = b'{"jsonrpc":"2.0","method":"echo","params":[1],"id":1}'
BOM = b"\xef\xbb\xbf"

# ---- framing-independent cases --------------------------------------------------------

SPEC_EXAMPLES = [
    Case(
        "spec: positional params",
        b'{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
        (R(19, 1),),
    ),
    Case(
        "spec: named params",
        b'{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}',
        (R(19, 3),),
    ),
    Case("spec: notification", b'{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}', ()),
    Case("spec: notification, no handler", b'{"jsonrpc": "2.0", "method": "foobar"}', ()),
    Case(
        "spec: method not found",
        b'{"jsonrpc": "2.0", "method": "foobar", "id": "1"}',
        (E(METHOD_NOT_FOUND, "1"),),
    ),
    Case(
        "spec: invalid JSON",
        b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
        (E(PARSE_ERROR),),
    ),
    Case(
        "spec: invalid request object",
        b'{"jsonrpc": "2.0", "method": 1, "params": "bar"}',
        (E(INVALID_REQUEST),),
    ),
    Case(
        "spec: batch, invalid JSON",
        b'[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},{"jsonrpc": "2.0", "method"]',
        (E(PARSE_ERROR),),
    ),
    Case("spec: empty array", b"[]", (E(INVALID_REQUEST),)),
    Case("spec: batch of one non-object", b"[1]", (B(E(INVALID_REQUEST)),)),
    Case(
        "spec: batch of non-objects",
        b"[1,2,3]",
        (B(E(INVALID_REQUEST), E(INVALID_REQUEST), E(INVALID_REQUEST)),),
    ),
    Case(
        "spec: mixed batch",
        b'[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
        b'{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},'
        b'{"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},'
        b'{"foo": "boo"},'
        b'{"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},'
        b'{"jsonrpc": "2.0", "method": "get_data", "id": "9"}]',
        (B(R(7, "1"), R(19, "2"), E(INVALID_REQUEST), E(METHOD_NOT_FOUND, "5"), E(METHOD_NOT_FOUND, "9")),),
    ),
    Case(
        "spec: batch of notifications",
        b'[{"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},'
        b'{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}]',
        (),
    ),
]

BAD_JSON = [
    Case(f"bad JSON: {text!r}", text, (E(PARSE_ERROR),))
    for text in [
        b"{",
        b"}",
        b"[",
        b"]",
        b"{]",
        b'"unterminated',
        b'{"jsonrpc":"2.0",}',
        b"{'jsonrpc':'2.0','method':'echo','id':1}",
        b"[1,]",
        b'{"jsonrpc":"2.0","method":"echo","id":1} // comment',
        b'/* comment */ {"jsonrpc":"2.0","method":"echo","id":1}',
        ECHO + ECHO,
        ECHO + b" x",
        ECHO[:-1],
        b'{"jsonrpc":"2.0","method":"echo","params":[01],"id":1}',
        b'{"jsonrpc":"2.0","method":"echo","params":[0x10],"id":1}',
        b'{"jsonrpc":"2.0","method":"echo","params":[+1],"id":1}',
        b'{"jsonrpc":"2.0","method":"echo","params":[.5],"id":1}',
        b'{"jsonrpc":"2.0","method":"echo","params":[1.],"id":1}',
        b'{"jsonrpc":"2.0","method":"echo","params":[tru],"id":1}',
        b'{"jsonrpc":"2.0","method":"echo","params":[True],"id":1}',
        b'{"jsonrpc":"2.0","method":"echo","params":[None],"id":1}',
        b'{"jsonrpc":"2.0","method":"echo","params":[undefined],"id":1}',
        b'{"jsonrpc":"2.0","method":"echo","params":[NaN],"id":1}',
        b'{"jsonrpc":"2.0","method":"echo","params":[Infinity],"id":1}',
        b'{"jsonrpc":"2.0","method":"echo","params":[-Infinity],"id":1}',
        b'{"jsonrpc":"2.0","method":"echo","params":[1e400],"id":1}',
        b'{"jsonrpc":"2.0","method":"echo","params":["tab\there"],"id":1}',
        b'{"jsonrpc":"2.0","method":"echo","params":["nul\x00here"],"id":1}',
        b'{"jsonrpc":"2.0","method":"echo","params":["\\x41"],"id":1}',
        b'{"jsonrpc":"2.0","method":"echo","params":["\\u12"],"id":1}',
        b'{"jsonrpc":"2.0","method":"echo","params":["\\"],"id":1}',
        b'{"jsonrpc":"2.0","method":"echo","id":1e400}',
        b"NaN",
        b"\x00",
        b"\x0c",
    ]
]

BAD_UTF8 = [
    Case(
        "UTF-8: invalid byte",
        b'{"jsonrpc":"2.0","method":"echo","params":["\xff"],"id":1}',
        (E(PARSE_ERROR),),
    ),
    Case(
        "UTF-8: overlong '/'",
        b'{"jsonrpc":"2.0","method":"echo","params":["\xc0\xaf"],"id":1}',
        (E(PARSE_ERROR),),
    ),
    Case(
        "UTF-8: encoded surrogate",
        b'{"jsonrpc":"2.0","method":"echo","params":["\xed\xa0\x80"],"id":1}',
        (E(PARSE_ERROR),),
    ),
    Case(
        "UTF-8: truncated sequence",
        b'{"jsonrpc":"2.0","method":"echo","params":["\xe2\x82"],"id":1}',
        (E(PARSE_ERROR),),
    ),
    Case(
        "UTF-8: Latin-1 text",
        '{"jsonrpc":"2.0","method":"echo","params":["caf\xe9"],"id":1}'.encode("latin-1"),
        (E(PARSE_ERROR),),
    ),
    Case(
        "UTF-8: beyond U+10FFFF",
        b'{"jsonrpc":"2.0","method":"echo","params":["\xf4\x90\x80\x80"],"id":1}',
        (E(PARSE_ERROR),),
    ),
    Case(
        "UTF-16LE with its BOM",
        "\ufeff".encode("utf-16-le") + ECHO.decode().encode("utf-16-le"),
        (E(PARSE_ERROR),),
    ),
    Case("UTF-16BE", ECHO.decode().encode("utf-16-be"), (E(PARSE_ERROR),)),
    Case("UTF-32", ECHO.decode().encode("utf-32"), (E(PARSE_ERROR),)),
    Case("method name not UTF-8", b'{"jsonrpc":"2.0","method":"ech\xf6","id":1}', (E(PARSE_ERROR),)),
    # Valid: escapes JSON allows, and text beyond the BMP.
    Case(
        "lone surrogate escape",
        _req("echo", ["\ud800"]).replace(b"\xed\xa0\x80", b"\\ud800"),
        (R("\ud800", 1),),
    ),
    Case(
        "surrogate pair escape",
        b'{"jsonrpc":"2.0","method":"echo","params":["\\ud83d\\ude00"],"id":1}',
        (R("\U0001f600", 1),),
    ),
    Case(
        "raw emoji",
        _req("echo", ["\U0001f600"]).replace(b"\\ud83d\\ude00", "\U0001f600".encode()),
        (R("\U0001f600", 1),),
    ),
    Case("escaped NUL", b'{"jsonrpc":"2.0","method":"echo","params":["\\u0000"],"id":1}', (R("\x00", 1),)),
    Case(
        "U+2028 in a string",
        '{"jsonrpc":"2.0","method":"echo","params":["a\u2028b"],"id":1}'.encode(),
        (R("a\u2028b", 1),),
    ),
]

BOMS = [
    Case("BOM, then a request", BOM + ECHO, (R(1, 1),)),
    Case("two BOMs", BOM + BOM + ECHO, (E(PARSE_ERROR),)),
    Case("BOM inside", b"{" + BOM + ECHO[1:], (E(PARSE_ERROR),)),
    Case("BOM at the end", ECHO + BOM, (E(PARSE_ERROR),)),
    Case("UTF-16 BOM, then UTF-8", b"\xfe\xff" + ECHO, (E(PARSE_ERROR),)),
    Case("BOM alone", BOM, (E(PARSE_ERROR),)),
]

VERSIONS = [
    Case('jsonrpc "1.0"', _req("echo", [1], 5, jsonrpc="1.0"), (E(INVALID_REQUEST, 5),)),
    Case("jsonrpc 2.0 as a number", _req("echo", [1], 5).replace(b'"2.0"', b"2.0"), (E(INVALID_REQUEST, 5),)),
    Case('jsonrpc "2"', _req("echo", [1], 5, jsonrpc="2"), (E(INVALID_REQUEST, 5),)),
    Case('jsonrpc "2.0 "', _req("echo", [1], 5, jsonrpc="2.0 "), (E(INVALID_REQUEST, 5),)),
    Case("jsonrpc null", _req("echo", [1], 5, jsonrpc=None), (E(INVALID_REQUEST, 5),)),
    Case(
        "no jsonrpc (JSON-RPC 1.0 style)", b'{"method":"echo","params":[1],"id":5}', (E(INVALID_REQUEST, 5),)
    ),
    Case("wrong version, no id", b'{"jsonrpc":"1.0","method":"echo","params":[1]}', (E(INVALID_REQUEST),)),
    Case(
        "wrong version, bad id",
        b'{"jsonrpc":"1.0","method":"echo","params":[1],"id":{}}',
        (E(INVALID_REQUEST),),
    ),
]

IDS = [
    Case("id: object", _req("echo", [1], {}), (E(INVALID_REQUEST),)),
    Case("id: array", _req("echo", [1], [1]), (E(INVALID_REQUEST),)),
    Case("id: true", _req("echo", [1], True), (E(INVALID_REQUEST),)),
    Case("id: false", _req("echo", [1], False), (E(INVALID_REQUEST),)),
    Case("id: null (a request, not a notification)", _req("echo", [1], None), (R(1, None),)),
    Case("id: fractional", _req("echo", [1], 1.5), (R(1, 1.5),)),
    Case("id: negative", _req("echo", [1], -7), (R(1, -7),)),
    Case("id: zero", _req("echo", [1], 0), (R(1, 0),)),
    Case("id: empty string", _req("echo", [1], ""), (R(1, ""),)),
    Case("id: 2**100", _req("echo", [1], 2**100), (R(1, 2**100),)),
    Case("id: long string", _req("echo", [1], "i" * 1000), (R(1, "i" * 1000),)),
    Case("id: unicode", _req("echo", [1], "\u00e9\U0001f600"), (R(1, "\u00e9\U0001f600"),)),
    Case(
        "duplicate ids in a batch",
        b"[" + _req("echo", [1], 7) + b"," + _req("echo", [2], 7) + b"]",
        (B(R(1, 7), E(INVALID_REQUEST)),),
    ),
    Case(
        "duplicate member names: the last wins",
        b'{"jsonrpc":"2.0","method":"nosuch","method":"echo","params":[3],"id":1}',
        (R(3, 1),),
    ),
]

PARAMS = [
    Case("params: string", _req("echo", "bar", 2), (E(INVALID_REQUEST, 2),)),
    Case("params: number", _req("echo", 1, 2), (E(INVALID_REQUEST, 2),)),
    Case("params: true", _req("echo", True, 2), (E(INVALID_REQUEST, 2),)),
    Case("params: null", b'{"jsonrpc":"2.0","method":"echo","params":null,"id":2}', (E(INVALID_REQUEST, 2),)),
    Case("params: too few", _req("subtract", [1], 2), (E(INVALID_PARAMS, 2),)),
    Case("params: too many", _req("subtract", [1, 2, 3], 2), (E(INVALID_PARAMS, 2),)),
    Case("params: unknown name", _req("subtract", {"minuend": 1, "x": 2}, 2), (E(INVALID_PARAMS, 2),)),
    Case("params: missing name", _req("subtract", {"minuend": 1}, 2), (E(INVALID_PARAMS, 2),)),
    Case(
        "params: named 'remote' is not ours to bind", _req("echo", {"remote": 1}, 2), (E(INVALID_PARAMS, 2),)
    ),
    Case("params: wrong types (the handler fails)", _req("subtract", ["a", 1], 2), (E(INTERNAL_ERROR, 2),)),
    Case("params: empty array", _req("sum", [], 2), (R(0, 2),)),
    Case("params: empty object", _req("sum", {}, 2), (R(0, 2),)),
    Case(
        "params: bad, in a notification",
        b'{"jsonrpc":"2.0","method":"update","params":"x"}',
        (E(INVALID_REQUEST),),
    ),
    Case(
        "params: unbindable, in a notification",
        b'{"jsonrpc":"2.0","method":"notify_hello","params":[1,2,3]}',
        (),
    ),
]

METHODS = [
    Case("method: number", _req("echo", [1], 3).replace(b'"echo"', b"1"), (E(INVALID_REQUEST, 3),)),
    Case("method: null", _req("echo", [1], 3).replace(b'"echo"', b"null"), (E(INVALID_REQUEST, 3),)),
    Case("method: array", _req("echo", [1], 3).replace(b'"echo"', b'["echo"]'), (E(INVALID_REQUEST, 3),)),
    Case("method: missing", b'{"jsonrpc":"2.0","params":[1],"id":3}', (E(INVALID_REQUEST, 3),)),
    Case("method: empty", _req("", [1], 3), (E(METHOD_NOT_FOUND, 3),)),
    Case("method: rpc.discover", _req("rpc.discover", None, 3), (E(METHOD_NOT_FOUND, 3),)),
    Case("method: rpc. notification", b'{"jsonrpc":"2.0","method":"rpc.x"}', ()),
    Case("method: with NUL", _req("echo\x00", [1], 3), (E(METHOD_NOT_FOUND, 3),)),
    Case("method: 10,000 characters", _req("m" * 10_000, None, 3), (E(METHOD_NOT_FOUND, 3),)),
    Case("method: different case", _req("ECHO", [1], 3), (E(METHOD_NOT_FOUND, 3),)),
    Case("method: with spaces", _req(" echo ", [1], 3), (E(METHOD_NOT_FOUND, 3),)),
    Case("method: a Python attribute", _req("__class__", None, 3), (E(METHOD_NOT_FOUND, 3),)),
]

TOP_LEVEL = [
    Case(f"top level: {text.decode()}", text, (E(INVALID_REQUEST),))
    for text in [b'"string"', b"1", b"-1.5", b"null", b"true", b"false", b"{}"]
] + [
    Case("extra members are ignored", _req("echo", [1], 4, extra=True), (R(1, 4),)),
    Case("neither method nor result", b'{"jsonrpc":"2.0","id":4}', (E(INVALID_REQUEST, 4),)),
    # Answers nobody asked for are dropped (and logged), never answered.
    Case("unsolicited result", b'{"jsonrpc":"2.0","result":1,"id":99}', ()),
    Case("unsolicited error", b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"x"},"id":null}', ()),
    Case("result without id", b'{"jsonrpc":"2.0","result":1}', ()),
    Case("result and error", b'{"jsonrpc":"2.0","result":1,"error":{"code":1,"message":"x"},"id":1}', ()),
    Case("malformed error", b'{"jsonrpc":"2.0","error":"bad","id":1}', ()),
]

BATCHES = [
    Case("batch: nested empty", b"[[]]", (B(E(INVALID_REQUEST)),)),
    Case("batch: nested batch", b"[[" + ECHO + b"]]", (B(E(INVALID_REQUEST)),)),
    Case("batch: empty object", b"[{}]", (B(E(INVALID_REQUEST)),)),
    Case(
        "batch: at the limit",
        b"[" + b",".join(_req("echo", [i], i) for i in range(MAX_BATCH)) + b"]",
        (B(*(R(i, i) for i in range(MAX_BATCH))),),
    ),
    Case(
        "batch: one over the limit",
        b"[" + b",".join(_req("echo", [i], i) for i in range(MAX_BATCH + 1)) + b"]",
        (E(BATCH_TOO_LARGE),),
    ),
    Case(
        "batch: of notifications over the limit",
        b"[" + b",".join(b'{"jsonrpc":"2.0","method":"update"}' for _ in range(MAX_BATCH + 1)) + b"]",
        (E(BATCH_TOO_LARGE),),
    ),
    Case("batch: valid and invalid", b"[1," + ECHO + b"]", (B(E(INVALID_REQUEST), R(1, 1)),)),
    Case("batch: unsolicited result only", b'[{"jsonrpc":"2.0","result":1,"id":5}]', ()),
    Case(
        "batch: bad id and good",
        b"[" + _req("echo", [1], {}) + b"," + _req("echo", [2], 2) + b"]",
        (B(E(INVALID_REQUEST), R(2, 2)),),
    ),
    Case("batch: rpc. request", b"[" + _req("rpc.x", None, 1) + b"]", (B(E(METHOD_NOT_FOUND, 1)),)),
]

_ECHO_OVERHEAD = len(_req("echo", [""], 1))
SIZES = [
    Case(
        "message: at max_message_size",
        _req("echo", ["x" * (MAX_MESSAGE - _ECHO_OVERHEAD)], 1),
        (R("x" * (MAX_MESSAGE - _ECHO_OVERHEAD), 1),),
    ),
    Case(
        "message: one over max_message_size",
        _req("echo", ["x" * (MAX_MESSAGE - _ECHO_OVERHEAD + 1)], 1),
        (E(MESSAGE_TOO_LARGE),),
    ),
]


def _random_bodies(seed: int, count: int) -> list[Case]:
    """Random bytes that are neither JSON nor blank nor hold a newline: -32700 each."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        body = rng.randbytes(rng.choice([1, 2, 3, 8, 40, 300, 3000]))
        if b"\n" in body or not body.strip(b" \t\r"):
            continue
        try:
            json.loads(body)
        except ValueError:
            cases.append(Case(f"random body {len(cases)} ({len(body)} bytes)", body, (E(PARSE_ERROR),)))
    return cases


RANDOM = _random_bodies(6, 40)

CASES: list[Case] = (
    SPEC_EXAMPLES
    + BAD_JSON
    + BAD_UTF8
    + BOMS
    + VERSIONS
    + IDS
    + PARAMS
    + METHODS
    + TOP_LEVEL
    + BATCHES
    + SIZES
    + RANDOM
)

# ---- one framing only: sent as they are -----------------------------------------------


def _cl(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


NDJSON_RAW = [
    Raw("CRLF line end", ECHO + b"\r\n", (R(1, 1),)),
    Raw("blank lines", b"\n\n\n", ()),
    Raw("a line of blank space", b" \t \r\n", ()),
    Raw("empty lines around a message", b"\n\n" + ECHO + b"\n\n", (R(1, 1),)),
    Raw("leading blank space", b"  \t" + ECHO + b"\n", (R(1, 1),)),
    Raw("two messages, a CR between", ECHO + b"\r" + ECHO + b"\n", (E(PARSE_ERROR),)),
    Raw(
        "a newline inside a string",
        b'{"jsonrpc":"2.0","method":"echo","params":["a\nb"],"id":1}\n',
        (E(PARSE_ERROR), E(PARSE_ERROR)),
    ),
    Raw(
        "three messages in one write",
        ECHO + b"\n" + _req("echo", [2], 2) + b"\n" + _req("echo", [3], 3) + b"\n",
        (R(1, 1), R(2, 2), R(3, 3)),
    ),
    Raw(
        "junk line between messages",
        ECHO + b"\n\x80\x81junk\n" + _req("echo", [2], 2) + b"\n",
        (R(1, 1), E(PARSE_ERROR), R(2, 2)),
    ),
    Raw("an empty body is a blank line", b"\n", ()),
    # Lines "Content-Length: 53\r", "\r" (blank: skipped) and the body.
    Raw("a Content-Length header, to an NDJSON server", _cl(ECHO) + b"\n", (E(PARSE_ERROR), R(1, 1))),
]

CONTENT_LENGTH_RAW = [
    Raw("lower-case header name", b"content-length: %d\r\n\r\n" % len(ECHO) + ECHO, (R(1, 1),)),
    Raw("no space after the colon", b"Content-Length:%d\r\n\r\n" % len(ECHO) + ECHO, (R(1, 1),)),
    Raw("blank space around the value", b"Content-Length: \t %d \t\r\n\r\n" % len(ECHO) + ECHO, (R(1, 1),)),
    Raw(
        "other headers",
        b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\nContent-Length: %d\r\n"
        b"X-Other: 1\r\n\r\n" % len(ECHO) + ECHO,
        (R(1, 1),),
    ),
    Raw(
        "the same Content-Length twice",
        b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(ECHO), len(ECHO)) + ECHO,
        (R(1, 1),),
    ),
    Raw(
        "100 small headers (under 8 KiB)",
        b"".join(b"X-H%d: v\r\n" % i for i in range(100)) + b"Content-Length: %d\r\n\r\n" % len(ECHO) + ECHO,
        (R(1, 1),),
    ),
    Raw("Content-Length: 0", b"Content-Length: 0\r\n\r\n", (E(PARSE_ERROR),)),
    Raw("a blank body", _cl(b"   "), (E(PARSE_ERROR),)),
    Raw("a body with a trailing newline", _cl(ECHO + b"\n"), (R(1, 1),)),
    # The body is '{"jso' (-32700); the rest, up to the next blank line, is a header block.
    Raw(
        "body longer than its Content-Length",
        b"Content-Length: 5\r\n\r\n" + ECHO + b"\r\n\r\n",
        (E(PARSE_ERROR), E(PARSE_ERROR)),
        closes=True,
    ),
    Raw("body shorter than its Content-Length", b"Content-Length: 1000\r\n\r\n" + ECHO, (), swallows=True),
    Raw(
        "a 20-digit Content-Length",
        b"Content-Length: 99999999999999999999\r\n\r\n" + ECHO,
        (E(MESSAGE_TOO_LARGE),),
        swallows=True,
    ),
    *[
        Raw(f"broken header: {header!r}", header + b"\r\n\r\n" + ECHO, (E(PARSE_ERROR),), closes=True)
        for header in [
            b"Content-Length: abc",
            b"Content-Length: -1",
            b"Content-Length: 1.5",
            b"Content-Length: +53",
            b"Content-Length: 0x35",
            b"Content-Length: ",
            b"Content-Length:",
            b"Content-Length: 5 3",
            b"Content-Length: 999999999999999999999",
            b"Content-Length: \xef\xbc\x95\xef\xbc\x93",  # full-width digits
            b"Content-Length: 53\x00",
            b"Content-Type: application/json",
            b"Content-Length: 53\r\nContent-Length: 54",
            b"Content-Length 53",
            b"Cont\xc3\xa9nt-Length: 53",
            b": 53",
            b"Content-Length:\r\n 53",
            b"\r\nContent-Length: 53",
            b"garbage\r\nContent-Length: 53",
            b"{}",
        ]
    ],
    Raw(
        "LF-only line ends",
        b"Content-Length: %d\n\n" % len(ECHO) + ECHO + b"\r\n\r\n",
        (E(PARSE_ERROR),),
        closes=True,
    ),
    Raw(
        "header flood (over 8 KiB)",
        b"X-Flood: 1\r\n" * 1000 + b"Content-Length: %d\r\n\r\n" % len(ECHO) + ECHO,
        (E(PARSE_ERROR),),
        closes=True,
    ),
    Raw(
        "one endless header line",
        b"X-Long: " + b"v" * 9000 + b"\r\n\r\n" + ECHO,
        (E(PARSE_ERROR),),
        closes=True,
    ),
]


def _random_streams(seed: int, count: int) -> list[bytes]:
    """Random bytes sent outside any framing, ending with a newline. To an NDJSON server
    each line is one message (none of these lines is blank or JSON): one -32700 per line.
    To a Content-Length server (these hold no blank line, so no header block ends, and
    are under 8 KiB) the header block ends only with the next message's, is malformed,
    and the server answers -32700 and closes."""
    rng = random.Random(seed)
    streams: list[bytes] = []
    while len(streams) < count:
        data = rng.randbytes(rng.choice([5, 50, 500, 5000])) + b"\n"
        if b"\r\n\r\n" in data or b"\n\r\n" in data or b"\n\n" in data:
            continue
        lines = data.split(b"\n")[:-1]
        if all(line.strip(b" \t\r") and not _is_json(line) for line in lines):
            streams.append(data)
    return streams


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


RANDOM_STREAMS = _random_streams(7, 12)

#: Cases fed at every byte split point, and cut off at every byte.
SPLIT = ["batch: valid and invalid", "UTF-8: invalid byte"]
SPLIT_RAW = ["other headers", "leading blank space"]
