"""The server's other features: broadcast (and the original EZ-IPC's names), the set of
remotes, logging, counters, and running from another thread."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import pytest

from ezipc_adapters.blocking import Client, ConnectionClosed, RemoteError, Server, connect

from .conftest import raw_connect, serving, wait_for

pytestmark = pytest.mark.timeout(30)


def test_broadcast_reaches_every_client() -> None:
    server = Server()
    server.hook_request("ping", lambda: "pong")
    received: list[tuple[int, Any]] = []
    got = threading.Semaphore(0)
    clients = []
    for k in range(3):
        client = Client()
        client.hook_notif("news", lambda text, k=k: (received.append((k, text)), got.release()))
        if k == 2:
            client.hook_request("name", lambda: (_ for _ in ()).throw(RemoteError(1, "no name")))
        else:
            client.hook_request("name", lambda k=k: f"client {k}")
        clients.append(client)
    with serving(server) as (address,):
        remotes = [c.connect(address) for c in clients]
        try:
            for r in remotes:
                assert r.request("ping") == "pong"
            wait_for(lambda: len(server.remotes) == 3)
            server.broadcast("news", ["hello"])
            server.bcast_notif("news", ["again"])
            for _ in range(6):
                assert got.acquire(timeout=5)
            assert sorted(received) == [(k, t) for k in range(3) for t in ("again", "hello")]
            results = server.broadcast_request("name", timeout=5)
            assert sorted(v for v in results.values() if isinstance(v, str)) == ["client 0", "client 1"]
            (error,) = [v for v in results.values() if not isinstance(v, str)]
            assert isinstance(error, RemoteError) and error.message == "no name"
            assert set(results) == set(server.remotes)
            assert len(server.bcast_request("name", timeout=5)) == 3
        finally:
            for r in remotes:
                r.close()


def test_remotes_and_counters() -> None:
    server = Server()
    server.hook_request("echo", lambda x: x)
    with serving(server) as (address,):
        assert server.remotes == frozenset()
        with connect(address) as remote:
            assert remote.request("echo", ["abc"]) == "abc"
            (served,) = server.remotes
            assert served.remote_address == remote.local_address
            assert served.local_address == remote.remote_address == address
            assert remote.peer_certificate is None and remote.peer_credentials is None
            remote.data["mine"] = 1
            assert served.data == {}
            stats = remote.stats.as_dict()
            assert stats["messages_out"] == 1 and stats["messages_in"] == 1
            assert stats["bytes_out"] > 0 and stats["bytes_in"] > 0
            wait_for(lambda: served.stats.messages_out == 1)  # counted just after the write
            assert served.stats.messages_in == 1
            assert remote.framing == "ndjson" and served.framing == "ndjson"
        wait_for(lambda: not server.remotes)


def test_logging(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(log_messages=True)
    server.hook_request("echo", lambda x: x)
    caplog.set_level(logging.DEBUG, logger="ezipc")
    with serving(server) as (address,):
        with connect(address) as remote:
            assert remote.request("echo", ["z" * 1000]) == "z" * 1000
        with raw_connect(address) as peer:
            peer.send_raw(b"{not json\n")
            peer.receive()
        wait_for(lambda: not server.remotes)
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "ezipc"]
    infos = [m for level, m in records if level == logging.INFO]
    assert sum(m.startswith("connection from") and "closed" not in m for m in infos) == 2
    assert sum(m.startswith("connection from") and "closed" in m for m in infos) == 2
    assert any(m.startswith("serving on") for m in infos) and "server stopped" in infos
    warnings = [m for level, m in records if level == logging.WARNING]
    assert len(warnings) == 1 and "invalid message" in warnings[0]
    debug = [m for level, m in records if level == logging.DEBUG and ("received from" in m or "sent to" in m)]
    assert len(debug) >= 2 and all(len(m) < 300 for m in debug)  # truncated


def test_serve_forever_in_a_thread_and_shutdown_from_another() -> None:
    server = Server()
    server.hook_request("ping", lambda: "pong")
    thread = threading.Thread(target=server.serve_forever, args=("tcp://127.0.0.1:0",))
    thread.start()
    try:
        assert server.ready.wait(5)
        with connect(server.addresses[0]) as remote:
            assert remote.request("ping") == "pong"
            server.shutdown()
            assert remote.wait_closed(5)
            with pytest.raises(ConnectionClosed):
                remote.request("ping")
    finally:
        server.shutdown()
        thread.join(10)
    assert not thread.is_alive()
    # A stopped server can serve again.
    with serving(server) as (address,), connect(address) as remote:
        assert remote.request("ping") == "pong"


def test_start_in_a_thread_serves_without_signals() -> None:
    server = Server()
    server.hook_request("ping", lambda: "pong")
    thread = threading.Thread(target=server.start, args=("tcp://127.0.0.1:0",))
    thread.start()
    try:
        assert server.ready.wait(5)
        with connect(server.addresses[0]) as remote:
            assert remote.request("ping") == "pong"
    finally:
        server.shutdown()
        thread.join(10)


def test_one_server_many_addresses(tmp_path: Any) -> None:
    server = Server()
    server.hook_request("ping", lambda: "pong")
    with serving(server, "tcp://127.0.0.1:0", f"unix:{tmp_path}/s.sock") as addresses:
        assert len(addresses) == 2
        for address in addresses:
            with connect(address) as remote:
                assert remote.request("ping") == "pong"


def test_bad_options_are_refused() -> None:
    with pytest.raises(TypeError, match="unknown option"):
        Server(max_wrokers=3)
    with pytest.raises(ValueError):
        Server(framing="xml")
    with pytest.raises(ValueError):
        connect("ftp://example.org")  # (http:// is an address now: docs/web.md)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_connections_leak_neither_descriptors_nor_threads() -> None:
    server = Server()
    server.hook_request("ping", lambda: "pong")
    server.hook_notif("note", lambda: None)
    client = Client()
    client.hook_request("client/ping", lambda: "pong")
    server.hook_request("call_back", lambda remote: remote.request("client/ping"))
    with serving(server) as (address,):
        with client.connect(address) as remote:  # warm up: pools, timer thread
            remote.request("call_back")
        wait_for(lambda: not server.remotes)
        fds, threads = len(os.listdir("/proc/self/fd")), threading.active_count()
        for _ in range(30):
            with client.connect(address) as remote:
                remote.notify("note")
                assert remote.request("call_back") == "pong"
                remote.submit("ping").result(timeout=5)
        wait_for(lambda: not server.remotes)
        wait_for(lambda: len(os.listdir("/proc/self/fd")) <= fds)
        wait_for(lambda: threading.active_count() <= threads + 2)  # (pool workers may linger)


def test_the_pool_makes_a_thread_only_when_its_tasks_outnumber_its_threads() -> None:
    """A task submitted while another lingers (a runner reading for its connection's
    next request) finds the thread that lingered once it is done: 200 rounds of that
    need two threads. (From Python 3.12, ThreadPoolExecutor's own count made 11 here.)"""
    import time

    from ezipc_adapters._blocking_runners import Pool

    pool = Pool(32, "test-pool", initializer=lambda: None)
    try:
        for _ in range(200):
            pool.submit(time.sleep, 0.002)
            time.sleep(0.001)
            pool.submit(lambda: None)
            time.sleep(0.004)
        assert len(pool._threads) <= 3
        assert wait_for(lambda: pool.tasks == 0) is None
    finally:
        pool.shutdown()


def test_the_pool_gives_every_task_a_thread_while_it_may_make_one() -> None:
    """After many tasks done one at a time, four tasks that wait for one another all
    start: the pool's own count makes a thread for each."""
    from ezipc_adapters._blocking_runners import Pool

    pool = Pool(32, "test-pool", initializer=lambda: None)
    try:
        for n in range(20):
            assert pool.submit(lambda n=n: n).result(timeout=5) == n
        together = threading.Barrier(5, timeout=5)
        futures = [pool.submit(together.wait) for _ in range(4)]
        together.wait()
        for future in futures:
            future.result(timeout=5)
        assert len(pool._threads) == 4
    finally:
        pool.shutdown()


def test_idle_connections_hold_no_thread_and_dropping_them_all_is_quick() -> None:
    """One I/O thread serves every connection: 400 idle peers add no thread, and when
    they all go at once the server is done with them, and answers a new client, within
    a second (closing N connections costs O(N): about 0.15 CPU-seconds for 1,024 here)."""
    import resource
    import socket
    import time

    n = 400
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * n + 200:
        if hard != resource.RLIM_INFINITY and hard < 2 * n + 200:
            pytest.skip(f"needs {2 * n + 200} file descriptors (the hard limit is {hard})")
        resource.setrlimit(resource.RLIMIT_NOFILE, (2 * n + 200, hard))
    server = Server(max_connections=n + 10)
    server.hook_request("ping", lambda: "pong")
    with serving(server) as (address,):
        with connect(address) as remote:  # warm up: the pool's first thread
            assert remote.request("ping") == "pong"
        wait_for(lambda: not server.remotes)
        threads = threading.active_count()
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        peers = [socket.create_connection((host, int(port)), timeout=5) for _ in range(n)]
        try:
            wait_for(lambda: len(server.remotes) == n)
            assert threading.active_count() <= threads + 1
        finally:
            t0 = time.monotonic()
            for peer in peers:
                peer.close()
        with connect(address) as remote:
            assert remote.request("ping") == "pong"
        wait_for(lambda: not server.remotes)
        assert time.monotonic() - t0 < 1.5


def test_a_burst_of_quick_calls_takes_few_threads() -> None:
    """Pipelined calls whose handlers take microseconds are run in turn by the
    connection's runner, not by a pool thread each: the pool does not grow to
    max_workers for them (about 180 KiB of memory a thread, and no faster)."""
    server = Server(max_workers=32)
    server.hook_request("add", lambda a, b: a + b)
    with serving(server) as (address,), connect(address) as remote:
        for _ in range(5):
            futures = [remote.submit("add", [i, 1]) for i in range(200)]
            assert [f.result(timeout=10) for f in futures] == [i + 1 for i in range(200)]
        workers = [t for t in threading.enumerate() if t.name.startswith("ezipc-worker")]
        assert 1 <= len(workers) <= 8, len(workers)
