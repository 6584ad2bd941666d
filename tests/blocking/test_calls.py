"""Calls in both directions: server -> client, nested callbacks (the original EZ-IPC's
deadlock), many threads sharing one Remote, submit() futures and callbacks."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest

from ezipc_adapters.blocking import Client, ConnectionClosed, Remote, RemoteError, Server, connect

from .conftest import raw_connect, raw_server, serving, wait_for

pytestmark = pytest.mark.timeout(30)


def test_server_calls_its_client() -> None:
    server = Server()
    client = Client()
    told: list[Any] = []
    client.hook_request("client/ping", lambda: "pong")
    client.hook_notif("client/tell", told.append)
    got = threading.Event()

    @server.method
    def whoami(remote: Remote) -> Any:
        remote.notify("client/tell", ["hello"])
        return remote.request("client/ping")

    @server.hook_connect
    def on_connect(remote: Remote) -> None:
        remote.data["greeting"] = remote.request("client/ping")
        got.set()

    with serving(server) as (address,), client.connect(address) as remote:
        assert remote.request("whoami") == "pong"
        assert got.wait(5)
        assert [r.data["greeting"] for r in server.remotes] == ["pong"]
        wait_for(lambda: told == ["hello"])


def test_nested_calls_both_ways_at_any_depth() -> None:
    server = Server()
    client = Client()

    @server.hook_request("down")
    def server_down(n: int, remote: Remote) -> int:
        return n if n == 0 else 1 + remote.request("up", [n - 1])

    @client.hook_request("up")
    def client_up(n: int, remote: Remote) -> int:
        return n if n == 0 else 1 + remote.request("down", [n - 1])

    with serving(server) as (address,), client.connect(address) as remote:
        assert remote.request("down", [10]) == 10


def test_five_slow_handlers_calling_back_do_not_deadlock() -> None:
    """The original EZ-IPC had five workers per connection: five slow handlers that each
    called back into the client deadlocked it. Here, twenty at once."""
    server = Server()
    client = Client()
    inside = threading.Barrier(20, timeout=10)

    @server.hook_request("slow")
    def slow(i: int, remote: Remote) -> int:
        inside.wait()  # all twenty are running at the same time
        return int(remote.request("client/double", [i]))

    client.hook_request("client/double", lambda i: 2 * i)
    with serving(server) as (address,), client.connect(address) as remote:
        futures = [remote.submit("slow", [i]) for i in range(20)]
        assert [f.result(timeout=10) for f in futures] == [2 * i for i in range(20)]


def test_a_ping_is_answered_while_handlers_are_busy() -> None:
    server = Server()
    release = threading.Event()
    server.hook_request("block", lambda: release.wait(10))
    server.hook_request("ping", lambda: "pong")
    with serving(server) as (address,), connect(address) as remote:
        blocked = [remote.submit("block") for _ in range(8)]
        assert remote.request("ping", timeout=5) == "pong"
        release.set()
        assert all(f.result(timeout=5) is True for f in blocked)


def test_a_request_read_with_a_blocked_one_still_runs() -> None:
    """Two requests in one read, run by one runner in turn: the first handler blocks,
    so another runner joins (once the second has waited RUNNER_GRACE) and answers it."""
    import json
    import socket

    server = Server()
    release = threading.Event()
    server.hook_request("block", lambda: release.wait(10))
    server.hook_request("ping", lambda: "pong")
    with serving(server) as (address,):
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as sock, sock.makefile("rb") as lines:
            sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"block"}\n{"jsonrpc":"2.0","id":2,"method":"ping"}\n')
            assert json.loads(lines.readline()) == {"jsonrpc": "2.0", "id": 2, "result": "pong"}
            assert not release.is_set()
            release.set()
            assert json.loads(lines.readline()) == {"jsonrpc": "2.0", "id": 1, "result": True}


@pytest.mark.parametrize("after", [0, 1, 5])
def test_answers_held_back_for_the_next_jobs_never_wait_behind_a_blocked_handler(after: int) -> None:
    """Answers to requests read together are written a few at a time, not one by one
    (while more jobs wait to run). None of them waits on a handler that blocks: 20
    answers come while the 21st handler is still blocked, whether it is the last job
    read (``after`` 0) or more wait behind it."""
    server = Server()
    release = threading.Event()
    server.hook_request("block", lambda: release.wait(10))
    server.hook_request("ping", lambda n: n)
    with serving(server) as (address,), raw_connect(address) as peer:
        burst = [{"jsonrpc": "2.0", "id": n, "method": "ping", "params": [n]} for n in range(20 - after)]
        burst.append({"jsonrpc": "2.0", "id": "b", "method": "block"})
        burst += [{"jsonrpc": "2.0", "id": n, "method": "ping", "params": [n]} for n in range(20 - after, 20)]
        peer.send_raw(b"".join(peer.frame(message) for message in burst))
        started = time.monotonic()
        got = sorted(peer.receive(timeout=3)["result"] for _ in range(20))
        assert got == list(range(20))
        assert time.monotonic() - started < 3
        assert not release.is_set()
        release.set()
        assert peer.receive() == {"jsonrpc": "2.0", "id": "b", "result": True}


@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt])
def test_the_requests_read_with_one_whose_handler_raised_systemexit_still_run(raised: type) -> None:
    """A handler raises SystemExit (or KeyboardInterrupt) in a worker: its request is
    answered -32603 and its runner leaves (the exception goes on, to the pool). The two
    requests read with it wait for no runner then: another one takes them."""
    import json
    import socket

    def stop() -> None:
        raise raised

    server = Server()
    server.hook_request("stop", stop)
    server.hook_request("ping", lambda: "pong")
    with serving(server) as (address,):
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as sock, sock.makefile("rb") as lines:
            sock.sendall(
                b'{"jsonrpc":"2.0","id":1,"method":"stop"}\n{"jsonrpc":"2.0","id":2,"method":"ping"}\n'
                b'{"jsonrpc":"2.0","id":3,"method":"ping"}\n'
            )
            answers = {a["id"]: a for a in (json.loads(lines.readline()) for _ in range(3))}
            assert answers[1]["error"]["code"] == -32603
            assert answers[2]["result"] == answers[3]["result"] == "pong"
            sock.sendall(b'{"jsonrpc":"2.0","id":4,"method":"ping"}\n')
            assert json.loads(lines.readline()) == {"jsonrpc": "2.0", "id": 4, "result": "pong"}


def threads_on_one_remote(work: Any, threads: int, calls: int) -> None:
    """``work(remote, k)`` in ``threads`` threads sharing one Remote to an ``echo``
    server; each makes ``calls`` calls and returns the answers that were wrong. None may
    be, nor raise; every answer is read."""
    server = Server()
    server.hook_request("echo", lambda value: value)
    errors: list[Any] = []
    with serving(server) as (address,), connect(address) as remote:

        def run(k: int) -> None:
            try:
                errors.extend(work(remote, k))
            except Exception as exc:  # reported below
                errors.append(exc)

        started = time.monotonic()
        running = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
        for t in running:
            t.start()
        for t in running:
            t.join(25)
        assert not any(t.is_alive() for t in running)
        assert time.monotonic() - started < 20
        assert not errors
        assert remote.stats.requests_pending == 0
        assert remote.stats.messages_in == threads * calls


def test_many_threads_share_one_remote_and_each_gets_its_own_answer() -> None:
    def work(remote: Remote, k: int) -> list[str]:
        values = [f"{k}:{i}" for i in range(200)]
        return [value for value in values if remote.request("echo", [value], timeout=10) != value]

    threads_on_one_remote(work, 16, 200)


def test_many_threads_pipelining_on_one_remote_each_get_their_answers() -> None:
    """Eight threads each keep 32 calls in flight on one Remote, mixing the ways to take
    an answer: requests held back by one thread go out with another's, or when any of
    them waits, and every answer reaches its own future."""
    import concurrent.futures

    def work(remote: Remote, k: int) -> list[str]:
        wrong: list[str] = []
        window: list[tuple[str, Future[Any]]] = []
        for i in range(300):
            value = f"{k}:{i}"
            window.append((value, remote.submit("echo", [value], timeout=10)))
            if len(window) == 32 or i == 299:
                if i % 3 == 0:  # (the others: result(), one after another)
                    concurrent.futures.wait([f for _, f in window], timeout=10)
                wrong += [expected for expected, future in window if future.result(timeout=10) != expected]
                window.clear()
        return wrong

    threads_on_one_remote(work, 8, 300)


def test_submit_returns_futures_and_runs_callbacks_in_workers() -> None:
    server = Server()
    server.hook_request("add", lambda a, b: a + b)
    server.hook_request("fail", lambda: (_ for _ in ()).throw(RemoteError(7, "seven", {"x": 1})))
    done: list[tuple[str, Any]] = []
    all_done = threading.Event()

    def callback(future: Future[Any]) -> None:
        # A callback may call the peer: it runs in a worker, never on the reader thread.
        done.append((threading.current_thread().name, future.exception() or future.result()))
        if len(done) == 2:
            all_done.set()

    with serving(server) as (address,), connect(address) as remote:
        ok = remote.submit("add", [1, 2], callback=callback)
        bad = remote.submit("fail", callback=callback)
        assert ok.result(timeout=5) == 3
        with pytest.raises(RemoteError) as info:
            bad.result(timeout=5)
        assert (info.value.code, info.value.message, info.value.data) == (7, "seven", {"x": 1})
        assert all_done.wait(5)
    names = sorted(str(d[1]) for d in done)
    assert names == ["3", "[7] seven (data: {'x': 1})"]
    assert all("worker" in name for name, _ in done)


def test_request_on_the_reader_thread_is_refused_not_deadlocked() -> None:
    server = Server()
    release = threading.Event()
    server.hook_request("add", lambda a, b: a + b)
    server.hook_request("later", lambda: release.wait(5))
    outcome: list[Any] = []
    finished = threading.Event()
    with serving(server) as (address,), connect(address) as remote:

        def on_done(future: Future[Any]) -> None:  # add_done_callback: runs on the reader
            try:
                outcome.append(remote.request("add", [1, 1]))
            except RuntimeError as exc:
                outcome.append(exc)
            finished.set()

        future = remote.submit("later")
        future.add_done_callback(on_done)  # (not done yet: it will run where it finishes)
        release.set()
        assert finished.wait(5)
    assert isinstance(outcome[0], RuntimeError)


def test_notifications_run_in_order_and_requests_after_earlier_notifications() -> None:
    server = Server(max_concurrency=8)
    log: list[Any] = []

    @server.hook_notif("note")
    def note(i: int) -> None:
        time.sleep(0.001 * (i % 3))
        log.append(("note", i))

    @server.hook_request("check")
    def check(i: int) -> Any:
        return [entry for entry in log if entry[0] == "note"][-1][1] if log else None

    with serving(server) as (address,), connect(address) as remote:
        for i in range(30):
            remote.notify("note", [i])
        # The request starts only after every notification before it has started; the
        # last one may still be running, so the answer is 28 or 29.
        assert remote.request("check", [0]) in (28, 29)
        remote.request("check", [0])
    assert [i for kind, i in log if kind == "note"] == list(range(30))


def test_calls_on_a_closed_remote_raise_connection_closed() -> None:
    server = Server()
    server.hook_request("add", lambda a, b: a + b)
    with serving(server) as (address,):
        remote = connect(address)
        assert remote.request("add", [1, 2]) == 3
        remote.close()
        assert remote.closed
        for call in (
            lambda: remote.request("add", [1, 2]),
            lambda: remote.notify("x"),
            lambda: remote.submit("add", [1, 2]),
            lambda: remote.batch([("add", [1, 2])]),
        ):
            with pytest.raises(ConnectionClosed):
                call()
        remote.close()  # twice is fine


def test_async_handlers_run_to_completion_in_a_worker() -> None:
    import asyncio

    server = Server()

    @server.hook_request("later")
    async def later(x: int) -> int:
        await asyncio.sleep(0.01)
        return x * 3

    with serving(server) as (address,), connect(address) as remote:
        assert remote.request("later", [5]) == 15


def test_a_call_from_the_peer_read_by_a_caller_before_the_reading_thread_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server's call may arrive before the I/O thread has begun to serve the
    connection: it must still be served."""
    import ezipc_adapters._blocking as impl

    original = impl.Remote._begin

    def late_begin(self: Remote) -> None:
        time.sleep(0.3)
        original(self)

    monkeypatch.setattr(impl.Remote, "_begin", late_begin)
    server = Server()
    client = Client()
    client.hook_request("client/ping", lambda: "pong")

    @server.hook_connect
    def on_connect(remote: Remote) -> None:
        remote.data["greeting"] = remote.request("client/ping", timeout=5)

    server.hook_request("greeting", lambda remote: remote.data["greeting"])
    with serving(server) as (address,), client.connect(address) as remote:
        assert remote.request("greeting", timeout=5) == "pong"


def test_every_callback_runs_even_when_the_answer_is_instant() -> None:
    server = Server()
    server.hook_request("add", lambda a, b: a + b)
    count = 300
    seen: list[int] = []
    all_done = threading.Event()

    def callback(future: Future[Any]) -> None:
        seen.append(future.result())
        if len(seen) == count:
            all_done.set()

    with serving(server) as (address,), connect(address) as remote:
        futures = [remote.submit("add", [i, 0], callback=callback) for i in range(count)]
        assert [f.result(timeout=10) for f in futures] == list(range(count))
        assert all_done.wait(10)
    assert sorted(seen) == list(range(count))


def test_answers_arrive_when_nobody_reads_for_them() -> None:
    """After a submit the I/O thread leaves the socket to the caller's result() for a
    moment; a program that never calls result() (it waits with concurrent.futures.wait,
    or a callback) still gets every answer, and the server's calls back, from the I/O
    thread once that moment is over."""
    import concurrent.futures

    server = Server()
    server.hook_request("twice", lambda remote, x: remote.request("client/double", [x]))
    client = Client()
    client.hook_request("client/double", lambda x: 2 * x)
    with serving(server) as (address,), client.connect(address) as remote:
        for round in range(20):
            futures = [remote.submit("twice", [i]) for i in range(5)]
            done, pending = concurrent.futures.wait(futures, timeout=5)
            assert not pending, f"round {round}: answers not read"
            assert sorted(f.result() for f in done) == [0, 2, 4, 6, 8]
            time.sleep(0.002 * (round % 3))  # (sometimes past the caller's moment, sometimes not)
        got: list[int] = []
        finished = threading.Event()
        remote.submit("twice", [21], callback=lambda f: (got.append(f.result()), finished.set()))
        assert finished.wait(5) and got == [42]


@pytest.mark.parametrize("how", ["wait", "callback", "result"])
def test_submits_held_back_while_many_calls_await_answers_reach_the_peer_promptly(how: str) -> None:
    """While many calls await answers, a pipelining loop's submits are held back a few
    at a time, to go in one write. None waits for the caller: 40 requests reach the
    peer, in order, within moments, whether the caller then waits with
    concurrent.futures.wait, relies on callbacks, or takes the first result (whose
    answer the peer sends only once it has all 40)."""
    import concurrent.futures

    finished: list[Any] = []
    with raw_server() as (address, accept), connect(address) as remote:
        peer = accept()
        callback = finished.append if how == "callback" else None
        futures = [remote.submit("ping", [n], callback=callback) for n in range(40)]
        started = time.monotonic()
        got = [peer.receive(timeout=3) for _ in range(40)]
        assert time.monotonic() - started < 2, "held back requests waited"
        assert [message["params"] for message in got] == [[n] for n in range(40)]
        peer.send(*({"jsonrpc": "2.0", "id": message["id"], "result": n} for n, message in enumerate(got)))
        if how == "result":
            assert [f.result(timeout=5) for f in futures] == list(range(40))
        else:
            assert not concurrent.futures.wait(futures, timeout=5).not_done
            assert [f.result() for f in futures] == list(range(40))
        if how == "callback":
            wait_for(lambda: len(finished) == 40, 5)


def test_a_thread_taking_settled_answers_reads_what_comes_meanwhile() -> None:
    """A thread that takes answers already read (``result()`` of a settled future, as a
    pipelining loop does) keeps the I/O thread from reading, but looks for what has come
    itself: a thread that spins on one settled future does not keep a notification from
    the server unread."""
    server = Server()

    def poke(remote: Remote) -> str:
        threading.Timer(0.05, remote.notify, ["poked"]).start()
        return "soon"

    server.hook_request("poke", poke)
    client = Client()
    arrived: list[float] = []
    client.hook_notif("poked", lambda: arrived.append(time.monotonic()))
    with serving(server) as (address,), client.connect(address) as remote:
        future = remote.submit("poke")
        assert future.result(timeout=5) == "soon"  # (read by this thread: the loop stands aside)
        sent = time.monotonic()
        while not arrived and time.monotonic() < sent + 1.0:
            future.result()  # settled: nothing to wait for
            # (A pause, as real work between results would make: a thread that spins on
            # result() alone, with a syscall each ms, keeps the GIL from the server's
            # timer thread in this process, CPython's convoy effect.)
            time.sleep(0.0005)
        assert arrived, "the notification was not read while the caller spun"
        assert arrived[0] - sent < 0.05 + 0.2  # (sent after 50 ms; read within about 1 ms)


@pytest.mark.parametrize("wait", [None, 10.0])
def test_a_future_whose_call_timed_out_raises_at_once_on_the_main_thread(wait: float | None) -> None:
    """The main thread waits in slices (so that Ctrl-C is seen). From Python 3.11 on, the
    call's own TimeoutError is the class of a slice running out: result() took one for
    the other and spun, for ever without a timeout, for ``wait`` seconds with one."""
    assert threading.current_thread() is threading.main_thread()
    server = Server()
    release = threading.Event()
    server.hook_request("hang", lambda: release.wait(10))
    with serving(server) as (address,), connect(address) as remote:
        future = remote.submit("hang", timeout=0.2)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="timed out"):
            future.result(wait)
        with pytest.raises(TimeoutError, match="timed out"):
            future.result()
        assert isinstance(future.exception(), TimeoutError)
        assert time.monotonic() - started < 2
        release.set()
