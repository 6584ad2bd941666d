"""What the application can observe besides answers: how a ``Remote`` describes its
peer, the log lines of a fixed exchange, and what a client answers to a misbehaving
server, the same on every adapter."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest

from .conftest import connecting, message, new_server, raw_connect, raw_server, serving, wait_for

pytestmark = pytest.mark.timeout(30)


def test_remote_describes_its_peer(server_kind: str, client_kind: str, tmp_path: Path) -> None:
    server = new_server(server_kind)

    @server.method
    def who(remote: Any) -> list[Any]:
        return [remote.remote_address, remote.local_address, remote.peer_credentials, remote.peer_certificate,
                remote.framing, remote.closed, remote.server is server]

    path = tmp_path / "app.sock"
    with serving(server_kind, server, "tcp://127.0.0.1:0", f"unix:{path}") as served:
        tcp, unix = served.addresses
        with connecting(client_kind, tcp) as peer:
            remote, local, creds, cert, framing, closed, ours = peer.request("who")
            mine = peer.run(lambda: [peer.remote.remote_address, peer.remote.local_address,
                                     peer.remote.peer_credentials, peer.remote.server])
            assert (remote, local) == (mine[1], mine[0]) and remote.startswith("tcp://127.0.0.1:")
            assert (creds, cert, framing, closed, ours) == (None, None, "ndjson", False, True)
            assert mine[2:] == [None, None]
        with connecting(client_kind, unix, framing="content-length") as peer:
            remote, local, creds, cert, framing, closed, ours = peer.request("who")
            assert remote == f"unix:pid={os.getpid()},uid={os.getuid()}"
            assert local == unix
            assert creds == [os.getpid(), os.getuid(), os.getgid()] and framing == "content-length"
            mine = peer.run(lambda: [peer.remote.remote_address, tuple(peer.remote.peer_credentials)])
            assert mine == [unix, (os.getpid(), os.getuid(), os.getgid())]


def test_log_lines_of_a_fixed_exchange(server_kind: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ezipc")
    server = new_server(server_kind, max_message_size=100)
    server.hook_request("ping", lambda: "pong")
    server.hook_request("crash", lambda: 1 / 0)
    server.hook_notif("note", lambda x: None)
    with serving(server_kind, server) as served:
        with raw_connect(served.address) as peer:
            for text in (message("ping", id=1), message("nope", id=2), message("crash", id=3), "{bad json",
                         message("x" * 200, id=4)):
                peer.send(text)
                peer.receive()
            peer.send(message("note", [1, 2], notification=True),
                      {"jsonrpc": "2.0", "id": None, "error": {"code": -1, "message": "m"}})
            peer.send(message("ping", id=5))
            peer.receive()
        wait_for(lambda: not served.remotes())
    lines = [(r.levelname, re.sub(r"127\.0\.0\.1:\d+", "PEER", r.getMessage().splitlines()[0]))
             for r in caplog.records if r.name == "ezipc"]
    assert lines[0] == ("INFO", "serving on tcp://PEER")
    assert lines[1] == ("INFO", "connection from tcp://PEER")
    assert lines[-1] == ("INFO", "server stopped")
    assert sorted(lines[2:-1]) == sorted([
        ("INFO", "tcp://PEER: nope answered with error -32601: Method not found: nope"),
        ("ERROR", "handler for 'crash' raised"),
        ("INFO", "tcp://PEER: crash answered with error -32603: Internal error"),
        ("WARNING", "tcp://PEER sent an invalid message: Parse error: Expecting property name enclosed "
                    "in double quotes: line 1 column 2 (char 1)"),
        ("WARNING", "tcp://PEER sent an invalid message: Message larger than 100 bytes"),
        ("WARNING", "notification 'note' from tcp://PEER: expected 1 positional params, got 2"),
        ("WARNING", "tcp://PEER reported an error: [-1] m"),
        ("INFO", "connection from tcp://PEER closed (closed by the peer)"),
    ])
    crash = next(r for r in caplog.records if r.getMessage() == "handler for 'crash' raised")
    assert crash.exc_info is not None  # the traceback stays in the log


def test_what_a_client_answers_to_a_misbehaving_server(client_kind: str) -> None:
    with raw_server() as (address, accept), connecting(client_kind, address, max_message_size=200) as peer:
        server = accept()
        server.send("{bad json")
        server.send(message("unknown", [1], "s1"))  # the client has no such hook
        server.send({"jsonrpc": "2.0", "id": 999, "result": 1})  # an answer to nothing: dropped
        server.send(message("x" * 300, id="s2"))  # over max_message_size
        server.send(message("rpc.x", id="s3"))
        server.send({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "you sent junk"}})
        answers = sorted((str(a["id"]), a["error"]["code"]) for a in (server.receive() for _ in range(4)))
        assert answers == [("None", -32700), ("None", -32007), ("s1", -32601), ("s3", -32601)]
        peer.notify("marker")
        assert server.receive() == message("marker", notification=True)
        wait_for(lambda: peer.stats()["errors"] == 6)
        stats = peer.stats()
        assert (stats["messages_in"], stats["messages_out"]) == (2, 5)




@pytest.mark.parametrize("server_kind", ["asyncio", "trio",
                                         "blocking"])
def test_message_log_lines(server_kind: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ezipc")
    server = new_server(server_kind, log_messages=True)
    server.hook_request("ping", lambda: "pong")
    with serving(server_kind, server) as served:
        with raw_connect(served.address) as peer:
            peer.send(message("ping", id=1))
            assert peer.receive()["result"] == "pong"
        wait_for(lambda: not served.remotes())
    lines = [re.sub(r"127\.0\.0\.1:\d+", "PEER", r.getMessage()) for r in caplog.records
             if r.name == "ezipc" and r.levelno == logging.DEBUG]
    assert lines == ["received from tcp://PEER: Request(method='ping', params=None, id=1)",
                     'sent to tcp://PEER: {"jsonrpc":"2.0","id":1,"result":"pong"}',
                     "received from tcp://PEER: Closed(unfinished=b'')"]




@pytest.mark.parametrize("client_kind", ["asyncio",
                                         "trio",
                                         "blocking"])
def test_a_client_logs_its_connection_opening_and_closing(
    client_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ezipc")
    with raw_server() as (address, accept):
        with connecting(client_kind, address) as peer:
            accept()
            peer.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "ezipc"]
    assert lines == [f"connected to {address}", f"connection to {address} closed (closed locally)"]
