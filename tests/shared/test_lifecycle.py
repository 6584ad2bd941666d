"""The ends of connections: a peer's EOF (half-close) still gets the answers it is owed,
on the server and on the client side; a graceful shutdown lets work in flight finish
within shutdown_timeout and answers the rest -32031."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from typing import Any

import anyio
import pytest

from ezipc_adapters import ConnectionClosed, RemoteError

from .conftest import (
    call,
    connecting,
    error_code,
    hub_of,
    message,
    new_server,
    raw_connect,
    raw_server,
    serving,
    tell,
    wait_flag,
    wait_for,
)

pytestmark = pytest.mark.timeout(30)


def test_the_server_answers_after_the_peers_eof(server_kind: str) -> None:
    """A client that half-closes after its requests still gets every answer (and the
    notifications its handlers send meanwhile), then the server closes."""
    server = new_server(server_kind, max_concurrency=1)  # (the third waits in line)

    @server.method
    async def slow(n: int, remote: Any) -> int:
        await anyio.sleep(0.05)
        await tell(remote, "progress", [n])  # the peer can still read
        return n * 10

    with serving(server_kind, server) as served, raw_connect(served.address) as peer:
        peer.send(message("slow", [1], 1), message("slow", [2], 2), message("slow", [3], 3))
        peer.shutdown_write()
        received = [peer.receive() for _ in range(6)]
        answers = sorted((m for m in received if "id" in m), key=lambda m: m["id"])
        notes = sorted(m["params"][0] for m in received if "id" not in m)
        assert answers == [{"jsonrpc": "2.0", "id": n, "result": n * 10} for n in (1, 2, 3)]
        assert notes == [1, 2, 3]
        assert peer.receive_eof() == b""
        wait_for(lambda: not served.remotes())


def test_the_client_answers_after_the_peers_eof(client_kind: str) -> None:
    async def echo(x: Any) -> Any:
        await anyio.sleep(0.1)
        return x

    def hooks(client: Any) -> None:
        client.hook_request("echo", echo)

    with raw_server() as (address, accept), connecting(client_kind, address, setup=hooks) as peer:
        server = accept()
        pending = peer.submit("never")  # ours: no answer can come after the peer's EOF
        assert server.receive()["method"] == "never"
        server.send(message("echo", ["a"], "s1"), message("echo", ["b"], "s2"))
        server.shutdown_write()
        answers = sorted((server.receive(), server.receive()), key=lambda m: m["id"])
        assert answers == [{"jsonrpc": "2.0", "id": "s1", "result": "a"},
                           {"jsonrpc": "2.0", "id": "s2", "result": "b"}]
        assert server.receive_eof() == b""
        with pytest.raises(Exception, match="closed by the peer"):
            pending.result(5)
        wait_for(lambda: peer.closed)


def test_graceful_shutdown(server_kind: str) -> None:
    release = threading.Event()
    trail: list[str] = []
    server = new_server(server_kind, shutdown_timeout=0.5)

    @server.method
    async def quick() -> str:
        trail.append("quick")
        await anyio.sleep(0.2)
        return "done"

    @server.method
    async def stuck() -> str:
        trail.append("stuck")
        try:
            await wait_flag(release)
        except BaseException:
            trail.append("stuck cancelled")
            raise
        return "too late"

    server.hook_request("ping", lambda: "pong")
    try:
        with serving(server_kind, server) as served, raw_connect(served.address) as peer:
            peer.send(message("quick", id=1), message("stuck", id=2))
            wait_for(lambda: sorted(trail) == ["quick", "stuck"])
            remote = served.one_remote()
            stopping = threading.Thread(target=served.shutdown)
            began = time.monotonic()
            stopping.start()
            wait_for(lambda: served.run(lambda: remote._session.phase.name == "DRAINING"))
            peer.send(message("ping", id=3))  # arrives while shutting down
            answers = {a["id"]: a for a in (peer.receive(), peer.receive(), peer.receive())}
            assert answers[1] == {"jsonrpc": "2.0", "id": 1, "result": "done"}  # finished in time
            assert error_code(answers[2]) == -32031  # still running after shutdown_timeout
            assert error_code(answers[3]) == -32031  # new work is refused
            assert answers[2]["error"]["message"] == answers[3]["error"]["message"] == "Server is shutting down"
            assert 0.4 < time.monotonic() - began < 5
            release.set()  # (a blocking handler cannot be interrupted: this lets it end)
            assert peer.receive_eof() == b""
            peer.close()  # (the blocking server waits up to 2 s for this before it lets go)
            stopping.join(10)
            assert not stopping.is_alive()
            if server_kind != "blocking":  # (a thread cannot be interrupted)
                assert "stuck cancelled" in trail
            with pytest.raises(OSError):
                with raw_connect(served.address):
                    pass
    finally:
        release.set()


def test_what_a_client_sees_of_a_shutdown(server_kind: str, client_kind: str) -> None:
    release = threading.Event()
    server = new_server(server_kind, shutdown_timeout=0.2)

    @server.method
    async def stuck() -> str:
        await wait_flag(release)
        return "too late"

    try:
        with serving(server_kind, server) as served, connecting(client_kind, served.address) as peer:
            pending = peer.submit("stuck")
            remote = served.one_remote()
            wait_for(lambda: served.stats(remote)["messages_in"] == 1)
            stopping = threading.Thread(target=served.shutdown)
            stopping.start()
            with pytest.raises(RemoteError) as info:
                pending.result(5)
            assert info.value.code == -32031
            # (A blocking handler cannot be interrupted: its server waits up to 2 s more for
            # its thread before it lets go. This one may end now.)
            release.set()
            stopping.join(10)
            assert not stopping.is_alive()
            wait_for(lambda: peer.closed)
            with pytest.raises(ConnectionClosed):
                peer.request("more")
    finally:
        release.set()




def test_a_hubs_handler_ended_by_the_shutdown_is_answered_shutting_down(
    server_kind: str, client_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A hub's handlers for A wait for calls on B; the server shuts down. B has nothing
    to finish, so it closes at once, and their calls fail with ConnectionClosed: each
    handler's answer is -32031 (the server is shutting down), not -32603 with a logged
    traceback. (On the blocking server a handler could fail before its own connection
    had begun to drain: the server shut them down one after the other.)"""
    server = new_server(server_kind, shutdown_timeout=5)
    hub = hub_of(server)

    if server_kind == "blocking":  # a plain function, as most blocking handlers are

        @server.method
        def relay() -> Any:
            return hub["B"].request("wait", timeout=20)
    else:

        @server.method
        async def relay() -> Any:
            return await call(hub["B"], "wait", timeout=20)

    release = threading.Event()

    def setup(client: Any) -> None:
        async def wait() -> int:
            await wait_flag(release)
            return 0

        client.hook_request("wait", wait)

    caplog.set_level(logging.ERROR)
    try:
        with serving(server_kind, server) as served, \
                connecting(client_kind, served.address) as a, \
                connecting(client_kind, served.address, setup=setup) as b:
            assert b.request("register", timeout=10) is True
            futures = [a.submit("relay", timeout=20) for _ in range(10)]
            wait_for(lambda: [served.stats(r)["requests_pending"] for r in served.remotes()].count(10) == 1)
            started = time.monotonic()
            served.shutdown()
            for future in futures:
                with pytest.raises(RemoteError) as info:
                    future.result(10)
                assert info.value.code == -32031
            assert time.monotonic() - started < 4  # (not the 5 s grace: nothing was left to run)
    finally:
        release.set()
    assert not [r for r in caplog.records if "raised" in r.getMessage()]


@pytest.mark.parametrize("server_kind", [
    "asyncio",
    "trio",
    "blocking",
])
def test_a_running_notification_handler_finishes_within_the_grace_period(server_kind: str) -> None:
    trail: list[str] = []
    server = new_server(server_kind, shutdown_timeout=2.0)

    @server.hook_notif("save")
    async def save(n: int) -> None:
        trail.append(f"start {n}")
        try:
            await anyio.sleep(0.2)
        except BaseException:
            trail.append(f"cancelled {n}")
            raise
        trail.append(f"end {n}")

    with serving(server_kind, server) as served, raw_connect(served.address) as peer:
        peer.send(message("save", [1], notification=True))
        wait_for(lambda: trail == ["start 1"])
        stopping = threading.Thread(target=served.shutdown)
        stopping.start()
        assert peer.receive_eof() == b""
        peer.close()
        stopping.join(10)
    assert trail == ["start 1", "end 1"]


def test_a_client_closes_an_idle_connection(client_kind: str) -> None:
    with raw_server() as (address, accept), connecting(client_kind, address, idle_timeout=0.3) as peer:
        server = accept()
        future = peer.submit("slow")  # a connection waiting for an answer is not idle
        request = server.receive()
        assert server.nothing_within(0.5)
        server.send({"jsonrpc": "2.0", "id": request["id"], "result": 1})
        assert future.result(5) == 1
        assert server.receive_eof(timeout=5) == b""
        wait_for(lambda: peer.closed)


def test_a_client_that_closes_with_a_call_still_running_at_the_peer_does_not_wait_for_it(
    client_kind: str,
) -> None:
    """The call fails at once; close() returns at once (the blocking client waited 2 s
    for the peer's EOF, which a server finishing our call does not send); the peer sees
    our EOF."""
    with raw_server() as (address, accept), connecting(client_kind, address) as peer:
        server = accept()
        future = peer.submit("wait")
        server.receive()
        started = time.monotonic()
        peer.close()
        took = time.monotonic() - started
        with pytest.raises(ConnectionClosed):
            future.result(0)
        assert server.receive_eof(timeout=5) == b""
        assert took < 1.0, f"close() took {took:.2f} s"


def _reset(peer: Any) -> None:
    """Close with an RST (SO_LINGER 0), not a FIN: a reset, not a half-close."""
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


def test_a_reset_ends_the_connection_at_once_on_the_server(server_kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """Unlike an EOF, nobody will read answers after a reset: the connection ends now (its
    disconnect hook runs) without waiting for the handlers (which the async adapter
    cancels; a blocking handler's thread runs to its end, its answer dropped)."""
    caplog.set_level(logging.INFO, logger="ezipc")
    release = threading.Event()
    ended: list[str] = []
    server = new_server(server_kind)

    @server.method
    async def slow() -> int:
        await wait_flag(release)
        return 1

    server.hook_disconnect(lambda remote: ended.append("disconnect"))
    try:
        with serving(server_kind, server) as served:
            with raw_connect(served.address) as peer:
                peer.send(message("slow", id=1))
                remote = served.one_remote()
                wait_for(lambda: served.stats(remote)["messages_in"] == 1)
                _reset(peer)
            wait_for(lambda: ended == ["disconnect"])
            wait_for(lambda: not served.remotes())
            assert not release.is_set()  # (the handler is still at work)
    finally:
        release.set()
    closed = [r.getMessage() for r in caplog.records if "closed (" in r.getMessage()]
    assert len(closed) == 1 and closed[0].endswith("closed (connection lost)")


def test_a_reset_fails_the_clients_calls_at_once(client_kind: str) -> None:
    with raw_server() as (address, accept), connecting(client_kind, address) as peer:
        server = accept()
        future = peer.submit("wait")
        server.receive()
        _reset(server)
        with pytest.raises(ConnectionClosed, match="connection lost"):
            future.result(5)
        wait_for(lambda: peer.closed)
