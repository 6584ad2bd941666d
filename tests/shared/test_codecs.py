"""The codecs end to end: a handler's result that the standard library cannot encode is
answered -32603 whichever codec the server uses, unless it opted in to the fast codec's
extra types."""

from __future__ import annotations

import datetime

import pytest

from ezipc_adapters import RemoteError

from .conftest import connecting, new_server, serving

pytestmark = pytest.mark.timeout(30)

pytest.importorskip("msgspec")


def _server(kind: str, codec: str) -> object:
    server = new_server(kind, codec=codec)
    server.hook_request("a_set", lambda: {1, 2, 3})
    server.hook_request("some_bytes", lambda: b"\x00\x01")
    server.hook_request("a_datetime", lambda: datetime.datetime(2024, 1, 2, 3, 4, 5))
    server.hook_request("nested", lambda: {"items": [{"tags": {"a"}}]})
    server.hook_request("a_tuple", lambda: {"point": (1, 2)})
    return server


@pytest.mark.parametrize("codec", ["json", "fast"])
def test_a_result_json_cannot_hold_is_an_internal_error(server_kind: str, codec: str) -> None:
    server = _server(server_kind, codec)
    with serving(server_kind, server) as served, connecting("blocking", served.address, codec=codec) as peer:
        for method in ("a_set", "some_bytes", "a_datetime", "nested"):
            with pytest.raises(RemoteError) as info:
                peer.request(method)
            assert (info.value.code, info.value.data) == (-32603, None), method
        assert peer.request("a_tuple") == {"point": [1, 2]}  # the stdlib writes a tuple as a list


def test_the_extended_fast_codec_encodes_them(server_kind: str) -> None:
    server = _server(server_kind, "fast-extended")
    with serving(server_kind, server) as served, connecting("blocking", served.address) as peer:
        assert peer.request("a_set") == [1, 2, 3]
        assert peer.request("some_bytes") == "AAE="
        assert peer.request("a_datetime") == "2024-01-02T03:04:05"
        assert peer.request("nested") == {"items": [{"tags": ["a"]}]}
