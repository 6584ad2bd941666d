"""Calls end to end, every server kind with every client kind: params binding, error
mapping, ordering of notifications and requests, batches, nested calls both ways, the
counters after a fixed exchange, and the connect/disconnect hooks."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from ezipc_adapters import ConnectionClosed, RemoteError

from .conftest import call, connecting, new_server, serving, wait_flag, wait_for

pytestmark = pytest.mark.timeout(30)


def test_params_binding(server_kind: str, client_kind: str) -> None:
    server = new_server(server_kind)

    @server.hook_request("subtract")
    def subtract(minuend: int, subtrahend: int = 0) -> int:
        return minuend - subtrahend

    server.hook_request("sum", lambda *xs: sum(xs))
    server.hook_request("kw", lambda a, *, b=2, **rest: [a, b, rest])

    @server.method
    def who(x: int, remote: Any) -> list[Any]:  # `remote` comes from the adapter, not params
        remote.data["x"] = x
        return [x, type(remote).__name__, remote.data["x"]]

    with serving(server_kind, server) as served, connecting(client_kind, served.address) as peer:
        assert peer.request("subtract", [42, 23]) == 19  # positional
        assert peer.request("subtract", (23, 42)) == -19  # a tuple goes as a list
        assert peer.request("subtract", {"subtrahend": 23, "minuend": 42}) == 19  # named
        assert peer.request("subtract", [5]) == 5  # a default fills in
        assert peer.request("sum", [1, 2, 3, 4]) == 10
        assert peer.request("sum") == 0  # absent params: no arguments
        assert peer.request("kw", {"a": 1, "c": 3}) == [1, 2, {"c": 3}]
        assert peer.request("who", [7]) == [7, "Remote", 7]
        assert peer.request("who", {"x": 8}) == [8, "Remote", 8]
        for bad in ([1, 2, 3], {"minuend": 1, "nope": 2}, {"subtrahend": 1}, None):
            with pytest.raises(RemoteError) as info:
                peer.request("subtract", bad)
            assert info.value.code == -32602, bad
            assert info.value.message.startswith("Invalid params")
        with pytest.raises(RemoteError) as info:
            peer.request("who", {"x": 1, "remote": "injected"})  # not bindable from params
        assert info.value.code == -32602


def test_error_mapping(server_kind: str, client_kind: str) -> None:
    server = new_server(server_kind)

    @server.method
    def refuse() -> None:
        raise RemoteError(-32050, "no, thanks", {"why": "policy"})

    @server.method
    def crash() -> None:
        raise ValueError("a secret detail")

    @server.method
    async def crash_later() -> None:
        raise KeyError("another secret")

    server.hook_request("unencodable", lambda: {1, 2, 3})
    server.hook_request("nan", lambda: float("nan"))
    server.hook_request("ping", lambda: "pong")
    with serving(server_kind, server) as served, connecting(client_kind, served.address) as peer:
        with pytest.raises(RemoteError) as info:
            peer.request("refuse")
        assert (info.value.code, info.value.message, info.value.data) == (-32050, "no, thanks", {"why": "policy"})
        for method in ("crash", "crash_later"):
            with pytest.raises(RemoteError) as info:
                peer.request(method)
            assert (info.value.code, info.value.message, info.value.data) == (-32603, "Internal error", None)
        with pytest.raises(RemoteError) as info:
            peer.request("nothing_here")
        assert info.value.code == -32601 and info.value.data is None
        for method in ("unencodable", "nan"):
            with pytest.raises(RemoteError) as info:
                peer.request(method)
            assert info.value.code == -32603 and info.value.data is None, method
        assert peer.request("ping") == "pong"  # the connection goes on
        remote = served.one_remote()
        wait_for(lambda: served.stats(remote)["errors"] == 6)


def test_a_request_starts_after_the_notifications_before_it(server_kind: str, client_kind: str) -> None:
    server = new_server(server_kind)
    seen: list[int] = []

    @server.hook_notif("note")
    def note(x: int) -> None:  # a plain function: finished before the request after it starts
        time.sleep(0.002)
        seen.append(x)

    server.hook_request("seen", lambda: list(seen))
    with serving(server_kind, server) as served, connecting(client_kind, served.address) as peer:
        for round in range(3):
            for i in range(5):
                peer.notify("note", [round * 5 + i])
            assert peer.request("seen") == list(range(round * 5 + 5))


def test_batch_with_mixed_results(server_kind: str, client_kind: str) -> None:
    server = new_server(server_kind)
    notes: list[Any] = []
    server.hook_request("add", lambda a, b: a + b)
    server.hook_request("crash", lambda: 1 / 0)
    server.hook_notif("note", notes.append)
    server.hook_request("notes", lambda: list(notes))
    with serving(server_kind, server) as served, connecting(client_kind, served.address) as peer:
        results = peer.batch(
            [("add", [1, 2]), ("nope", None), ("add", [1]), ("crash", None), ("add", {"a": 2, "b": 3})],
            notify=[("note", ["n"])],
        )
        assert results[0] == 3 and results[4] == 5
        assert [r.code for r in results[1:4]] == [-32601, -32602, -32603]
        assert all(isinstance(r, RemoteError) for r in results[1:4])
        assert peer.batch([], notify=[("note", ["m"])]) == []  # notifications only: no answer
        assert peer.request("notes") == ["n", "m"]


def test_nested_calls_both_ways(server_kind: str, client_kind: str) -> None:
    """client -> server -> client -> server -> client -> server, and a call the server
    makes on its own (broadcast_request), nested the other way round."""
    trail: list[str] = []

    async def bounce(n: int, remote: Any) -> list[int]:
        if n == 0:
            return [0]
        return [n, *await call(remote, "bounce", [n - 1])]

    def client_hooks(client: Any) -> None:
        client.hook_request("bounce", bounce)
        client.hook_request("where", lambda: "client")

    server = new_server(server_kind)
    server.hook_request("bounce", bounce)
    server.hook_request("where", lambda: "server")

    @server.method
    async def ask_back(remote: Any) -> str:
        trail.append("ask_back")
        return await call(remote, "where")  # type: ignore[no-any-return]

    with serving(server_kind, server) as served, \
            connecting(client_kind, served.address, setup=client_hooks) as peer:
        assert peer.request("ask_back") == "client"
        assert peer.request("bounce", [5]) == [5, 4, 3, 2, 1, 0]  # depth 3 on each side
        results = served.broadcast_request("bounce", [4], timeout=10)
        assert list(results.values()) == [[4, 3, 2, 1, 0]]
        futures = [peer.submit("bounce", [3]) for _ in range(4)]  # several at once
        assert [f.result(10) for f in futures] == [[3, 2, 1, 0]] * 4
    assert trail == ["ask_back"]


def test_counters_after_a_fixed_exchange(server_kind: str, client_kind: str) -> None:
    """The same exchange gives the same counters on every adapter, on both ends."""
    release = threading.Event()
    server = new_server(server_kind)
    server.hook_request("add", lambda a, b: a + b)
    server.hook_notif("note", lambda x: None)

    @server.method
    async def slow() -> str:
        await wait_flag(release)
        return "late"

    with serving(server_kind, server) as served, \
            connecting(client_kind, served.address, cancellation=None) as peer:
        assert peer.request("add", [1, 2]) == 3
        with pytest.raises(RemoteError):
            peer.request("nope")
        peer.notify("note", [1])
        assert peer.batch([("add", [1, 1]), ("add", [2, 2])]) == [2, 4]
        with pytest.raises(TimeoutError):
            peer.request("slow", timeout=0.1)  # no cancellation sent: the answer comes late
        release.set()
        wait_for(lambda: peer.stats()["late_responses"] == 1)
        assert peer.request("add", [0, 0]) == 0
        remote = served.one_remote()
        keys = ("messages_in", "messages_out", "errors", "late_responses", "requests_pending",
                "handlers_running")
        wait_for(lambda: served.stats(remote)["messages_out"] == 5)
        client = {k: peer.stats()[k] for k in keys}
        # out: add, nope, note, the batch, slow, add (6 writes); in: 5 answers (a batch's
        # reply counts its members; the late answer is dropped, not counted)
        assert client == {"messages_in": 5, "messages_out": 6, "errors": 0, "late_responses": 1,
                          "requests_pending": 0, "handlers_running": 0}
        server_side = {k: served.stats(remote)[k] for k in keys}
        # in: 7 calls (a batch counts its members); out: 5 answers (the batch's in one);
        # errors: the -32601 answered
        assert server_side == {"messages_in": 7, "messages_out": 5, "errors": 1, "late_responses": 0,
                               "requests_pending": 0, "handlers_running": 0}


def test_connect_and_disconnect_hooks_run_once_in_order(server_kind: str, client_kind: str) -> None:
    events: list[str] = []
    lock = threading.Lock()

    def record(what: str) -> None:
        with lock:
            events.append(what)

    server = new_server(server_kind)

    @server.hook_connect
    async def connected(remote: Any) -> None:
        record("server connect")

    server.hook_disconnect(lambda remote: record("server disconnect"))
    server.hook_request("ping", lambda: record("server ping") or "pong")

    def client_hooks(client: Any) -> None:
        client.hook_connect(lambda remote: record("client connect"))
        client.hook_disconnect(lambda remote: record("client disconnect"))

    with serving(server_kind, server) as served:
        with connecting(client_kind, served.address, setup=client_hooks) as peer:
            assert peer.request("ping") == "pong"
            assert peer.request("ping") == "pong"
        wait_for(lambda: "server disconnect" in events and "client disconnect" in events)
        server_events = [e for e in events if e.startswith("server")]
        client_events = [e for e in events if e.startswith("client")]
        assert server_events == ["server connect", "server ping", "server ping", "server disconnect"]
        assert client_events == ["client connect", "client disconnect"]
        # A connect hook that raises closes the connection before anything is handled.
        events.clear()
        server.hook_connect(lambda remote: 1 / 0)
        with connecting(client_kind, served.address) as peer:
            with pytest.raises((ConnectionClosed, RemoteError)):
                peer.request("ping", timeout=5)
        wait_for(lambda: "server disconnect" in events)
        assert events == ["server connect", "server disconnect"]
