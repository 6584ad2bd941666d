"""The JSON codecs: strict JSON both ways, and msgspec agreeing with the stdlib."""

from __future__ import annotations

from typing import Any

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
