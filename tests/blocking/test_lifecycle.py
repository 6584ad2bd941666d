"""Connections ending: disconnects mid-request, graceful shutdown with work in flight,
connect/disconnect hooks, start() and signals, idle and slow-message timeouts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ezipc_adapters.blocking import Client, ConnectionClosed, Remote, Server, connect

from .conftest import raw_connect, raw_server, serving, wait_for

pytestmark = pytest.mark.timeout(30)


def test_disconnect_fails_every_pending_call_at_once() -> None:
    with raw_server() as (address, accept):
        remote = connect(address)
        peer = accept()
        outcomes: list[Any] = []

        def call(i: int) -> None:
            try:
                outcomes.append(remote.request("slow", [i]))
            except Exception as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        future = remote.submit("slow", [99])
        for _ in range(6):
            peer.receive()
        t0 = time.monotonic()
        peer.close()
        for t in threads:
            t.join(5)
        with pytest.raises(ConnectionClosed):
            future.result(timeout=5)
        assert time.monotonic() - t0 < 2
        assert len(outcomes) == 5 and all(isinstance(o, ConnectionClosed) for o in outcomes)
        assert remote.wait_closed(5) and remote.closed
        with pytest.raises(ConnectionClosed):
            remote.request("more")
        remote.close()


def test_server_side_pending_calls_fail_when_the_client_goes() -> None:
    server = Server()
    client = Client()
    entered = threading.Event()
    outcome: list[Any] = []
    done = threading.Event()
    client.hook_request("client/stall", lambda: threading.Event().wait(10))

    @server.hook_request("ask_back")
    def ask_back(remote: Remote) -> None:
        entered.set()
        try:
            remote.request("client/stall")
        except Exception as exc:
            outcome.append(exc)
        done.set()

    with serving(server) as (address,):
        remote = client.connect(address)
        remote.submit("ask_back")
        assert entered.wait(5)
        remote.close()
        assert done.wait(5)
    assert isinstance(outcome[0], ConnectionClosed)


def test_graceful_shutdown_finishes_in_flight_work_and_answers_the_rest() -> None:
    server = Server(framing="ndjson", max_concurrency=2, shutdown_timeout=1.0)
    quick_started = threading.Event()
    stuck_started = threading.Event()
    never = threading.Event()

    @server.hook_request("quick")
    def quick() -> str:
        quick_started.set()
        time.sleep(0.3)
        return "finished"

    @server.hook_request("stuck")
    def stuck() -> str:
        stuck_started.set()
        never.wait(10)
        return "too late"

    server.serve_in_thread("tcp://127.0.0.1:0")
    try:
        with raw_connect(server.addresses[0]) as peer:
            peer.send({"jsonrpc": "2.0", "method": "quick", "id": 1})
            peer.send({"jsonrpc": "2.0", "method": "stuck", "id": 2})
            peer.send({"jsonrpc": "2.0", "method": "quick", "id": 3})  # waits: the limit is 2
            assert quick_started.wait(5) and stuck_started.wait(5)
            t0 = time.monotonic()
            stopper = threading.Thread(target=server.shutdown)
            stopper.start()
            answers = {}
            for _ in range(3):
                answer = peer.receive()
                answers[answer["id"]] = answer
            assert answers[1] == {"jsonrpc": "2.0", "id": 1, "result": "finished"}
            shutting_down = {"code": -32031, "message": "Server is shutting down"}
            assert answers[2] == {"jsonrpc": "2.0", "id": 2, "error": shutting_down}
            assert answers[3] == {"jsonrpc": "2.0", "id": 3, "error": shutting_down}
            assert peer.receive_eof() == b""  # then the server hangs up
            peer.close()
            stopper.join(10)
            assert 0.9 < time.monotonic() - t0 < 5
            assert server._stopped.is_set() and not server.remotes
    finally:
        never.set()
        server.shutdown()


def test_requests_arriving_during_shutdown_are_answered_shutting_down() -> None:
    server = Server(framing="ndjson", shutdown_timeout=2.0)
    started = threading.Event()
    release = threading.Event()
    server.hook_request("hold", lambda: (started.set(), release.wait(10))[1])
    server.serve_in_thread("tcp://127.0.0.1:0")
    try:
        with raw_connect(server.addresses[0]) as peer:
            peer.send({"jsonrpc": "2.0", "method": "hold", "id": 1})
            assert started.wait(5)
            stopper = threading.Thread(target=server.shutdown)
            stopper.start()
            wait_for(lambda: any(r._session.phase.name == "DRAINING" for r in server.remotes))
            peer.send({"jsonrpc": "2.0", "method": "hold", "id": 2})
            assert peer.receive()["error"]["code"] == -32031
            release.set()
            assert peer.receive() == {"jsonrpc": "2.0", "id": 1, "result": True}
            peer.close()
            stopper.join(10)
    finally:
        release.set()
        server.shutdown()


def test_connect_hook_runs_before_requests_and_disconnect_hook_once() -> None:
    server = Server()
    order: list[str] = []
    release = threading.Event()
    gone = threading.Event()

    @server.hook_connect
    def on_connect(remote: Remote) -> None:
        release.wait(5)
        order.append("connect")

    @server.hook_disconnect
    def on_disconnect(remote: Remote) -> None:
        order.append("disconnect")
        gone.set()

    server.hook_request("ping", lambda: order.append("ping") or "pong")
    with serving(server) as (address,):
        with connect(address) as remote:
            future = remote.submit("ping")
            threading.Timer(0.1, release.set).start()
            assert future.result(timeout=5) == "pong"
        assert gone.wait(5)
    assert order == ["connect", "ping", "disconnect"]


def test_a_failing_connect_hook_closes_the_connection() -> None:
    server = Server()
    disconnected = threading.Event()

    @server.hook_connect
    def reject(remote: Remote) -> None:
        raise PermissionError("go away")

    server.hook_disconnect(lambda remote: disconnected.set())
    server.hook_request("ping", lambda: "pong")
    with serving(server) as (address,), connect(address) as remote:
        with pytest.raises(ConnectionClosed):
            remote.request("ping", timeout=5)
        assert disconnected.wait(5)


def test_shutdown_from_a_handler_does_not_deadlock() -> None:
    server = Server()
    server.hook_request("stop", lambda: server.shutdown() or "bye")
    server.serve_in_thread("tcp://127.0.0.1:0")
    with connect(server.addresses[0]) as remote:
        assert remote.request("stop", timeout=5) == "bye"
    assert server._stopped.wait(10)


def test_idle_connections_are_closed() -> None:
    server = Server(idle_timeout=0.2)
    server.hook_request("ping", lambda: "pong")
    with serving(server) as (address,), connect(address) as remote:
        assert remote.request("ping") == "pong"
        assert remote.wait_closed(5)
        with pytest.raises(ConnectionClosed):
            remote.request("ping")


def test_a_busy_connection_is_not_idle() -> None:
    server = Server(idle_timeout=0.2)
    server.hook_request("nap", lambda: time.sleep(0.5) or "rested")
    with serving(server) as (address,), connect(address) as remote:
        assert remote.request("nap", timeout=5) == "rested"


def test_a_half_received_message_times_out() -> None:
    server = Server(message_timeout=0.2)
    with serving(server) as (address,), raw_connect(address) as peer:
        peer.send_raw(b'{"jsonrpc": "2.0", "meth')
        assert peer.receive_eof(5) == b""
        assert not server.remotes or all(r.closed for r in server.remotes)


def test_the_peer_closing_its_sending_side_still_gets_the_answers() -> None:
    server = Server(framing="ndjson")
    server.hook_request("nap", lambda x: time.sleep(0.1) or x)
    with serving(server) as (address,), raw_connect(address) as peer:
        for i in range(3):
            peer.send({"jsonrpc": "2.0", "method": "nap", "params": [i], "id": i})
        peer.sock.shutdown(__import__("socket").SHUT_WR)  # as `nc -N` does
        answers = sorted(peer.receive()["result"] for _ in range(3))
        assert answers == [0, 1, 2]
        assert peer.receive_eof() == b""


SERVER_SCRIPT = textwrap.dedent("""
    import logging, signal, sys, threading
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from ezipc_adapters.blocking import Server
    server = Server()
    server.hook_request("ping", lambda: "pong")
    server.hook_connect(lambda remote: print("ADDR", server.addresses[0], flush=True))
    def signal_later(signum):  # a thread other than the main one takes it, 0.3 s later
        kill = lambda: signal.pthread_kill(threading.get_ident(), signum)
        threading.Timer(0.3, kill).start()
    server.hook_request("signal_later", signal_later)
    def announce():
        server.ready.wait()
        print("READY", server.addresses[0], flush=True)
    threading.Thread(target=announce, daemon=True).start()
    server.start("tcp://127.0.0.1:0")
    print("STOPPED", flush=True)
""")


@contextmanager
def started_script() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """SERVER_SCRIPT in a child process, once it listens: the process and its address."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT], stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[0] == "READY"
        yield proc, line[1]
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_start_serves_until_a_signal_then_shuts_down(signum: int) -> None:
    with started_script() as (proc, address):
        with connect(address) as remote:
            assert remote.request("ping", timeout=5) == "pong"
            proc.send_signal(signum)
            assert remote.wait_closed(10)
        out, err = proc.communicate(timeout=10)
        assert "STOPPED" in out and proc.returncode == 0, err
        assert "shutting down" in err and "server stopped" in err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_start_shuts_down_on_a_signal_that_another_thread_takes(signum: int) -> None:
    # The kernel may hand a process's signal to any of its threads; Python runs the
    # handler on the main thread only, once it runs again: its loop, idle, must wake.
    with started_script() as (proc, address):
        with connect(address) as remote:
            remote.request("signal_later", [int(signum)], timeout=5)
            assert remote.wait_closed(5)
        out, err = proc.communicate(timeout=10)
        assert "STOPPED" in out and proc.returncode == 0, err


def test_no_address_means_the_original_port_9002(monkeypatch: pytest.MonkeyPatch) -> None:
    import ezipc_adapters._blocking_endpoints as impl

    asked: list[str] = []
    listen = impl.listen_sockets

    def listen_on_port_0(addr: Any, mode: int) -> Any:  # (tests never take a fixed port)
        asked.append(str(addr))
        return listen(type(addr)("tcp", host=addr.host, port=0), mode)

    monkeypatch.setattr(impl, "listen_sockets", listen_on_port_0)
    server = Server()
    server.hook_request("ping", lambda: "pong")
    (address,) = server.serve_in_thread()  # no address
    try:
        with connect(address) as remote:
            assert remote.request("ping") == "pong"
    finally:
        server.shutdown()
    assert asked == ["tcp://127.0.0.1:9002"]
