"""Shared-secret authentication (auth_token), fail closed, the same on every server kind
and with every client kind: the first request must be a correct ``$/authenticate``;
anything else first, or nothing within the time allowed, closes the connection."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from ezipc_adapters import RemoteError
from ezipc_proto import _session

from .conftest import connecting, message, new_server, raw_connect, serving, wait_for

pytestmark = pytest.mark.timeout(30)

TOKEN = "s3cret"
UNAUTHORIZED = {"code": -32030, "message": "Unauthorized"}


def auth_server(kind: str) -> tuple[Any, list[str]]:
    server = new_server(kind, auth_token=TOKEN)
    trail: list[str] = []
    lock = threading.Lock()

    def record(what: str) -> None:
        with lock:
            trail.append(what)

    server.hook_connect(lambda remote: record("connect"))
    server.hook_disconnect(lambda remote: record("disconnect"))
    server.hook_request("ping", lambda: record("ping") or "pong")
    server.hook_notif("note", lambda: record("note"))
    return server, trail


def test_clients_authenticate_with_the_right_token(server_kind: str, client_kind: str) -> None:
    server, trail = auth_server(server_kind)
    with serving(server_kind, server) as served:
        with connecting(client_kind, served.address, auth_token=TOKEN) as peer:
            assert peer.request("ping") == "pong"
            assert peer.stats()["messages_out"] == 2  # $/authenticate, then ping
        wait_for(lambda: "disconnect" in trail)
        assert trail == ["connect", "ping", "disconnect"]  # the hook ran once authenticated
        trail.clear()
        with pytest.raises(RemoteError) as info:
            with connecting(client_kind, served.address, auth_token="wrong"):
                pass
        assert (info.value.code, info.value.message) == (-32030, "Unauthorized")
        wait_for(lambda: not served.remotes())
        with pytest.raises(RemoteError) as info:  # no token: the first request is refused
            with connecting(client_kind, served.address) as peer:
                peer.request("ping")
        assert info.value.code == -32030
        wait_for(lambda: not served.remotes())
    assert "connect" not in trail and "ping" not in trail


def test_raw_peers_that_do_not_authenticate_are_closed(server_kind: str) -> None:
    server, trail = auth_server(server_kind)
    with serving(server_kind, server) as served:
        with raw_connect(served.address) as peer:  # another request first: refused, closed
            peer.send(message("ping", id=1))
            assert peer.receive() == {"jsonrpc": "2.0", "id": 1, "error": UNAUTHORIZED}
            assert peer.receive_eof() == b""
        with raw_connect(served.address) as peer:  # a wrong token: the same
            peer.send(message("$/authenticate", {"token": "s3crex"}, 1))
            assert peer.receive() == {"jsonrpc": "2.0", "id": 1, "error": UNAUTHORIZED}
            assert peer.receive_eof() == b""
        with raw_connect(served.address) as peer:  # a token that is not a string
            peer.send(message("$/authenticate", {"token": 1}, 1))
            assert peer.receive() == {"jsonrpc": "2.0", "id": 1, "error": UNAUTHORIZED}
            assert peer.receive_eof() == b""
        with raw_connect(served.address) as peer:  # a notification first: closed, unanswered
            peer.send(message("note", notification=True))
            assert peer.receive_eof() == b""
        with raw_connect(served.address) as peer:  # the right token, then anything goes
            peer.send(message("$/authenticate", {"token": TOKEN}, "a"), message("ping", id=1))
            assert peer.receive() == {"jsonrpc": "2.0", "id": "a", "result": True}
            assert peer.receive() == {"jsonrpc": "2.0", "id": 1, "result": "pong"}
        wait_for(lambda: not served.remotes())
    # (Both adapters run the disconnect hooks of refused connections too, whose connect
    # hooks never ran: not pinned here.)
    assert [e for e in trail if e != "disconnect"] == ["connect", "ping"]


def test_broadcasts_skip_unauthenticated_peers(server_kind: str) -> None:
    server, _ = auth_server(server_kind)
    with serving(server_kind, server) as served, \
            raw_connect(served.address) as stranger, raw_connect(served.address) as member:
        member.send(message("$/authenticate", {"token": TOKEN}, 1))
        assert member.receive()["result"] is True
        wait_for(lambda: len(served.remotes()) == 2)
        served.broadcast("news", ["hello"])
        assert member.receive() == message("news", ["hello"], notification=True)
        assert stranger.nothing_within(0.1)


def test_a_peer_that_never_authenticates_is_closed(server_kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_session, "AUTH_TIMEOUT", 0.3)  # (the session keeps the time)
    server, trail = auth_server(server_kind)
    with serving(server_kind, server) as served, raw_connect(served.address) as peer:
        assert peer.receive_eof(timeout=5) == b""
        wait_for(lambda: not served.remotes())
    assert "connect" not in trail




@pytest.mark.parametrize("server_kind", [
    "asyncio",
    "trio",
    "blocking",
])
def test_one_attempt_per_connection(server_kind: str) -> None:
    """Fail closed: nothing after a refused first request is handled, even if it came in
    the same packet."""
    server, trail = auth_server(server_kind)
    with serving(server_kind, server) as served:
        with raw_connect(served.address) as peer:
            peer.send(message("ping", id=1), message("$/authenticate", {"token": TOKEN}, 2),
                      message("ping", id=3))
            assert peer.receive() == {"jsonrpc": "2.0", "id": 1, "error": UNAUTHORIZED}
            rest = peer.receive_eof()
        wait_for(lambda: not served.remotes())
    assert (rest, [e for e in trail if e != "disconnect"]) == (b"", [])

