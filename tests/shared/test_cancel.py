"""Timeouts, cancellation, disconnects and max_pending: what each client kind writes on
the wire (checked by a raw server), and what each server kind does with a cancellation
or a vanished peer (checked by a raw client)."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest

from ezipc_adapters import ConnectionClosed, LimitExceeded

from .conftest import (
    call,
    connecting,
    hub_of,
    message,
    new_server,
    raw_connect,
    raw_server,
    serving,
    wait_flag,
    wait_for,
)

pytestmark = pytest.mark.timeout(30)

PROFILES = {
    "lsp": ("$/cancelRequest", "id"),
    "mcp": ("notifications/cancelled", "requestId"),
    None: None,
}


@pytest.mark.parametrize("profile", ["lsp", "mcp", None])
def test_a_timeout_tells_the_peer_and_counts_the_late_answer(client_kind: str, profile: str | None) -> None:
    with raw_server() as (address, accept), connecting(client_kind, address, cancellation=profile) as peer:
        server = accept()
        with pytest.raises(TimeoutError):
            peer.request("slow", [1], timeout=0.1)
        request = server.receive()
        assert request == message("slow", [1], request["id"])
        peer.notify("marker")
        notice = PROFILES[profile]
        if notice is not None:
            method, key = notice
            assert server.receive() == message(method, {key: request["id"]}, notification=True)
        assert server.receive() == message("marker", notification=True)  # (None: nothing before it)
        server.send({"jsonrpc": "2.0", "id": request["id"], "result": "late"})
        wait_for(lambda: peer.stats()["late_responses"] == 1)
        stats = peer.stats()
        assert stats["requests_pending"] == 0 and stats["errors"] == 0
        future = peer.submit("next")  # the connection goes on
        again = server.receive()
        assert again["method"] == "next" and again["id"] != request["id"]
        server.send({"jsonrpc": "2.0", "id": again["id"], "result": 2})
        assert future.result(5) == 2


@pytest.mark.parametrize("profile", ["lsp", "mcp"])
def test_the_server_acts_on_a_cancellation(server_kind: str, profile: str) -> None:
    """A request still waiting for a slot is never started, whatever the adapter; one
    running is answered at once: -32800 under LSP, nothing under MCP. The async adapter
    cancels its handler (the handler sees it); a blocking handler runs to its end (its
    ``cancelled`` token is set) and its result is dropped and counted."""
    method, key = PROFILES[profile]  # type: ignore[misc]
    release = threading.Event()
    trail: list[str] = []
    server = new_server(server_kind, max_concurrency=1)

    @server.method
    async def hold() -> str:
        trail.append("hold started")
        try:
            await wait_flag(release)
        except BaseException:
            trail.append("hold cancelled")
            raise
        return "held"

    @server.method
    def work() -> str:
        trail.append("work started")
        return "worked"

    server.hook_request("ping", lambda: "pong")
    try:
        with serving(server_kind, server) as served, raw_connect(served.address) as peer:
            peer.send(message("hold", id=1), message("work", id=2))
            wait_for(lambda: trail == ["hold started"])
            peer.send(message(method, {key: 2}, notification=True))  # "work" waits in line
            if profile == "lsp":
                assert peer.receive() == {"jsonrpc": "2.0", "id": 2,
                                          "error": {"code": -32800, "message": "Request cancelled"}}
            peer.send(message(method, {key: 1}, notification=True))  # "hold" runs
            if profile == "lsp":
                assert peer.receive() == {"jsonrpc": "2.0", "id": 1,
                                          "error": {"code": -32800, "message": "Request cancelled"}}
            if server_kind == "blocking":
                release.set()  # (a thread cannot be interrupted: it runs to its end)
                remote = served.one_remote()
                wait_for(lambda: served.stats(remote)["late_results"] == 1)
            else:
                wait_for(lambda: "hold cancelled" in trail)
            peer.send(message("ping", id=3))
            assert peer.receive() == {"jsonrpc": "2.0", "id": 3, "result": "pong"}  # nothing before it
            assert "work started" not in trail
    finally:
        release.set()


def test_a_cancellation_unwinds_a_chain_of_calls_back(server_kind: str, client_kind: str) -> None:
    """The client gives up on down(4). The server's handler, waiting for the client's
    up(3), gives that call up too (the client is told), and so on down the chain to the
    leaf, which sees its cancellation: every handler on both sides has ended within a
    few seconds. Before, a blocking handler waited on for its call's answer (it cannot
    be stopped), so the chain stood until the leaf's own 10 s were up."""
    server = new_server(server_kind)
    server.hook_request("ping", lambda: "pong")

    async def until_cancelled(cancelled: Any) -> int:
        deadline = time.monotonic() + 10
        while not cancelled.is_set() and time.monotonic() < deadline:  # (either kind of Event)
            await anyio.sleep(0.01)
        return 0

    @server.method
    async def down(remote: Any, n: int, cancelled: Any) -> int:
        return await until_cancelled(cancelled) if n == 0 else 1 + await call(remote, "up", [n - 1], timeout=20)

    def setup(client: Any) -> None:
        async def up(remote: Any, n: int, cancelled: Any) -> int:
            return await until_cancelled(cancelled) if n == 0 else 1 + await call(remote, "down", [n - 1], timeout=20)

        client.hook_request("up", up)

    with serving(server_kind, server) as served, connecting(client_kind, served.address, setup=setup) as peer:
        with pytest.raises(TimeoutError):
            peer.request("down", [4], timeout=0.5)
        remote = served.one_remote()
        started = time.monotonic()
        wait_for(lambda: served.stats(remote)["handlers_running"] == 0, timeout=4)
        wait_for(lambda: peer.stats()["handlers_running"] == 0, timeout=4)
        assert time.monotonic() - started < 4
        assert peer.request("ping", timeout=10) == "pong"  # (the connection goes on)


def test_a_cancellation_gives_up_the_calls_its_handler_made_over_another_connection(
    server_kind: str, client_kind: str
) -> None:
    """A hub: the server's handler for A calls B (another connection) and waits. A gives
    up (timeout): the handler's call to B is given up too (B is told, and its handler
    sees the cancellation), and the handler ends at once, on every server kind. Before,
    a blocking handler waited on for B's answer: until B's handler ended (here, 10 s)."""
    server = new_server(server_kind)
    hub = hub_of(server)
    outcome: list[str] = []

    if server_kind == "blocking":  # a plain function, as most blocking handlers are

        @server.method
        def relay() -> Any:
            try:
                return hub["B"].request("slow", timeout=20)
            except BaseException as exc:
                outcome.append(type(exc).__name__)
                raise
    else:

        @server.method
        async def relay() -> Any:
            try:
                return await call(hub["B"], "slow", timeout=20)
            except BaseException as exc:
                outcome.append(type(exc).__name__)
                raise

    b_saw: list[bool] = []

    def setup(client: Any) -> None:
        async def slow(cancelled: Any) -> int:
            try:
                deadline = time.monotonic() + 10
                while not cancelled.is_set() and time.monotonic() < deadline:  # (either kind of Event)
                    await anyio.sleep(0.01)
                return 0
            finally:  # (an async handler's task is cancelled as well)
                b_saw.append(cancelled.is_set())

        client.hook_request("slow", slow)

    with serving(server_kind, server) as served, \
            connecting(client_kind, served.address) as a, \
            connecting(client_kind, served.address, setup=setup) as b:
        assert b.request("register", timeout=10) is True
        with pytest.raises(TimeoutError):
            a.request("relay", timeout=0.5)
        started = time.monotonic()
        wait_for(lambda: outcome, timeout=4)
        # (RequestCancelled from a blocking handler's request(); an async one is cancelled)
        assert outcome[0] in ("RequestCancelled", "CancelledError", "Cancelled"), outcome
        wait_for(lambda: b_saw, timeout=4)  # B was told: its handler saw the cancellation
        assert b_saw == [True]
        assert time.monotonic() - started < 4
        for remote in served.remotes():
            wait_for(lambda r=remote: served.stats(r)["handlers_running"] == 0, timeout=4)
            assert served.stats(remote)["requests_pending"] == 0
        assert b.request("register", timeout=10) is True  # (the connections go on)


def test_a_disconnect_fails_every_pending_call_at_once(client_kind: str) -> None:
    with raw_server() as (address, accept), connecting(client_kind, address) as peer:
        server = accept()
        futures = [peer.submit("wait", [i]) for i in range(3)]
        for _ in range(3):
            server.receive()
        started = time.monotonic()
        server.close()
        for future in futures:
            with pytest.raises(ConnectionClosed):
                future.result(5)
        assert time.monotonic() - started < 2
        wait_for(lambda: peer.closed)
        with pytest.raises(ConnectionClosed):
            peer.request("more")
        assert peer.stats()["requests_pending"] == 0


def test_a_handler_calling_a_vanished_peer_gets_connection_closed(server_kind: str) -> None:
    outcome: list[str] = []
    server = new_server(server_kind)

    @server.method
    async def ask(remote: Any) -> Any:
        try:
            return await call(remote, "question")
        except Exception as exc:
            outcome.append(type(exc).__name__)
            raise

    with serving(server_kind, server) as served:
        with raw_connect(served.address) as peer:
            peer.send(message("ask", id=1))
            question = peer.receive()
            assert question["method"] == "question"
        wait_for(lambda: outcome == ["ConnectionClosed"])
        wait_for(lambda: not served.remotes())


def test_max_pending(client_kind: str) -> None:
    with raw_server() as (address, accept), connecting(client_kind, address, max_pending=2) as peer:
        server = accept()
        futures = [peer.submit("wait", [i]) for i in range(2)]  # at the limit: sent
        with pytest.raises(LimitExceeded):
            peer.request("one-too-many")
        with pytest.raises(LimitExceeded):
            peer.batch([("one-too-many", None)])
        first, second = server.receive(), server.receive()
        peer.notify("marker")
        assert server.receive() == message("marker", notification=True)  # nothing was sent
        server.send({"jsonrpc": "2.0", "id": first["id"], "result": 0})
        assert futures[0].result(5) == 0
        future = peer.submit("now-fits")  # a slot came free
        assert server.receive()["method"] == "now-fits"
        server.send({"jsonrpc": "2.0", "id": second["id"], "result": 1})
        assert futures[1].result(5) == 1
        assert not future.done()


def test_a_batch_timeout_cancels_the_unanswered_members(client_kind: str) -> None:
    with raw_server() as (address, accept), connecting(client_kind, address) as peer:
        server = accept()
        outcome: list[Any] = []

        def go() -> None:
            try:
                outcome.append(peer.batch([("a", None), ("b", None), ("c", None)], timeout=0.3))
            except Exception as exc:
                outcome.append(exc)

        caller = threading.Thread(target=go)
        caller.start()
        batch = server.receive()
        assert [m["method"] for m in batch] == ["a", "b", "c"]
        server.send({"jsonrpc": "2.0", "id": batch[1]["id"], "result": "B"})
        caller.join(5)
        assert len(outcome) == 1 and isinstance(outcome[0], TimeoutError)
        peer.notify("marker")
        notices = [server.receive() for _ in range(3)]
        assert notices == [message("$/cancelRequest", {"id": batch[0]["id"]}, notification=True),
                           message("$/cancelRequest", {"id": batch[2]["id"]}, notification=True),
                           message("marker", notification=True)]
        assert peer.stats()["requests_pending"] == 0


def test_a_server_side_timeout_tells_the_client(server_kind: str) -> None:
    server = new_server(server_kind)

    @server.method
    async def ask(remote: Any) -> str:
        try:
            return await call(remote, "question", timeout=0.1)  # type: ignore[no-any-return]
        except TimeoutError:
            return "no answer in time"

    with serving(server_kind, server) as served, raw_connect(served.address) as peer:
        peer.send(message("ask", id=1))
        question = peer.receive()
        assert question == message("question", id=question["id"])
        assert peer.receive() == message("$/cancelRequest", {"id": question["id"]}, notification=True)
        assert peer.receive() == {"jsonrpc": "2.0", "id": 1, "result": "no answer in time"}
        peer.send({"jsonrpc": "2.0", "id": question["id"], "result": "late"})
        remote = served.one_remote()
        wait_for(lambda: served.stats(remote)["late_responses"] == 1)
        assert served.stats(remote)["errors"] == 0
