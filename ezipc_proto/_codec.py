"""JSON codecs: strict JSON text <-> Python values, and nothing else.

A codec has ``name``, ``decode(data) -> value`` raising ``ValueError`` for anything that is
not strict JSON in strict UTF-8, and ``encode(value) -> bytes`` (compact UTF-8) raising
``ValueError`` or ``TypeError`` for a value JSON cannot represent. Strict means: no
``NaN``/``Infinity`` either way (nor a number too large for a float), no invalid UTF-8,
no lone surrogate written raw. A byte-order mark is stripped by the connection before
``decode`` is called.

``JsonCodec`` (the standard library) is the reference. ``MsgspecCodec`` (``codec="fast"``)
gives the same answers, faster. Decoding: where msgspec rejects a text the stdlib accepts
(a lone surrogate escape, nesting deeper than msgspec allows) the stdlib decides.
Encoding: the same JSON value, or the same refusal (``TypeError``/``ValueError``), for
every value. msgspec alone would encode much more than the stdlib: sets, bytes,
datetimes, UUIDs, decimals, dataclasses, structs, plain enums, float keys written its own
way ("1e16" where the stdlib writes "1e+16"), and NaN as ``null``.
``MsgspecCodec(extended=True)`` (``codec="fast-extended"``) keeps msgspec's extra types
(not NaN and infinity) for those who want them.

How the default refuses them, and what it costs. msgspec 0.23 cannot be told to refuse a
type it supports: ``enc_hook`` only sees the types it does not support, and the only
per-type hook is ``decimal_format``. Nor can its output tell: a set is written exactly as
a list, a dataclass as a dict, an enum as its value. So after msgspec has encoded a value,
a second pass over the value checks it:

* up to 4 KiB of output, msgspec decodes the output and the result must equal the value
  (``==``): a set comes back as a list, bytes as a string, NaN as None, an int key as a
  str... and each such difference sends the value to the stdlib, which encodes it (a
  tuple, an int key) or refuses it (a set);
* beyond, ``msgspec.to_builtins(value, str_keys=True)`` must equal the value: it copies
  the containers but no string, so a 4 MiB string costs 0.1 ms more, where decoding it
  again would cost 7 ms. (It keeps NaN as NaN, so an output holding ``null`` is also
  decoded and compared.)

Measured on bench/core.py's workload (python 3.11, msgspec 0.23, ns per message): msgspec
encodes one in about 300-500; the stdlib in 2800. Exact checks: decode and compare +600,
``to_builtins`` and compare +650 (+800 with ``str_keys``), a recursive ``type()`` walk in
Python +760, ``marshal.dumps`` (refuses subclasses, not sets or bytes) +550, a
``gc.get_referents`` walk +1100. ``python bench/core.py --quick``, encode, x the stdlib
floor (ndjson / content-length): before 2.20x / 2.20x (no check); now 1.48x / 1.50x;
``extended=True`` 2.18x / 2.14x. Decode is unchanged: 2.06x / 2.08x.

One loophole left: a value whose own ``__eq__`` calls itself equal to the plain data it
is not (a dataclass whose ``__eq__`` says True to a dict), or a dict subclass whose
``items()`` disagrees with its contents (the stdlib encodes ``items()``, msgspec the
contents).
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
    """msgspec's JSON: the same answers as :class:`JsonCodec` both ways, only faster.

    Decoding gives the same value as the stdlib, and rejects the same texts. Encoding
    gives the same JSON value (the text may differ, e.g. ``1e16`` for ``1e+16``) and
    raises ``TypeError``/``ValueError`` for every value the stdlib refuses, though
    msgspec itself could encode many of them (sets, bytes, datetimes, UUIDs, decimals,
    dataclasses, structs, plain enums). ``MsgspecCodec(extended=True)`` (also
    ``codec="fast-extended"``) opts in to those: each is encoded as msgspec encodes it
    (a set as an array, bytes as base64, a datetime as an ISO 8601 string...); NaN and
    infinity are still refused.
    """

    name = "msgspec"

    def __init__(self, *, extended: bool = False) -> None:
        import msgspec  # an optional dependency: extra "fast"

        self.extended = extended
        if extended:
            self.name = "msgspec-extended"
        self._decode = msgspec.json.Decoder().decode
        self._encode = msgspec.json.Encoder().encode
        self._builtins = msgspec.to_builtins
        self._fallback = JsonCodec()

    def decode(self, data: bytes) -> Any:
        try:
            return self._decode(data)
        except Exception:  # msgspec.DecodeError, or anything it balks at: the stdlib decides
            return self._fallback.decode(data)

    def encode(self, obj: Any) -> bytes:
        if self.extended:
            return self._encode_extended(obj)
        try:
            out: bytes = self._encode(obj)
            if len(out) <= _CHECK_BY_DECODING:
                if self._decode(out) == obj:
                    return out
            # Plain data comes back from to_builtins equal (containers copied, each leaf
            # the same object); what msgspec would convert (a set, bytes, a dataclass, a
            # plain enum, a non-str key...) comes back as something else. NaN and
            # infinity are the same objects, but msgspec writes them as null.
            # (bytes' `in` first tries the operand as an int: find is faster)
            elif self._builtins(obj, str_keys=True) == obj and (
                out.find(b"null") < 0 or self._decode(out) == obj
            ):
                return out
        except Exception:  # a lone surrogate, a huge int, a value's own __eq__ raising...
            pass
        # Not plain JSON data as msgspec sees it (tuples and int keys included, which the
        # stdlib encodes): the stdlib decides, with its own text or its own exception.
        return self._fallback.encode(obj)

    def _encode_extended(self, obj: Any) -> bytes:
        try:
            out: bytes = self._encode(obj)
        except Exception:  # lone surrogates, huge ints, unsupported types: the stdlib decides
            return self._fallback.encode(obj)
        if out.find(b"null") >= 0:
            # msgspec writes NaN and Infinity as null; the stdlib raises for them (and
            # for nothing else in what to_builtins gives).
            self._fallback.encode(self._builtins(obj, str_keys=True))
        return out


# Encodings up to this many bytes are checked by decoding them (cheaper for small
# messages); larger ones with msgspec.to_builtins (it copies no string).
_CHECK_BY_DECODING = 4096


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
    """``"json"`` (the default), ``"fast"`` or ``"msgspec"`` (msgspec, which must be
    installed: ``pip install 'ezipc[fast]'``), ``"fast-extended"`` or
    ``"msgspec-extended"`` (the same, encoding msgspec's extra types too: see
    :class:`MsgspecCodec`), or any object with ``decode``/``encode``."""
    if not isinstance(codec, str):
        if not isinstance(codec, Codec):
            raise TypeError(f"not a codec: {codec!r}")
        return codec
    if codec == "json":
        return JsonCodec()
    if codec in _FAST:
        try:
            return MsgspecCodec(extended=_FAST[codec])
        except ImportError:
            raise ImportError(f"codec={codec!r} needs msgspec: pip install 'ezipc[fast]'") from None
    raise ValueError(f"unknown codec {codec!r}: use 'json', 'fast' (or 'msgspec') or 'fast-extended'")


# codec name -> MsgspecCodec(extended=...)
_FAST = {"fast": False, "msgspec": False, "fast-extended": True, "msgspec-extended": True}
