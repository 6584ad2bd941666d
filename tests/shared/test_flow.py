"""Flow control that cannot deadlock, on every driver (docs/limits.md, "Flow control"):

* an answer to a call we wait for is always read, however many calls are queued: 300
  requests whose handler calls the client back all complete (the original EZ-IPC, and
  ezipc 0.1, hung past 2 x max_concurrency); and calls back at any depth, with every
  slot busy, all complete;
* a peer that pipelines 20,000 requests without reading, then reads, gets one answer for
  each (its result, or at once -32009 when the queue was full), nothing dropped;
* our own messages never wait behind queued work: a handler's notify leaves at once while
  200 requests wait;
* every call we make ends: a malformed answer settles it with InvalidResponse.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import anyio
import pytest

from ezipc_adapters import InvalidResponse

from .conftest import (
    call,
    connecting,
    hub_of,
    message,
    new_server,
    raw_connect,
    raw_server,
    serving,
    tell,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)


def test_300_requests_that_call_the_client_back_all_complete(server_kind: str, client_kind: str) -> None:
    server = new_server(server_kind)  # max_concurrency 64: the rest wait in the queue

    @server.method
    async def hello(remote: Any, i: int) -> str:
        name = await call(remote, "client/name", [i], timeout=30)
        return f"hello {name}"

    def setup(client: Any) -> None:
        client.hook_request("client/name", lambda i: f"#{i}")

    with serving(server_kind, server) as served, connecting(client_kind, served.address, setup=setup) as peer:
        futures = [peer.submit("hello", [i], timeout=60) for i in range(300)]
        assert [f.result(60) for f in futures] == [f"hello #{i}" for i in range(300)]
        remote = served.one_remote()
        stats = served.stats(remote)
        assert stats["requests_refused"] == 0 and stats["requests_pending"] == 0
        assert peer.stats()["messages_in"] >= 600  # the 300 answers, and the server's 300 calls


def test_calls_back_at_any_depth_all_complete_with_every_slot_busy(server_kind: str, client_kind: str) -> None:
    """40 calls at once, 2 handler slots a side: the server's handler calls the client,
    whose handler calls the server, and so on, 4 deep. Before, the calls back waited in
    the queue behind the first calls, whose handlers held every slot waiting for them:
    every call timed out. (The blocking adapter's pool of 32 threads was a second such
    wall: a handler waiting for its peer holds its thread.)"""
    server = new_server(server_kind, max_concurrency=2)

    @server.method
    async def down(remote: Any, n: int) -> int:
        return 0 if n == 0 else 1 + await call(remote, "up", [n - 1], timeout=30)

    def setup(client: Any) -> None:
        async def up(remote: Any, n: int) -> int:
            return 0 if n == 0 else 1 + await call(remote, "down", [n - 1], timeout=30)

        client.hook_request("up", up)

    with serving(server_kind, server) as served, \
            connecting(client_kind, served.address, setup=setup, max_concurrency=2) as peer:
        futures = [peer.submit("down", [4], timeout=60) for _ in range(40)]
        assert [f.result(60) for f in futures] == [4] * 40
        stats = served.stats(served.one_remote())
        assert stats["requests_refused"] == 0 and stats["requests_pending"] == 0
        assert stats["handlers_running"] == 0


def test_calls_back_over_another_connection_all_complete_with_every_slot_busy(
    server_kind: str, client_kind: str
) -> None:
    """A hub: the server's handler for A calls the client's other connection B, whose
    handler calls the server back over A. 40 calls at once, 2 handler slots a side.
    Before, A's handlers held every slot of A (and every thread of the blocking server's
    pool) waiting for B, so the calls back over A waited for good: every call timed out
    (above 64 calls at the default limits). A handler waiting for an answer from another
    connection now holds no slot of its own, as one waiting for its own peer does not."""
    server = new_server(server_kind, max_concurrency=2)
    hub = hub_of(server)

    @server.method
    async def relay(n: int) -> int:
        return 1 + await call(hub["B"], "back", [n], timeout=30)

    server.hook_request("leaf", lambda n: 2 * n)
    over_a: list[Any] = []

    def setup(client: Any) -> None:
        if client_kind == "blocking":

            def back(n: int) -> int:  # a plain function: it holds its thread while it waits
                return 1 + over_a[0].request("leaf", [n], timeout=30)  # type: ignore[no-any-return]
        else:

            async def back(n: int) -> int:  # (A runs on another event loop: its thread-safe face)
                return 1 + await anyio.to_thread.run_sync(lambda: over_a[0].request("leaf", [n], timeout=30))

        client.hook_request("back", back)

    with serving(server_kind, server) as served, \
            connecting(client_kind, served.address, max_concurrency=2) as a, \
            connecting(client_kind, served.address, setup=setup, max_concurrency=2) as b:
        over_a.append(a)
        assert b.request("register", timeout=10) is True
        futures = [a.submit("relay", [n], timeout=60) for n in range(40)]
        assert [f.result(60) for f in futures] == [2 * n + 2 for n in range(40)]
        for remote in served.remotes():
            stats = served.stats(remote)
            assert stats["requests_refused"] == 0 and stats["requests_pending"] == 0
            assert stats["handlers_running"] == 0


def test_a_notification_handler_may_call_its_peer_back(server_kind: str, client_kind: str) -> None:
    """A notification's handler calls the client, whose handler calls the server: that
    request came after the notification, and requests wait for the notifications before
    them to begin. A handler waiting for its peer has begun. (On the blocking server a
    plain function began only once it had returned: this hung until the timeout.)"""
    server = new_server(server_kind)
    got: list[Any] = []
    done = threading.Event()

    if server_kind == "blocking":  # a plain function, as most blocking handlers are

        def note(remote: Any) -> None:
            got.append(remote.request("client/ask", timeout=10))
            done.set()
    else:

        async def note(remote: Any) -> None:
            got.append(await call(remote, "client/ask", timeout=10))
            done.set()

    server.hook_notif("note", note)

    server.hook_request("answer", lambda: 42)

    def setup(client: Any) -> None:
        async def ask(remote: Any) -> Any:
            return await call(remote, "answer", timeout=10)

        client.hook_request("client/ask", ask)

    with serving(server_kind, server) as served, connecting(client_kind, served.address, setup=setup) as peer:
        peer.notify("note")
        assert done.wait(10)
        assert got == [42]


def test_a_peer_that_pipelines_20000_requests_without_reading_gets_an_answer_for_each(
    server_kind: str,
) -> None:
    n = 20_000
    server = new_server(server_kind, framing="ndjson")
    server.hook_request("echo", lambda i: i)
    with serving(server_kind, server) as served, raw_connect(served.address) as peer:
        data = b"".join(
            b'{"jsonrpc":"2.0","method":"echo","params":[%d],"id":%d}\n' % (i, i) for i in range(n)
        )
        sender = threading.Thread(target=peer.send_raw, args=(data,))  # (it blocks once buffers fill)
        sender.start()
        time.sleep(1.0)  # ...and only then does the peer read
        answers: dict[int, Any] = {}
        while len(answers) < n:
            answer = peer.receive(timeout=30)
            assert answer["id"] not in answers, answer  # one answer per id
            answers[answer["id"]] = answer
        sender.join(10)
        busy = [a for a in answers.values() if "error" in a]
        assert all(a["error"]["code"] == -32009 for a in busy)
        assert all(answers[i]["result"] == i for i in answers if "result" in answers[i])
        assert len(busy) < n  # most were served: the server read on while we did not
        remote = served.one_remote()
        assert served.stats(remote)["requests_refused"] == len(busy)


def test_answers_made_while_earlier_ones_wait_for_the_peer_to_read_all_go_out(server_kind: str) -> None:
    """Answers produced while earlier ones still wait for the peer to read them (in our
    stream's backlog: the kernel's buffers are full) are written once it reads, though
    nothing more comes from it. The blocking driver, having written out its backlog, left
    the answers queued meanwhile in the session: a client that pipelined large answers,
    then waited, never got the last ones (``bench/soak.py --unix`` found it: a flood of
    small errors fills a Unix socket's buffers)."""
    n, blob = 128, "x" * (64 << 10)  # 8 MiB of answers: more than the kernel buffers hold
    server = new_server(server_kind, write_buffer_size=64 << 20)  # (no pause: only the backlog)
    server.hook_request("echo", lambda s: s)
    data = b"".join(json.dumps(message("echo", [blob], id=i)).encode() + b"\n" for i in range(n))
    with serving(server_kind, server) as served, raw_connect(served.address) as peer:
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        sender = threading.Thread(target=peer.send_raw, args=(data,))  # (it blocks once buffers fill)
        sender.start()
        time.sleep(0.5)  # ...and only then does the peer read
        ids = set()
        while len(ids) < n:
            answer = peer.receive(timeout=10)
            assert answer.get("result") == blob, str(answer)[:200]
            ids.add(answer["id"])
        sender.join(10)
        assert ids == set(range(n))


def test_a_handlers_notify_leaves_at_once_while_200_requests_wait(server_kind: str) -> None:
    release = threading.Event()
    server = new_server(server_kind, framing="ndjson", max_concurrency=1)

    @server.method
    async def slow(remote: Any, i: int) -> int:
        if i == 0:
            await tell(remote, "progress", ["started"])  # while 200 wait behind this one
        while not release.is_set():
            await _sleep(0.005)
        return i

    with serving(server_kind, server) as served, raw_connect(served.address) as peer:
        peer.send(*(message("slow", [i], i) for i in range(201)))
        started = time.monotonic()
        assert peer.receive(timeout=5) == message("progress", ["started"], notification=True)
        assert time.monotonic() - started < 2.0
        remote = served.one_remote()
        wait_for(lambda: served.stats(remote)["calls_queued"] == 200)
        release.set()
        assert sorted(peer.receive(timeout=30)["id"] for _ in range(201)) == list(range(201))


async def _sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


@pytest.mark.parametrize("framing", ["ndjson", "content-length"])
@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ({"result": 1, "error": {"code": 1, "message": "m"}}, "both result and error"),
        ({"error": {"code": "x", "message": "m"}}, "malformed error object"),
        ({}, "neither result nor error"),
    ],
    ids=["both", "bad-code", "neither"],
)
def test_a_malformed_answer_ends_the_call(client_kind: str, framing: str, answer: dict[str, Any], why: str) -> None:
    with raw_server(framing) as (address, accept), connecting(client_kind, address, framing=framing) as peer:
        server = accept()
        future = peer.submit("m", timeout=None)  # no timeout: without the rule it would wait forever
        request = server.receive()
        server.send({"jsonrpc": "2.0", "id": request["id"], **answer})
        with pytest.raises(InvalidResponse) as info:
            future.result(10)
        assert why in info.value.message and info.value.code == -32600
        assert server.nothing_within(0.2)  # nothing is answered to an answer
        second = peer.submit("m2")  # the connection goes on
        request = server.receive()
        server.send({"jsonrpc": "2.0", "id": request["id"], "result": 2})
        assert second.result(10) == 2
        assert peer.stats()["requests_pending"] == 0
