"""Limits at their edge: at the limit works, one over gets a clear error, the server
stays up. And a peer that never reads cannot wedge the server."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import pytest

from ezipc_adapters.blocking import LimitExceeded, RemoteError, Server, connect

from .conftest import raw_connect, raw_server, serving, wait_for

pytestmark = pytest.mark.timeout(30)


def test_max_pending() -> None:
    with raw_server() as (address, accept):
        remote = connect(address, max_pending=3)
        peer = accept()
        with remote:
            futures = [remote.submit("wait", [i]) for i in range(3)]  # at the limit: fine
            with pytest.raises(LimitExceeded, match="max_pending"):
                remote.submit("one-too-many")
            with pytest.raises(LimitExceeded):
                remote.request("one-too-many")
            with pytest.raises(LimitExceeded):
                remote.batch([("x", None)])
            first = peer.receive()
            for _ in range(2):
                peer.receive()
            peer.send({"jsonrpc": "2.0", "id": first["id"], "result": 0})
            assert futures[0].result(timeout=5) == 0
            remote.submit("now-fits")  # a slot came free
            assert peer.receive()["method"] == "now-fits"


def test_max_connections() -> None:
    server = Server(max_connections=2)
    server.hook_request("ping", lambda: "pong")
    with serving(server) as (address,):
        with connect(address) as one, connect(address) as two:
            assert one.request("ping") == two.request("ping") == "pong"
            with raw_connect(address) as third:
                assert third.receive() == {"jsonrpc": "2.0", "id": None, "error": {
                    "code": -32009, "message": "Too many connections"}}
                assert third.receive_eof() == b""
            assert one.request("ping") == "pong"  # the others are unaffected
        wait_for(lambda: not server.remotes)
        with connect(address) as again:  # slots came free
            assert again.request("ping") == "pong"


EMPTY = len(json.dumps({"jsonrpc": "2.0", "method": "echo", "params": [""], "id": 1}))


def sized(size: int) -> str:
    """An echo request whose JSON text is exactly ``size`` bytes."""
    text = json.dumps({"jsonrpc": "2.0", "method": "echo", "params": ["x" * (size - EMPTY)], "id": 1})
    assert len(text) == size
    return text


@pytest.mark.parametrize("framing", ["ndjson", "content-length"])
def test_max_message_size(framing: str) -> None:
    server = Server(framing=framing, max_message_size=200)
    server.hook_request("echo", lambda s: s)
    with serving(server) as (address,), raw_connect(address, framing) as peer:
        peer.send(sized(200))  # at the limit
        assert peer.receive()["result"] == "x" * (200 - EMPTY)
        peer.send(sized(201))  # one over
        answer = peer.receive()
        assert answer["id"] is None and answer["error"]["code"] == -32007
        assert "200" in answer["error"]["message"]
        peer.send(sized(150))  # the connection goes on
        assert peer.receive()["result"] == "x" * (150 - EMPTY)


def test_max_message_size_on_the_client_side() -> None:
    server = Server()
    server.hook_request("big", lambda n: "x" * n)
    with serving(server) as (address,), connect(address, max_message_size=1000) as remote:
        assert len(remote.request("big", [900])) == 900
        with pytest.raises(TimeoutError):  # the answer is skipped: it never arrives
            remote.request("big", [2000], timeout=0.5)
        assert remote.stats.errors == 1
        assert remote.request("big", [10]) == "x" * 10


def test_max_batch_size() -> None:
    server = Server(framing="ndjson", max_batch_size=3)
    server.hook_request("id", lambda x: x)
    with serving(server) as (address,), raw_connect(address) as peer:
        batch = [{"jsonrpc": "2.0", "method": "id", "params": [i], "id": i} for i in range(4)]
        peer.send(batch[:3])
        assert sorted(a["result"] for a in peer.receive()) == [0, 1, 2]
        peer.send(batch)
        answer = peer.receive()
        assert answer["id"] is None and answer["error"]["code"] == -32010
        peer.send(batch[0])
        assert peer.receive()["result"] == 0
    with serving(server) as (address,), connect(address) as remote:
        assert remote.batch([("id", [i]) for i in range(3)]) == [0, 1, 2]


def test_max_concurrency_applies_backpressure_and_drops_nothing() -> None:
    server = Server(max_concurrency=2, max_workers=8)
    running = 0
    peak = 0
    lock = threading.Lock()

    @server.hook_request("work")
    def work(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return i

    with serving(server) as (address,), connect(address) as remote:
        futures = [remote.submit("work", [i]) for i in range(40)]
        assert [f.result(timeout=10) for f in futures] == list(range(40))
        (served,) = server.remotes
        assert served.stats.calls_queued == 0
    assert peak == 2


def test_a_peer_that_never_reads_cannot_wedge_the_server() -> None:
    server = Server(framing="ndjson", shutdown_timeout=0.5)
    server.hook_request("big", lambda: "x" * 1_000_000)
    server.hook_request("ping", lambda: "pong")
    with serving(server) as (address,):
        hog = socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])))
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for i in range(20):  # 20 MB of answers it will never read
            hog.sendall(json.dumps({"jsonrpc": "2.0", "method": "big", "id": i}).encode() + b"\n")
        wait_for(lambda: any(r.stats.handlers_running for r in server.remotes))
        (stuck,) = server.remotes
        with connect(address) as other:  # everyone else is served meanwhile
            assert other.request("ping", timeout=5) == "pong"
        hog.close()  # the reader notices, though writers are stuck in sendall
        assert stuck.wait_closed(5)
        wait_for(lambda: not server.remotes)


def test_shutdown_completes_with_a_peer_that_never_reads() -> None:
    server = Server(framing="ndjson", shutdown_timeout=0.3)
    server.hook_request("big", lambda: "x" * 1_000_000)
    server.serve_in_thread("tcp://127.0.0.1:0")
    hog = socket.create_connection(("127.0.0.1", int(server.addresses[0].rsplit(":", 1)[1])))
    try:
        for i in range(20):
            hog.sendall(json.dumps({"jsonrpc": "2.0", "method": "big", "id": i}).encode() + b"\n")
        wait_for(lambda: any(r.stats.handlers_running for r in server.remotes))
        t0 = time.monotonic()
        server.shutdown(timeout=15)
        assert server._stopped.is_set()
        assert time.monotonic() - t0 < 8
    finally:
        hog.close()


def test_invalid_input_is_answered_and_the_connection_survives() -> None:
    server = Server(framing="ndjson")
    server.hook_request("ping", lambda: "pong")
    with serving(server) as (address,), raw_connect(address) as peer:
        peer.send_raw(b"5\n")  # a bare number once killed the original's worker
        assert peer.receive()["error"]["code"] == -32600
        peer.send_raw(b"\xff\xfe\n")
        assert peer.receive()["error"]["code"] == -32700
        peer.send({"jsonrpc": "2.0", "method": "ping", "id": 1})
        assert peer.receive()["result"] == "pong"


def test_a_broken_framing_is_answered_then_closed() -> None:
    server = Server(framing="content-length")
    with serving(server) as (address,), raw_connect(address, "content-length") as peer:
        peer.send_raw(b"Content-Length: nope\r\n\r\n{}")
        answer = peer.receive()
        assert answer["id"] is None and answer["error"]["code"] == -32700
        assert peer.receive_eof() == b""


def test_handler_errors_map_to_the_right_codes() -> None:
    server = Server(framing="ndjson")
    server.hook_request("subtract", lambda minuend, subtrahend: minuend - subtrahend)
    server.hook_request("boom", lambda: 1 / 0)
    server.hook_request("custom", lambda: (_ for _ in ()).throw(RemoteError(42, "custom", [1])))
    server.hook_request("unencodable", lambda: {1, 2})
    debug = Server(framing="ndjson", debug=True)
    debug.hook_request("boom", lambda: 1 / 0)
    with serving(server) as (address,), raw_connect(address) as peer:

        def ask(method: str, params: Any = None) -> Any:
            message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 1}
            if params is not None:
                message["params"] = params
            peer.send(message)
            return peer.receive()["error"]

        invalid = {"code": -32602, "message": "Invalid params: expected 2 positional params, got 1"}
        assert ask("subtract", [1]) == invalid
        assert ask("subtract", {"x": 1})["code"] == -32602
        assert ask("boom") == {"code": -32603, "message": "Internal error"}  # no detail, no traceback
        assert ask("custom") == {"code": 42, "message": "custom", "data": [1]}
        assert ask("unencodable")["code"] == -32603
        assert ask("nope") == {"code": -32601, "message": "Method not found: nope"}
    with serving(debug) as (address,), raw_connect(address) as peer:
        peer.send({"jsonrpc": "2.0", "method": "boom", "id": 1})
        assert peer.receive()["error"]["data"] == "ZeroDivisionError('division by zero')"


def test_shutdown_completes_with_a_stuck_writer_and_a_running_handler() -> None:
    server = Server(framing="ndjson", shutdown_timeout=0.3)
    release = threading.Event()
    server.hook_request("big", lambda: "x" * 1_000_000)
    server.hook_request("hold", lambda: release.wait(10))
    server.serve_in_thread("tcp://127.0.0.1:0")
    hog = socket.create_connection(("127.0.0.1", int(server.addresses[0].rsplit(":", 1)[1])))
    try:
        hog.sendall(b'{"jsonrpc": "2.0", "method": "hold", "id": "h"}\n')
        for i in range(20):
            hog.sendall(json.dumps({"jsonrpc": "2.0", "method": "big", "id": i}).encode() + b"\n")
        # the kernel's buffers are full: part of an answer waits in the stream (any part of
        # it, however small), the rest in the session
        wait_for(lambda: any(r._stream.backlog() > 0 for r in server.remotes))
        t0 = time.monotonic()
        server.shutdown(timeout=15)  # "hold" is still running; its answer cannot be written
        assert server._stopped.is_set()
        assert time.monotonic() - t0 < 8
    finally:
        release.set()
        hog.close()
