"""Timeouts and cancellation on the wire: LSP ($/cancelRequest), MCP
(notifications/cancelled) and off; late answers dropped and counted."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest

from ezipc_adapters.blocking import Client, Server, connect

from ..shared.conftest import hub_of
from .conftest import interrupted_elsewhere, raw_connect, raw_server, serving, sigint_raises, wait_for

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("profile", "method", "key"),
    [("lsp", "$/cancelRequest", "id"), ("mcp", "notifications/cancelled", "requestId")],
)
def test_a_timeout_tells_the_peer_and_drops_the_late_answer(profile: str, method: str, key: str) -> None:
    with raw_server() as (address, accept):
        remote = connect(address, cancellation=profile)
        peer = accept()
        with remote:
            with pytest.raises(TimeoutError):
                remote.request("slow", [1], timeout=0.1)
            request = peer.receive()
            assert request == {"jsonrpc": "2.0", "method": "slow", "params": [1], "id": request["id"]}
            assert peer.receive() == {"jsonrpc": "2.0", "method": method, "params": {key: request["id"]}}
            peer.send({"jsonrpc": "2.0", "id": request["id"], "result": "late"})  # too late: dropped
            peer.send({"jsonrpc": "2.0", "method": "ping", "id": "p"})  # the connection goes on
            assert peer.receive() == {"jsonrpc": "2.0", "id": "p", "error": {
                "code": -32601, "message": "Method not found: ping"}}
            assert remote.stats.late_responses == 1
            assert remote.stats.errors == 1  # the -32601 we answered; the late answer is no error


def test_cancellation_off_sends_nothing() -> None:
    with raw_server() as (address, accept):
        remote = connect(address, cancellation=None)
        peer = accept()
        with remote:
            with pytest.raises(TimeoutError):
                remote.request("slow", timeout=0.05)
            first = peer.receive()
            remote.notify("marker")
            assert peer.receive() == {"jsonrpc": "2.0", "method": "marker"}  # nothing in between
            peer.send({"jsonrpc": "2.0", "id": first["id"], "result": 1})
            wait_for(lambda: remote.stats.late_responses == 1)


def test_blocking_server_answers_a_cancel_at_once_and_drops_the_late_result() -> None:
    server = Server()
    release = threading.Event()
    started = threading.Event()
    token: list[threading.Event] = []

    @server.hook_request("slow")
    def slow(cancelled: threading.Event) -> str:
        token.append(cancelled)
        started.set()
        release.wait(10)
        return "done"

    server.hook_request("ping", lambda: "pong")
    with serving(server) as (address,), connect(address) as remote:
        with pytest.raises(TimeoutError):
            remote.request("slow", timeout=0.2)
        assert started.is_set()
        (served,) = server.remotes
        # The server answers -32800 at once (late for us: dropped and counted), and sets
        # the handler's cancellation token; the handler's own result is dropped later.
        wait_for(lambda: remote.stats.late_responses == 1)
        wait_for(lambda: token[0].is_set())  # (set just after the answer is written)
        assert served.stats.late_results == 0
        release.set()
        wait_for(lambda: served.stats.late_results == 1)
        assert remote.request("ping") == "pong"
        assert remote.stats.late_responses == 1


def test_mcp_end_to_end_withholds_the_cancelled_answer() -> None:
    server = Server(cancellation="mcp")
    release = threading.Event()
    server.hook_request("slow", lambda: release.wait(10) and "done")
    server.hook_request("ping", lambda: "pong")
    with serving(server) as (address,), connect(address, cancellation="mcp") as remote:
        with pytest.raises(TimeoutError):
            remote.request("slow", timeout=0.2)
        (served,) = server.remotes
        wait_for(lambda: served.stats.messages_in == 2)  # the request, then notifications/cancelled
        release.set()
        wait_for(lambda: served.stats.late_results == 1)  # its result dropped; MCP: nothing written
        assert remote.request("ping") == "pong"
        assert remote.stats.late_responses == 0
        wait_for(lambda: served.stats.messages_out == 1)  # only "pong" (counted after the write)


@pytest.mark.parametrize("profile", ["lsp", "mcp"])
def test_a_queued_request_cancelled_by_the_peer_never_runs(profile: str) -> None:
    server = Server(framing="ndjson", max_concurrency=1, cancellation=profile)
    release = threading.Event()
    started = threading.Event()
    ran: list[Any] = []

    @server.hook_request("work")
    def work(i: int) -> int:
        ran.append(i)
        started.set()
        release.wait(10)
        return i

    cancel = ({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 2}} if profile == "lsp"
              else {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}})
    with serving(server) as (address,), raw_connect(address) as peer:
        peer.send({"jsonrpc": "2.0", "method": "work", "params": [1], "id": 1})
        assert started.wait(5)
        peer.send({"jsonrpc": "2.0", "method": "work", "params": [2], "id": 2})  # waits: limit 1
        peer.send(cancel)
        if profile == "lsp":
            assert peer.receive() == {"jsonrpc": "2.0", "id": 2, "error": {
                "code": -32800, "message": "Request cancelled"}}
        (served,) = server.remotes
        wait_for(lambda: served.stats.messages_in == 3)  # both requests and the cancel
        release.set()
        assert peer.receive() == {"jsonrpc": "2.0", "id": 1, "result": 1}
        peer.send({"jsonrpc": "2.0", "method": "work", "params": [3], "id": 3})
        assert peer.receive() == {"jsonrpc": "2.0", "id": 3, "result": 3}  # MCP: nothing for id 2
    assert ran == [1, 3]


def test_cancelling_a_future_tells_the_peer() -> None:
    with raw_server() as (address, accept):
        remote = connect(address)
        peer = accept()
        with remote:
            future = remote.submit("slow")
            request = peer.receive()
            assert future.cancel()
            assert future.cancel()  # (cancelled already: True, and nothing more is sent)
            assert peer.receive() == {"jsonrpc": "2.0", "method": "$/cancelRequest",
                                      "params": {"id": request["id"]}}
            assert remote.stats.requests_pending == 0 or remote._waiters == {}
            remote.notify("marker")
            assert peer.receive() == {"jsonrpc": "2.0", "method": "marker"}


def test_a_future_cancelled_twice_runs_its_callback_once() -> None:
    with raw_server() as (address, accept):
        remote = connect(address)
        peer = accept()
        with remote:
            calls: list[bool] = []
            ran = threading.Event()
            future = remote.submit("slow", callback=lambda f: (calls.append(f.cancelled()), ran.set()))
            peer.receive()
            threads = [threading.Thread(target=future.cancel) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(5)
            assert ran.wait(5)
            remote.notify("marker")  # (the cancel, once, then this)
            assert peer.receive()["method"] == "$/cancelRequest"
            assert peer.receive() == {"jsonrpc": "2.0", "method": "marker"}
            assert calls == [True]


def test_submit_timeout_fails_the_future_and_cancels() -> None:
    with raw_server() as (address, accept):
        remote = connect(address)
        peer = accept()
        with remote:
            future = remote.submit("slow", timeout=0.1)
            request = peer.receive()
            with pytest.raises(TimeoutError):
                future.result(timeout=5)
            assert peer.receive()["params"] == {"id": request["id"]}


def test_batch_timeout_cancels_every_unanswered_member() -> None:
    with raw_server() as (address, accept):
        remote = connect(address)
        peer = accept()
        with remote:
            results: list[Any] = []
            thread = threading.Thread(target=lambda: results.append(
                _catch(lambda: remote.batch([("a", None), ("b", None)], timeout=0.5))))
            thread.start()
            batch = peer.receive()
            peer.send({"jsonrpc": "2.0", "id": batch[0]["id"], "result": "a"})
            thread.join(5)
            assert isinstance(results[0], TimeoutError)
            assert peer.receive() == {"jsonrpc": "2.0", "method": "$/cancelRequest",
                                      "params": {"id": batch[1]["id"]}}


def test_interrupting_a_waiting_caller_cancels_its_request() -> None:
    client = Client()
    with raw_server() as (address, accept):
        remote = client.connect(address)
        peer = accept()
        with remote:
            interrupt = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
            interrupt.start()
            with sigint_raises(), pytest.raises(KeyboardInterrupt):
                remote.request("slow")  # interrupted while it waits, as by Ctrl-C
            request = peer.receive()
            assert peer.receive() == {"jsonrpc": "2.0", "method": "$/cancelRequest",
                                      "params": {"id": request["id"]}}
            assert remote.stats.requests_pending == 0


@pytest.mark.parametrize("wait", ["request", "result"])
def test_a_ctrl_c_that_another_thread_takes_still_interrupts_the_caller(wait: str) -> None:
    with raw_server() as (address, accept):
        remote = connect(address)
        peer = accept()
        with remote:
            with interrupted_elsewhere(remote.close):
                if wait == "request":
                    remote.request("slow")  # (it reads the socket itself, in poll)
                else:
                    remote.submit("slow").result()
            request = peer.receive()
            if wait == "request":  # (an interrupted result() leaves its future pending)
                assert peer.receive() == {"jsonrpc": "2.0", "method": "$/cancelRequest",
                                          "params": {"id": request["id"]}}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
def test_a_child_forked_from_another_thread_waits_in_slices_on_its_only_thread() -> None:
    """A caller on the main thread waits in slices of SIGNAL_CHECK (so that a Ctrl-C
    another thread takes still reaches it). In a child forked from another thread,
    that thread is the child's main thread, and its waits are sliced too."""
    import warnings

    from ezipc_adapters._blocking_io import SIGNAL_CHECK, signal_cap

    statuses: list[int] = []

    def fork() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0 if signal_cap() == SIGNAL_CHECK else 1)
        statuses.append(os.waitpid(pid, 0)[1])

    assert signal_cap() == SIGNAL_CHECK  # (the test's own thread is the main one)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # (3.12+: a fork with threads running)
        thread = threading.Thread(target=fork)
        thread.start()
        thread.join(10)
    assert statuses == [0]


def _catch(fn: Any) -> Any:
    try:
        return fn()
    except Exception as exc:
        return exc


@pytest.mark.parametrize("how", ["request", "submit", "batch", "after"])
def test_a_cancelled_handler_gives_up_its_calls_over_another_connection(how: str) -> None:
    """A hub's handler for A waits for B (another connection), however it calls: A gives
    up, so the call to B is given up (``RequestCancelled``; B is told) and the handler's
    thread is free at once. "after": the handler calls B only once its own request has
    been cancelled; that wait is given up at once too (as a cancelled async handler's
    next await is). Before, each waited for B's answer, or the call's timeout."""
    server = Server()
    hub = hub_of(server)
    outcome: list[str] = []

    server.hook_request("ping", lambda: "pong")

    @server.method
    def relay(cancelled: threading.Event) -> Any:
        there = hub["B"]
        try:
            if how == "after":
                assert cancelled.wait(10)
            if how == "submit":
                return there.submit("slow", timeout=20).result()
            if how == "batch":
                return there.batch([("slow", None)], timeout=20)
            return there.request("slow", timeout=20)
        except BaseException as exc:
            outcome.append(type(exc).__name__)
            raise

    with serving(server) as (address,), raw_connect(address) as b, connect(address) as a:
        b.send({"jsonrpc": "2.0", "id": 1, "method": "register"})
        assert b.receive() == {"jsonrpc": "2.0", "id": 1, "result": True}
        with pytest.raises(TimeoutError):
            a.request("relay", timeout=0.3)
        slow = b.receive()
        if how == "batch":
            (slow,) = slow
        assert slow["method"] == "slow"
        assert b.receive() == {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": slow["id"]}}
        wait_for(lambda: outcome == ["RequestCancelled"], timeout=3)
        assert a.request("ping", timeout=10) == "pong"  # (both connections go on)
        b.send({"jsonrpc": "2.0", "id": slow["id"], "result": "late"})  # dropped, counted
        wait_for(lambda: hub["B"].stats.late_responses == 1)
