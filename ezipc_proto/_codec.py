"""JSON codecs: strict JSON text <-> Python values, and nothing else.

A codec has ``name``, ``decode(data) -> value`` raising ``ValueError`` for anything that is
not strict JSON in strict UTF-8, and ``encode(value) -> bytes`` (compact UTF-8) raising
``ValueError`` or ``TypeError`` for a value JSON cannot represent. Strict means: no
``NaN``/``Infinity`` either way (nor a number too large for a float), no invalid UTF-8,
no lone surrogate written raw. A byte-order mark is stripped by the connection before
``decode`` is called.

``JsonCodec`` (the standard library) is the reference. ``MsgspecCodec`` is faster and
gives the same values: where msgspec rejects a text the stdlib accepts (a lone surrogate
escape, nesting deeper than msgspec allows) the stdlib decides, and a text whose encoding
holds ``null`` is checked by the stdlib for NaN, which msgspec would write as ``null``.
"""

from __future__ import annotations

import json
import math
from typing import Any, Protocol, runtime_checkable

__all__ = ["Codec", "JsonCodec", "MsgspecCodec", "get_codec"]

_WS = " \t\n\r"


@runtime_checkable
class Codec(Protocol):
    name: str

    def decode(self, data: bytes) -> Any: ...

    def encode(self, obj: Any) -> bytes: ...


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _strict_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


class JsonCodec:
    """The standard library's ``json``, strict, driven without ``json.loads``' overhead."""

    name = "json"

    def __init__(self) -> None:
        decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_strict_float)
        self._scan = decoder.scan_once
        self._dump = json.JSONEncoder(
            ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode
        self._dump_ascii = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode

    def decode(self, data: bytes) -> Any:
        text = data.decode("utf-8")  # strict: UnicodeDecodeError is a ValueError
        start = 0
        if text and text[0] in _WS:
            start = len(text) - len(text.lstrip(_WS))
        try:
            obj, end = self._scan(text, start)
        except StopIteration as exc:
            raise ValueError(f"expecting a JSON value at character {exc.value}") from None
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
        if end != len(text) and text[end:].strip(_WS):
            raise ValueError(f"extra data after the JSON value at character {end}")
        return obj

    def encode(self, obj: Any) -> bytes:
        try:
            return self._dump(obj).encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate cannot be UTF-8; JSON can still carry it as an escape.
            return self._dump_ascii(obj).encode("ascii")
        except RecursionError:
            raise ValueError("value nested too deeply to encode") from None


class MsgspecCodec:
    """msgspec's JSON, with the stdlib deciding every case msgspec would answer differently."""

    name = "msgspec"

    def __init__(self) -> None:
        import msgspec  # noqa: PLC0415  (an optional dependency: extra "fast")

        self._decode = msgspec.json.Decoder().decode
        self._encode = msgspec.json.Encoder().encode
        self._fallback = JsonCodec()

    def decode(self, data: bytes) -> Any:
        try:
            return self._decode(data)
        except Exception:  # msgspec.DecodeError, or anything it balks at: the stdlib decides
            return self._fallback.decode(data)

    def encode(self, obj: Any) -> bytes:
        try:
            out: bytes = self._encode(obj)
        except Exception:  # lone surrogates, unsupported types: the stdlib decides
            return self._fallback.encode(obj)
        if b"null" in out:
            # msgspec writes NaN and Infinity as null; the stdlib raises for them.
            self._fallback.encode(obj)
        return out


def get_codec(codec: str | Codec) -> Codec:
    """``"json"`` (the default), ``"msgspec"``, ``"fast"`` (msgspec, which must be
    installed: ``pip install ezipc[fast]``), or any object with ``decode``/``encode``."""
    if not isinstance(codec, str):
        if not isinstance(codec, Codec):
            raise TypeError(f"not a codec: {codec!r}")
        return codec
    if codec == "json":
        return JsonCodec()
    if codec in ("msgspec", "fast"):
        try:
            return MsgspecCodec()
        except ImportError:
            raise ImportError(
                f"codec={codec!r} needs msgspec: pip install 'ezipc[fast]'"
            ) from None
    raise ValueError(f"unknown codec {codec!r}: use 'json', 'msgspec' or 'fast'")
