"""The JSON codecs: strict JSON both ways, and msgspec agreeing with the stdlib."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import json
import uuid
from typing import Any, NamedTuple

import pytest

from ezipc_proto import Codec, Connection, JsonCodec, MsgspecCodec
from ezipc_proto._codec import get_codec

from .helpers import same

CODECS = [JsonCodec(), MsgspecCodec()]
ids = ["json", "msgspec"]

def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


NESTED_100 = _nested(100)

ACCEPTED: list[tuple[bytes, Any]] = [
    (b"1", 1),
    (b"-0", 0),
    (b"-0.0", -0.0),
    (b"1.0", 1.0),
    (b"1E5", 100000.0),
    (b"1e-400", 0.0),  # underflow is fine: it is a float, just a small one
    (b"123456789012345678901234567890", 123456789012345678901234567890),
    (b"-9223372036854775809", -9223372036854775809),
    (b"18446744073709551616", 18446744073709551616),
    (b"1" * 100, int("1" * 100)),  # beyond msgspec's integers: the stdlib decides
    (b'"\\ud800"', "\ud800"),  # a lone surrogate escape is legal JSON
    (b'"\\u0000\\n"', "\x00\n"),
    ('"é€😀"'.encode(), "é€😀"),
    (b' \t\r\n{"a" : [1, {"b": null}] } \r\n', {"a": [1, {"b": None}]}),
    (b'{"a":1,"a":2}', {"a": 2}),
    (b"true", True),
    (b"null", None),
    (b"[" * 100 + b"]" * 100, NESTED_100),
]

REJECTED = [
    b"",
    b"   ",
    b"NaN",
    b"-Infinity",
    b"Infinity",
    b"[NaN]",
    b"1e400",
    b"-1e400",
    b'{"a": 1e999}',
    b"1.7976931348623157e309",
    b"1" * 5000,  # the stdlib's int digit limit: refused rather than slow
    b"\xef\xbb\xbf1",  # the codec does not take a BOM; the connection strips it
    b"\xff",
    b'"\xc0\xaf"',  # overlong
    b'"\xed\xa0\x80"',  # an encoded surrogate is not UTF-8
    b'"\x80"',
    b'"\x1f"',  # raw control character
    b"[1,]",
    b"{'a': 1}",
    b"01",
    b".5",
    b"1.",
    b"\x0c1",
    b"1 2",
    b"[1] x",
    b"[" * 100_000,
    b"[" * 100_000 + b"]" * 100_000,  # nested too deeply for either codec
]


@pytest.mark.parametrize("codec", CODECS, ids=ids)
@pytest.mark.parametrize(("text", "value"), ACCEPTED)
def test_accepted(codec: Codec, text: bytes, value: Any) -> None:
    got = codec.decode(text)
    assert same(got, value)
    assert same(codec.decode(bytearray(text)), value)


@pytest.mark.parametrize("codec", CODECS, ids=ids)
@pytest.mark.parametrize("text", REJECTED, ids=lambda t: repr(t[:20]))
def test_rejected(codec: Codec, text: bytes) -> None:
    with pytest.raises(ValueError):
        codec.decode(text)


@pytest.mark.parametrize("codec", CODECS, ids=ids)
@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), -float("inf"), [1, {"a": float("nan")}], {"x": float("inf")}, object()],
    ids=repr,
)
def test_unencodable(codec: Codec, value: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        codec.encode(value)


@pytest.mark.parametrize("codec", CODECS, ids=ids)
def test_deep_value_unencodable(codec: Codec) -> None:
    value = _nested(100_000)
    with pytest.raises((ValueError, TypeError, RecursionError)):
        codec.encode(value)


@pytest.mark.parametrize("codec", CODECS, ids=ids)
@pytest.mark.parametrize(
    "value",
    [None, 0, -1, 2**64, 2**200, 1.5, -0.0, 1e300, 5e-324, "", "a\nb\u2028\x00", "\ud800", "😀",
     [1, [2, [3]]], {"a": {"b": [None, True, False]}}, "null", {"null": None}],
    ids=repr,
)
def test_encode_roundtrip(codec: Codec, value: Any) -> None:
    data = codec.encode(value)
    assert isinstance(data, bytes)
    assert b"\n" not in data  # NDJSON relies on it
    data.decode("utf-8")  # strict UTF-8 out, even for a lone surrogate (escaped)
    for reader in CODECS:
        assert same(reader.decode(data), value)


def test_encode_is_compact_utf8() -> None:
    assert JsonCodec().encode({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
    assert MsgspecCodec().encode({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()


def test_get_codec() -> None:
    assert isinstance(get_codec("json"), JsonCodec)
    assert isinstance(get_codec("msgspec"), MsgspecCodec)
    assert isinstance(get_codec("fast"), MsgspecCodec)
    mine = JsonCodec()
    assert get_codec(mine) is mine
    with pytest.raises(ValueError, match="unknown codec"):
        get_codec("yaml")
    with pytest.raises(TypeError):
        get_codec(42)  # type: ignore[arg-type]
    assert Connection(codec="fast").codec.name == "msgspec"
    assert Connection().codec.name == "json"


def test_custom_codec_is_used() -> None:
    calls = []

    class Loud(JsonCodec):
        def decode(self, data: bytes) -> Any:
            calls.append(bytes(data))
            return super().decode(data)

    conn = Connection(codec=Loud())
    conn.receive_data(b'{"jsonrpc":"2.0","method":"m"}\n')
    assert conn.next_event() is not None
    assert calls == [b'{"jsonrpc":"2.0","method":"m"}']


# ---- encoding: the fast codec refuses what the stdlib refuses -------------------------


class Color(enum.Enum):
    RED = "red"


class Number(enum.Enum):
    ONE = 1


class Level(enum.IntEnum):
    LOW = 1


class Mode(str, enum.Enum):
    FAST = "fast"


class Ratio(float, enum.Enum):
    HALF = 0.5


class Perm(enum.IntFlag):
    R = 4


class Bits(enum.Flag):
    A = 1


class Name(str):
    pass


class Count(int):
    pass


class Real(float):
    pass


class Point(NamedTuple):
    x: int
    y: int


@dataclasses.dataclass
class Pair:
    a: int
    b: Any = None


class Record(dict):  # type: ignore[type-arg]
    pass


def _struct() -> Any:
    import msgspec

    class Item(msgspec.Struct):
        a: int

    return Item(1)


def _raw() -> Any:
    import msgspec

    return msgspec.Raw(b"1")


# (label, value): either codec encodes each to the same JSON value, or both raise
PARITY: list[tuple[str, Any]] = [
    # plain JSON, and what the stdlib turns into plain JSON
    ("scalars", [None, True, False, 0, -1, 1.5, -0.0, 1e16, 5e-324, "", "é\n\x00"]),
    ("uint64", 2**64 - 1),
    ("huge int", 2**70),
    ("lone surrogate", "\ud800"),
    ("nested", {"a": [1, {"b": [None, {"c": "d"}]}], "e": {}}),
    ("tuple", (1, 2)),
    ("nested tuple", {"a": [(1, (2, 3))]}),
    ("namedtuple", Point(1, 2)),
    ("OrderedDict", collections.OrderedDict([("b", 1), ("a", 2)])),
    ("defaultdict", collections.defaultdict(list, {"a": [1]})),
    ("dict subclass", Record(a=1)),
    ("IntEnum", [Level.LOW]),
    ("str Enum", {"mode": Mode.FAST}),
    ("float Enum", Ratio.HALF),
    ("IntFlag", Perm.R),
    ("str subclass", Name("x")),
    ("int subclass", Count(3)),
    ("float subclass", Real(2.5)),
    ("int keys", {1: "a", -2: "b"}),
    ("float keys", {1.5: 1, 1e16: 2, 1e-05: 3}),
    ("bool and None keys", {True: 1, False: 2, None: 3}),
    ("IntEnum key", {Level.LOW: 1}),
    ("str Enum key", {Mode.FAST: 1}),
    ("str subclass key", {Name("k"): 1}),
    ("None inside", {"a": None, "b": [None]}),
    # refused by the stdlib, so by both
    ("NaN", float("nan")),
    ("NaN nested", {"a": None, "b": [float("nan")]}),
    ("infinity", [float("inf")]),
    ("NaN key", {float("nan"): 1}),
    ("infinite key", {float("-inf"): 1}),
    ("set", {1, 2, 3}),
    ("empty set", set()),
    ("frozenset", frozenset({1})),
    ("set nested", {"a": [{"b": {1}}]}),
    ("bytes", b"ab"),
    ("bytearray", [bytearray(b"ab")]),
    ("memoryview", {"a": memoryview(b"ab")}),
    ("datetime", datetime.datetime(2024, 1, 2, 3, 4, 5)),
    ("aware datetime", datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc)),
    ("date", [datetime.date(2024, 1, 2)]),
    ("time", datetime.time(3, 4)),
    ("timedelta", datetime.timedelta(seconds=5)),
    ("UUID", uuid.UUID(int=1)),
    ("Decimal", decimal.Decimal("1.5")),
    ("dataclass", Pair(1, [2])),
    ("dataclass nested", {"a": [Pair(1)]}),
    ("plain Enum (str value)", Color.RED),
    ("plain Enum (int value)", [Number.ONE]),
    ("Flag", Bits.A),
    ("msgspec Struct", "struct"),
    ("msgspec Raw", "raw"),
    ("complex", 1j),
    ("object", object()),
    ("circular", "circular"),
    ("Enum key", {Number.ONE: 1}),
    ("bytes key", {b"k": 1}),
    ("date key", {datetime.date(2024, 1, 2): 1}),
    ("UUID key", {uuid.UUID(int=1): 1}),
    ("Decimal key", {decimal.Decimal(1): 1}),
    ("tuple key", {(1,): 1}),
    ("frozenset key", {frozenset(): 1}),
]


def _value(value: Any) -> Any:
    if value == "struct":
        return _struct()
    if value == "raw":
        return _raw()
    if value == "circular":
        loop: list[Any] = []
        loop.append(loop)
        return loop
    return value


def _outcome(codec: Codec, value: Any) -> tuple[str, Any]:
    """("ok", the JSON value the encoding holds, read by an independent reader) or
    ("error", None)."""
    try:
        data = codec.encode(value)
    except (TypeError, ValueError):
        return "error", None
    assert isinstance(data, bytes)
    assert b"\n" not in data
    return "ok", json.loads(data)


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize(("label", "value"), PARITY, ids=[label for label, _ in PARITY])
def test_encode_parity(label: str, value: Any, size: str) -> None:
    """The fast codec encodes a value to the same JSON value as the stdlib, or raises
    as the stdlib does: inside a small message, and inside a large one (the fast codec
    checks those differently)."""
    value = _value(value)
    if size == "large":
        value = {"jsonrpc": "2.0", "id": 1, "result": {"padding": "x" * 10_000, "value": value}}
    expected = _outcome(JsonCodec(), value)
    assert _outcome(MsgspecCodec(), value) == expected
    assert _outcome(get_codec("fast"), value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({1, 2}, [1, 2]),
        (frozenset({"a"}), ["a"]),
        ([b"ab"], ["YWI="]),
        ({"when": datetime.datetime(2024, 1, 2, 3, 4, 5)}, {"when": "2024-01-02T03:04:05"}),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (decimal.Decimal("1.5"), "1.5"),
        (Pair(1), {"a": 1, "b": None}),
        (Color.RED, "red"),
        ({1: None}, {"1": None}),
        ((1, 2), [1, 2]),
    ],
    ids=repr,
)
def test_extended_encodes_msgspec_types(value: Any, expected: Any) -> None:
    """Opting in: the extra types are encoded as msgspec encodes them."""
    for codec in (MsgspecCodec(extended=True), get_codec("fast-extended"), get_codec("msgspec-extended")):
        assert json.loads(codec.encode(value)) == expected
        assert json.loads(codec.encode({"big": "x" * 10_000, "v": value}))["v"] == expected


@pytest.mark.parametrize(
    "value", [float("nan"), [float("inf")], {"a": None, "b": {1, 2}, "c": float("nan")}], ids=repr
)
def test_extended_still_refuses_nan(value: Any) -> None:
    with pytest.raises(ValueError):
        MsgspecCodec(extended=True).encode(value)


def test_extended_accepts_extras_beside_null() -> None:
    """A null in the encoding does not make the extended codec refuse an extra type."""
    assert json.loads(MsgspecCodec(extended=True).encode({"a": None, "b": {1}})) == {"a": None, "b": [1]}


def test_codec_names() -> None:
    assert MsgspecCodec().name == "msgspec"
    assert not MsgspecCodec().extended
    assert MsgspecCodec(extended=True).name == "msgspec-extended"
    assert get_codec("fast-extended").name == "msgspec-extended"
    with pytest.raises(ValueError, match="fast-extended"):
        get_codec("faster")
