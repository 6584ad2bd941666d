"""ezipc's async adapter on trio (stdlib codec), roundtrip only: compare with trio-jsonrpc."""

from __future__ import annotations

from impls import ezipc as _base

NAME = "ezipc(trio)"
RT_TRANSPORT = "tcp"
DECODE_NA = ENCODE_NA = "same core as the ezipc row"


def rt_serve(port: int) -> None:
    _base.serve_with(port, "json", "trio")


def rt_client(port: int, plan: dict) -> list[dict]:
    return _base.client_with(port, plan, "json", "trio")
