"""ezipc 0.1 with the msgspec codec (``Connection(codec="msgspec")``, extra ``fast``); the
rest is exactly ``ezipc.py``: see its docstring."""

from __future__ import annotations

from impls import ezipc as _base

NAME = "ezipc(msgspec)"
CODEC = "msgspec"
DECODE_FRAMINGS = ENCODE_FRAMINGS = _base.DECODE_FRAMINGS
RT_TRANSPORT = "tcp"
LOOP = "uvloop"  # the roundtrip row: uvloop with the fast codec


def unavailable() -> str | None:
    try:
        import msgspec  # noqa: F401
    except ImportError:
        return "msgspec is not installed"
    return _base.unavailable()


def decode(chunks: list[bytes], framing: str) -> tuple[int, int]:
    return _base.decode_with(CODEC, chunks, framing)


def encode_prepare(msgs: list) -> _base.Prepared:
    return _base.Prepared(msgs, CODEC)


def encode(prepared: _base.Prepared, framing: str) -> tuple[int, int]:
    return _base.encode(prepared, framing)


def rt_serve(port: int) -> None:
    _base.serve_with(port, CODEC, LOOP)


def rt_client(port: int, plan: dict) -> list[dict]:
    return _base.client_with(port, plan, CODEC, LOOP)
