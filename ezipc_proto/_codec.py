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
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = ["Codec", "JsonCodec", "MsgspecCodec", "get_codec", "unchecked_decoder"]

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
        self._scan = decoder.scan_once  # type: ignore[attr-defined]
        self._iterencode = _C_ITERENCODE
        self._dump = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
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
            if self._iterencode is not None:
                return "".join(self._iterencode(obj, 0)).encode("utf-8")
            return self._dump(obj).encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate cannot be UTF-8; JSON can still carry it as an escape.
            return self._dump_ascii(obj).encode("ascii")
        except RecursionError:
            raise ValueError("value nested too deeply (or circular) to encode") from None


def _c_iterencode() -> Callable[[Any, int], list[str]] | None:
    """The C encoder inside ``JSONEncoder(ensure_ascii=False, allow_nan=False,
    separators=(",", ":"))``, built once: ``JSONEncoder.encode`` builds a new one for
    every value, which costs a third of encoding a small message. It is built without
    the circular-reference check (a shared table of ids would not be thread-safe); a
    circular value ends in RecursionError instead, which ``encode`` reports as a
    ValueError. None if this Python's private ``c_make_encoder`` is missing or behaves
    differently: then the plain ``JSONEncoder`` is used."""
    from json import encoder

    try:
        iterencode: Callable[[Any, int], list[str]] = encoder.c_make_encoder(  # type: ignore[attr-defined]
            None, _reject_type, encoder.encode_basestring, None, ":", ",", False, False, False
        )
        probe: Any = {"a": [1, 2.5, '\u00e9\n"', None, True, -0.0, 10**30], "b": {}}
        if "".join(iterencode(probe, 0)) != json.dumps(probe, ensure_ascii=False, separators=(",", ":")):
            return None
        try:
            iterencode([float("nan")], 0)
        except ValueError:
            return iterencode
    except Exception:  # absent or changed: the portable path is used
        pass
    return None


def _reject_type(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# Built once: it holds no state (no table of ids), so every JsonCodec shares it.
_C_ITERENCODE = _c_iterencode()


class MsgspecCodec:
    """msgspec's JSON, with the stdlib deciding every case msgspec would answer differently."""

    name = "msgspec"

    def __init__(self) -> None:
        import msgspec  # an optional dependency: extra "fast"

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
        if out.find(b"null") >= 0:  # (bytes' `in` first tries the operand as an int: slower)
            # msgspec writes NaN and Infinity as null; the stdlib raises for them.
            self._fallback.encode(obj)
        return out


def unchecked_decoder(codec: Codec) -> Callable[[bytes], Any] | None:
    """For the codecs here (unless a subclass overrides ``decode``): a decoder to try
    first, which gives the same value as ``codec.decode`` whenever it returns, and
    rejects any text that starts with a BOM. When it raises, ``codec.decode`` decides.
    For ``MsgspecCodec`` it is msgspec's own decoder, without the Python wrapper around
    it; for ``JsonCodec``, its ``decode``. None for any other codec."""
    decode = getattr(type(codec), "decode", None)
    if decode is MsgspecCodec.decode:
        return codec._decode  # type: ignore[attr-defined,no-any-return]
    if decode is JsonCodec.decode:
        return codec.decode
    return None


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
            raise ImportError(f"codec={codec!r} needs msgspec: pip install 'ezipc[fast]'") from None
    raise ValueError(f"unknown codec {codec!r}: use 'json', 'msgspec' or 'fast'")
