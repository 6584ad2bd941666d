"""Soak test: N minutes of mixed load against an ezipc server in a child process.

    python bench/soak.py 2                    # two minutes
    python bench/soak.py 10 --clients 40 --server-backend trio
    python bench/soak.py 5 --server-backend blocking   # the blocking adapter's Server
    python bench/soak.py 5 --client-backend blocking   # ... and its clients
    python bench/soak.py 3 --tls                       # every connection over TLS
    python bench/soak.py 3 --unix                      # a Unix socket instead of TCP
    python bench/soak.py 3 --server-backend uvloop --codec fast

Not part of the test suite. The server (in a child process: the async adapter on asyncio
or trio, or the blocking adapter) gets, all at once: well-behaved clients (the async
adapter's, on asyncio or trio, or the blocking adapter's, some sharing a connection among
threads) making requests, notifications and batches in both framings and checking every
answer, with calls that time out or are cancelled on purpose and calls the server makes
back to them (every other one of which the client's handler calls the server back for),
that hang up at random moments (also in the middle of calls) or have the server hang up
on them with calls in flight; raw clients that drop at random points of
a message (mid-header, mid-body, requests in flight, by a TCP reset); hostile clients
sending malformed frames (bad JSON, bad UTF-8, bad ids and params, broken Content-Length
headers, oversize and endless messages, floods of tiny messages) and checking the error
codes; a slow sender; and a peer that asks for large answers and never reads them. With
``--tls``, all of it over TLS (a trustme test CA), and more raw clients that leave in the
middle of a handshake or speak plain JSON to the TLS port.

Every ~10 s, and at the end, it prints the requests served, the errors by kind, and the
server's resident memory (VmRSS from /proc/<pid>/status) and open connections. At the
end it stops the load, waits for the server to have no connection left, compares its
memory and task count with the start (after a warm-up), and shuts it down with SIGTERM.
(The blocking server has no tasks: it counts the threads still inside a handler, which
must be none once the clients have gone, as ``slow`` and ``hang`` take the ``cancelled``
token that a hang-up sets. Its pool keeps its idle threads: their number is shown.)
An answer that is wrong, or an error that should not happen, is counted under a
``BAD:`` kind; the exit status is 1 if there was any, or if the server did not recover.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import gc
import itertools
import json
import logging
import os
import random
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
from typing import Any

import anyio

from ezipc_adapters import Client, ConnectionClosed, ErrorCode, RemoteError, Server, blocking, connect
from ezipc_proto import _framing

REPORT_EVERY = 10.0
BACKEND = "asyncio"  # the server's (set by main)
TLS_CLIENT: ssl.SSLContext | None = None  # with --tls: every client's context (set by main)
MAX_MESSAGE = 1024 * 1024

# ---- the server (child process) ---------------------------------------------------------


class LogCounter(logging.Filter):
    """The server's log records, counted by level and message template, not printed."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        self.counts[f"{record.levelname} {record.msg}"] += 1
        return False


def make_server(backend: str, tls_dir: str | None = None, codec: str = "json") -> Server | blocking.Server:
    """The soak's server on ``backend`` ("asyncio", "uvloop", "trio" or "blocking"): the
    same methods on both adapters; ``slow`` and ``hang`` as each adapter lets them be
    interrupted (a cancel scope, or the blocking adapter's ``cancelled`` token). With
    ``tls_dir``, TLS with the certificate and key there."""
    options: dict[str, Any] = dict(
        max_message_size=MAX_MESSAGE, message_timeout=2.0, shutdown_timeout=1.0, codec=codec
    )
    if tls_dir is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(os.path.join(tls_dir, "server.pem"))
        options["ssl"] = context
    server = blocking.Server(**options) if backend == "blocking" else Server(**options)
    notes = [0]
    logs = LogCounter()
    logging.getLogger("ezipc").addFilter(logs)
    logging.getLogger("ezipc").setLevel(logging.INFO)
    server.hook_request("echo", lambda value=None: value)
    server.hook_request("sum", lambda *xs: sum(xs))
    server.hook_request("blob", lambda n: "x" * n)
    server.hook_notif("note", lambda i: notes.__setitem__(0, notes[0] + 1))

    if backend == "blocking":  # a thread in a handler is interrupted by its token

        def slow_blocking(delay: float, value: Any = None, *, cancelled: threading.Event) -> Any:
            cancelled.wait(delay)
            return value

        def hang_blocking(*, cancelled: threading.Event) -> None:
            cancelled.wait()

        def callback_blocking(n: int, remote: Any) -> list[Any]:
            return [remote.request(_CALL_BACK[i % 2], [i], timeout=10) for i in range(n)]

        def bye_blocking(remote: Any) -> None:
            remote.close("bye")

        server.hook_request("slow", slow_blocking)
        server.hook_request("hang", hang_blocking)
        server.hook_request("callback", callback_blocking)
        server.hook_request("bye", bye_blocking)
    else:

        async def slow(delay: float, value: Any = None) -> Any:
            await anyio.sleep(delay)
            return value

        async def hang() -> None:
            await anyio.sleep_forever()

        async def callback(n: int, remote: Any) -> list[Any]:
            return [await remote.request(_CALL_BACK[i % 2], [i], timeout=10) for i in range(n)]

        async def bye(remote: Any) -> None:
            remote.close("bye")

        server.hook_request("slow", slow)
        server.hook_request("hang", hang)
        server.hook_request("callback", callback)
        server.hook_request("bye", bye)

    @server.method
    def fail() -> None:
        raise ValueError("a handler failed")

    @server.method
    def nan() -> float:
        return float("nan")

    @server.hook_request("soak.stats")
    def stats(collect: bool = False) -> dict[str, Any]:
        if collect:  # collect garbage and hand freed memory back to the system first
            gc.collect()
            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except (OSError, AttributeError):
                pass
        return {
            "connections": len(server.remotes),
            "tasks": busy_handler_threads() if backend == "blocking" else len(anyio.get_running_tasks()),
            "threads": threading.active_count(),
            "notifications": notes[0],
            "blocks": sys.getallocatedblocks(),
            # the core's bounded memos of Content-Length headers (up to 4096 each)
            "memo_entries": sum(len(getattr(_framing, n, ())) for n in ("_LENGTHS", "_HEADERS")),
            "log": dict(logs.counts),
        }

    return server


def busy_handler_threads() -> int:
    """The blocking server's threads inside one of this file's handlers, but for the
    one asking (its main thread serves, in ``serve_blocking``)."""
    skip = {threading.get_ident(), threading.main_thread().ident}
    busy = 0
    for ident, top in sys._current_frames().items():
        frame: types.FrameType | None = None if ident in skip else top
        while frame is not None:
            if frame.f_code.co_filename == __file__:
                busy += 1
                break
            frame = frame.f_back
    return busy


async def serve_main(backend: str, tls_dir: str | None, codec: str, listen: str) -> None:
    server = make_server(backend, tls_dir, codec)
    assert isinstance(server, Server)
    async with anyio.create_task_group() as tg:
        (address,) = await tg.start(server.serve, listen)
        print(address, flush=True)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                server.shutdown()
                break


def serve_blocking(tls_dir: str | None, codec: str, listen: str) -> None:
    """The blocking server: ``start`` serves until SIGTERM, then shuts down gracefully."""
    server = make_server("blocking", tls_dir, codec)
    server.start(listen, ready=lambda addresses: print(addresses[0], flush=True))


# ---- the load (this process) ------------------------------------------------------------


class Tally:
    """Outcomes by kind; thread-safe (the blocking clients count from their threads)."""

    def __init__(self) -> None:
        self.kinds: collections.Counter[str] = collections.Counter()
        self.served = 0  # requests answered (results and error answers), as the clients saw
        self._lock = threading.Lock()

    def ok(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.kinds[kind] += n

    def bad(self, kind: str) -> None:
        with self._lock:
            self.kinds["BAD: " + kind] += 1

    def serve(self, n: int = 1) -> None:
        with self._lock:
            self.served += n

    @property
    def bad_count(self) -> int:
        with self._lock:
            return sum(n for k, n in self.kinds.items() if k.startswith("BAD: "))


def _frame(framing: str, body: bytes) -> bytes:
    if framing == "ndjson":
        return body + b"\n"
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def _req(method: str, params: Any, id: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": id}).encode()


def _echo_back(value: Any = None) -> Any:
    """The clients' own method, which the server's ``callback`` calls back."""
    return value


# What the server's ``callback`` calls: every other call, the client's handler calls the
# server back in turn (calls back two deep, with every slot possibly busy).
_CALL_BACK = ("client.echo", "client.deeper")


async def _deeper(value: Any, remote: Any) -> Any:
    return await remote.request("echo", [value], timeout=10)


def _deeper_blocking(value: Any, remote: Any) -> Any:
    return remote.request("echo", [value], timeout=10)


def _check_left(calls: list[Any], tally: Tally) -> None:
    """Calls left in flight on purpose end with ConnectionClosed (so they are not
    logged as unawaited either)."""
    for call in calls:
        if not call.done() or not isinstance(call.exception(), ConnectionClosed):
            tally.bad("a call left in flight did not end with ConnectionClosed")


def _check_bye(outcomes: list[Any], tally: Tally) -> None:
    """The server hung up (``bye``, the last call) with ``slow`` calls in flight: each
    of those ends with its own result (if it finished first) or ConnectionClosed."""
    if not isinstance(outcomes[-1], ConnectionClosed) or any(
        not isinstance(outcome, ConnectionClosed) and outcome != i for i, outcome in enumerate(outcomes[:-1])
    ):
        tally.bad(f"the server hung up, calls in flight ended {outcomes!r}")
    tally.ok("the server hung up with calls in flight")


async def good_client(address: str, seed: int, stop: anyio.Event, tally: Tally) -> None:
    """Requests, notifications and batches, each answer checked; calls that time out or
    are cancelled on purpose; the server calling back. Hangs up now and then (between
    calls, or by abandoning calls in flight), or has the server hang up with calls in
    flight, then connects again."""
    rng = random.Random(seed)
    while not stop.is_set():
        client = Client(framing=rng.choice(("ndjson", "content-length")))
        client.hook_request("client.echo", _echo_back)
        client.hook_request("client.deeper", _deeper)
        left: list[Any] = []
        try:
            async with client.connect(address, timeout=10, request_timeout=30, ssl=TLS_CLIENT) as remote:
                for _ in range(rng.randint(1, 200)):
                    if stop.is_set():
                        break
                    await one_call(remote, rng, tally)
                ending = rng.random()
                if ending < 0.3:  # leave with calls in flight
                    for _ in range(rng.randint(1, 5)):
                        left.append(remote.request("slow", [rng.uniform(0.01, 1.0), "late"]))
                    left.append(remote.request("hang"))
                    tally.ok("hung up with calls in flight")
                elif ending < 0.35:  # the server hangs up, with calls in flight
                    calls = [
                        remote.request("slow", [rng.uniform(0.01, 1.0), i]) for i in range(rng.randint(0, 3))
                    ]
                    calls.append(remote.request("bye"))
                    with anyio.fail_after(10):
                        outcomes = []
                        for call in calls:
                            try:
                                outcomes.append(await call)
                            except ConnectionClosed as exc:
                                outcomes.append(exc)
                    _check_bye(outcomes, tally)
                else:
                    tally.ok("hung up between calls")
            _check_left(left, tally)
        except (OSError, TimeoutError) as exc:
            tally.bad(f"connect or call failed: {type(exc).__name__}")
            await anyio.sleep(0.1)


async def one_call(remote: Any, rng: random.Random, tally: Tally) -> None:
    op = rng.random()
    value = [rng.random(), "\u00e9" * rng.randint(0, 20), {"n": rng.randint(-(2**40), 2**40)}]
    try:
        if op < 0.35:
            if await remote.request("echo", [value]) != value:
                tally.bad("wrong echo")
            tally.ok("request ok")
        elif op < 0.5:
            xs = [rng.randint(-1000, 1000) for _ in range(rng.randint(0, 20))]
            if await remote.request("sum", xs) != sum(xs):
                tally.bad("wrong sum")
            tally.ok("request ok")
        elif op < 0.58:
            if await remote.request("slow", [rng.uniform(0, 0.02), value]) != value:
                tally.bad("wrong slow echo")
            tally.ok("request ok")
        elif op < 0.7:
            await remote.notify("note", [rng.randint(0, 10**6)])
            tally.ok("notification sent")
            return
        elif op < 0.8:
            n = rng.randint(1, 20)
            results = await remote.batch(
                [("echo", [i]) for i in range(n)] + [("nosuch", None)], notify=[("note", [n])]
            )
            if results[:n] != list(range(n)) or not (
                isinstance(results[n], RemoteError) and results[n].code == ErrorCode.METHOD_NOT_FOUND
            ):
                tally.bad("wrong batch answer")
            tally.ok("batch ok")
            tally.serve(n)
        elif op < 0.86:
            n = rng.randint(0, 5)
            if await remote.request("callback", [n]) != list(range(n)):
                tally.bad("wrong callback answer")
            tally.ok("server called back")
        elif op < 0.89:
            try:
                await remote.request("slow", [0.5], timeout=rng.uniform(0.001, 0.05))
                tally.bad("slow call did not time out")
            except TimeoutError:
                tally.ok("timed out (expected)")
            return
        elif op < 0.92:
            with anyio.move_on_after(rng.uniform(0, 0.05)) as scope:
                await remote.request("slow", [0.5])
            if not scope.cancelled_caught:
                tally.bad("cancelled call finished")
            tally.ok("cancelled (expected)")
            return
        else:
            method = rng.choice(["fail", "nan", "nosuch"])
            try:
                await remote.request(method)
                tally.bad(f"{method} did not fail")
            except RemoteError as exc:
                want = ErrorCode.METHOD_NOT_FOUND if method == "nosuch" else ErrorCode.INTERNAL_ERROR
                if exc.code != want or exc.data is not None:
                    tally.bad(f"{method}: error {exc.code}")
                tally.ok(f"error answer {exc.code} (expected)")
        tally.serve()
    except ConnectionClosed:
        tally.bad("ConnectionClosed while the client was connected")
    except TimeoutError:
        tally.bad("request timed out")


# ---- the blocking adapter's client (--client-backend blocking) ---------------------------


def blocking_good_client(address: str, seed: int, stop: threading.Event, tally: Tally) -> None:
    """``good_client`` on the blocking adapter, in a thread of its own; on some
    connections, 1-3 more threads make calls on the same Remote meanwhile."""
    rng = random.Random(seed)
    while not stop.is_set():
        client = blocking.Client(rng.choice(("ndjson", "content-length")))
        client.hook_request("client.echo", _echo_back)
        client.hook_request("client.deeper", _deeper_blocking)
        left: list[Any] = []
        try:
            with client.connect(address, timeout=10, request_timeout=30, ssl=TLS_CLIENT) as remote:
                helpers = [
                    threading.Thread(
                        target=blocking_calls,
                        args=(remote, random.Random(rng.random()), rng.randint(1, 100), stop, tally),
                        daemon=True,
                    )
                    for _ in range(rng.choice((0, 0, 1, 3)))
                ]
                for helper in helpers:
                    helper.start()
                blocking_calls(remote, rng, rng.randint(1, 200), stop, tally)
                for helper in helpers:
                    helper.join(60)
                    if helper.is_alive():
                        tally.bad("a client thread sharing the Remote did not finish in 60 s")
                ending = rng.random()
                if ending < 0.3:
                    for _ in range(rng.randint(1, 5)):
                        left.append(remote.submit("slow", [rng.uniform(0.01, 1.0), "late"]))
                    left.append(remote.submit("hang"))
                    tally.ok("hung up with calls in flight")
                elif ending < 0.35:
                    futures = [
                        remote.submit("slow", [rng.uniform(0.01, 1.0), i]) for i in range(rng.randint(0, 3))
                    ]
                    futures.append(remote.submit("bye"))
                    outcomes = []
                    for future in futures:
                        try:
                            outcomes.append(future.result(10))
                        except ConnectionClosed as exc:
                            outcomes.append(exc)
                    _check_bye(outcomes, tally)
                else:
                    tally.ok("hung up between calls")
            _check_left(left, tally)
        except (OSError, TimeoutError) as exc:
            tally.bad(f"connect or call failed: {type(exc).__name__}")
            time.sleep(0.1)


def blocking_calls(remote: Any, rng: random.Random, n: int, stop: threading.Event, tally: Tally) -> None:
    for _ in range(n):
        if stop.is_set():
            return
        try:
            blocking_call(remote, rng, tally)
        except ConnectionClosed:
            tally.bad("ConnectionClosed while the client was connected")
        except TimeoutError:
            tally.bad("request timed out")
        except Exception as exc:
            tally.bad(f"blocking call raised {type(exc).__name__}: {exc}")


def blocking_call(remote: Any, rng: random.Random, tally: Tally) -> None:
    op = rng.random()
    value = [rng.random(), "\u00e9" * rng.randint(0, 20), {"n": rng.randint(-(2**40), 2**40)}]
    if op < 0.3:
        if remote.request("echo", [value]) != value:
            tally.bad("wrong echo")
        tally.ok("request ok")
    elif op < 0.4:
        k = rng.randint(1, 64)  # pipelined through futures
        futures = [remote.submit("sum", [i, 1]) for i in range(k)]
        if [future.result(30) for future in futures] != [i + 1 for i in range(k)]:
            tally.bad("wrong pipelined sums")
        tally.ok("pipelined submits ok")
        tally.serve(k - 1)
    elif op < 0.45:
        done = threading.Event()
        outcome: list[Any] = []

        def finished(future: Any) -> None:
            outcome.append(future.result())
            done.set()

        remote.submit("echo", [value], callback=finished)
        if not done.wait(30) or outcome != [value]:
            tally.bad("submit's callback did not run, or saw a wrong result")
        tally.ok("submit with a callback ok")
    elif op < 0.52:
        if remote.request("slow", [rng.uniform(0, 0.02), value]) != value:
            tally.bad("wrong slow echo")
        tally.ok("request ok")
    elif op < 0.64:
        remote.notify("note", [rng.randint(0, 10**6)])
        tally.ok("notification sent")
        return
    elif op < 0.74:
        n = rng.randint(1, 20)
        results = remote.batch([("echo", [i]) for i in range(n)] + [("nosuch", None)], notify=[("note", [n])])
        if results[:n] != list(range(n)) or not (
            isinstance(results[n], RemoteError) and results[n].code == ErrorCode.METHOD_NOT_FOUND
        ):
            tally.bad("wrong batch answer")
        tally.ok("batch ok")
        tally.serve(n)
    elif op < 0.82:
        n = rng.randint(0, 5)
        if remote.request("callback", [n]) != list(range(n)):
            tally.bad("wrong callback answer")
        tally.ok("server called back")
    elif op < 0.86:
        try:
            remote.request("slow", [0.5], timeout=rng.uniform(0.001, 0.05))
            tally.bad("slow call did not time out")
        except TimeoutError:
            tally.ok("timed out (expected)")
        return
    elif op < 0.9:
        future = remote.submit("slow", [0.5])
        time.sleep(rng.uniform(0, 0.02))
        if not future.cancel() or not future.cancelled():
            tally.bad("a slow call's future could not be cancelled")
        tally.ok("cancelled (expected)")
        return
    else:
        method = rng.choice(["fail", "nan", "nosuch"])
        try:
            remote.request(method)
            tally.bad(f"{method} did not fail")
        except RemoteError as exc:
            want = ErrorCode.METHOD_NOT_FOUND if method == "nosuch" else ErrorCode.INTERNAL_ERROR
            if exc.code != want or exc.data is not None:
                tally.bad(f"{method}: error {exc.code}")
            tally.ok(f"error answer {exc.code} (expected)")
    tally.serve()


DROP_KINDS = ("before_send", "mid_header", "mid_body", "in_flight", "reset", "after_batch", "partial_read")
TLS_DROP_KINDS = ("mid_handshake", "not_tls")  # with --tls, on a plain TCP connection


async def open_raw(address: str) -> anyio.abc.ByteStream:
    """A raw connection to the server: TCP (TLS over it with --tls) or a Unix socket."""
    if address.startswith("unix:"):
        return await anyio.connect_unix(address.removeprefix("unix:"))
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    if TLS_CLIENT is None:
        return await anyio.connect_tcp(host, int(port))
    return await anyio.connect_tcp(host, int(port), ssl_context=TLS_CLIENT, tls_standard_compatible=False)


async def tls_dropper(address: str, kind: str, rng: random.Random) -> None:
    """A TLS server's plain TCP peer: half a handshake then gone, or JSON instead of TLS
    (the server closes it)."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    async with await anyio.connect_tcp(host, int(port)) as stream:
        if kind == "mid_handshake":
            hello = ssl.MemoryBIO()
            tls = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), hello, server_hostname=host)
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            data = hello.read()
            await stream.send(data[: rng.randrange(1, len(data))])
        else:
            await stream.send(_frame("ndjson", _req("echo", ["plain"], 1)))
            with anyio.fail_after(10):
                try:
                    while await stream.receive():
                        pass
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    pass
        await anyio.sleep(rng.uniform(0, 0.05))


async def dropper(address: str, seed: int, stop: anyio.Event, tally: Tally) -> None:
    """Connects and drops at random points; checks nothing but that the server goes on."""
    rng = random.Random(seed)
    ids = itertools.count(1)
    while not stop.is_set():
        kind = rng.choice(DROP_KINDS + (TLS_DROP_KINDS if TLS_CLIENT is not None else ()))
        framing = rng.choice(("ndjson", "content-length"))
        if kind in TLS_DROP_KINDS:
            try:
                await tls_dropper(address, kind, rng)
                tally.ok(f"dropped: {kind}")
            except (OSError, anyio.BrokenResourceError, TimeoutError) as exc:
                tally.bad(f"dropper {kind}: {type(exc).__name__}")
            continue
        try:
            stream = await open_raw(address)
        except OSError as exc:
            tally.bad(f"dropper could not connect: {exc!r}")
            await anyio.sleep(0.1)
            continue
        try:
            body = _req("echo", ["x" * rng.randint(0, 5000)], next(ids))
            data = _frame(framing, body)
            if kind == "mid_header":
                await stream.send(_frame("content-length", body)[: rng.randint(1, 20)])
            elif kind == "mid_body":
                await stream.send(data[: rng.randrange(1, len(data) - 1)])
            elif kind in ("in_flight", "reset"):
                calls = [_req("slow", [rng.uniform(0.01, 0.5)], next(ids)), _req("hang", [], next(ids)), body]
                await stream.send(b"".join(_frame(framing, c) for c in calls))
                if kind == "reset":
                    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif kind == "after_batch":
                batch = b"[" + _req("slow", [0.2], 1) + b"," + _req("echo", [2], 2) + b"]"
                await stream.send(_frame(framing, batch))
            elif kind == "partial_read":
                await stream.send(_frame(framing, _req("blob", [rng.randint(100_000, 500_000)], 1)))
                with anyio.fail_after(10):
                    await stream.receive(rng.randint(1, 1000))
            await anyio.sleep(rng.uniform(0, 0.05))
            tally.ok(f"dropped: {kind}")
        except (OSError, anyio.BrokenResourceError, anyio.EndOfStream, TimeoutError) as exc:
            tally.bad(f"dropper {kind}: {type(exc).__name__}")
        finally:
            await anyio.aclose_forcefully(stream)


#: (frame, the error codes it must be answered with (in any order), whether it closes)
def hostile_inputs(framing: str) -> list[tuple[bytes, list[ErrorCode], bool]]:
    def f(body: bytes) -> bytes:
        return _frame(framing, body)

    inputs = [
        (f(b'{"jsonrpc":"2.0","method":"echo","params":["\xff"],"id":1}'), [ErrorCode.PARSE_ERROR], False),
        (f(b'{"jsonrpc":"2.0","method":"echo",,}'), [ErrorCode.PARSE_ERROR], False),
        (f(b"[" * 100_000), [ErrorCode.PARSE_ERROR], False),
        (f(b'{"jsonrpc":"1.0","method":"echo","id":1}'), [ErrorCode.INVALID_REQUEST], False),
        (f(b'{"jsonrpc":"2.0","method":"echo","id":{}}'), [ErrorCode.INVALID_REQUEST], False),
        (f(b'{"jsonrpc":"2.0","method":"echo","params":"x","id":1}'), [ErrorCode.INVALID_REQUEST], False),
        (f(b'{"jsonrpc":"2.0","method":"echo","params":[1,2],"id":1}'), [ErrorCode.INVALID_PARAMS], False),
        (f(b"[]"), [ErrorCode.INVALID_REQUEST], False),
        (f(b"[1,2,3]"), [ErrorCode.INVALID_REQUEST] * 3, False),
        (f(b"\xef\xbb\xbf\xef\xbb\xbf{}"), [ErrorCode.PARSE_ERROR], False),
        (f(b'{"jsonrpc":"2.0","method":"echo","params":["' + b"x" * MAX_MESSAGE + b'"],"id":1}'),
         [ErrorCode.MESSAGE_TOO_LARGE], False),
        (f(b"[]") * 2000, [ErrorCode.INVALID_REQUEST] * 2000, False),
    ]
    if framing == "content-length":
        inputs += [
            (b"Content-Length: abc\r\n\r\n{}", [ErrorCode.PARSE_ERROR], True),
            (b"Content-Type: x\r\n\r\n{}", [ErrorCode.PARSE_ERROR], True),
            (b"X-Flood: 1\r\n" * 1000 + b"\r\n", [ErrorCode.PARSE_ERROR], True),
        ]
    return inputs


async def hostile(address: str, seed: int, stop: anyio.Event, tally: Tally) -> None:
    """Malformed frames, each on a fresh connection; the error codes are checked."""
    rng = random.Random(seed)
    while not stop.is_set():
        framing = rng.choice(("ndjson", "content-length"))
        data, codes, closes = rng.choice(hostile_inputs(framing))
        try:
            async with await open_raw(address) as stream:
                await stream.send(data)
                if not closes:
                    await stream.send(_frame(framing, _req("echo", ["probe"], "probe")))
                got = await _read_answers(stream, framing, until="probe" if not closes else None)
            answers, probed = got
            flat = [a for answer in answers for a in (answer if isinstance(answer, list) else [answer])]
            seen = sorted(a["error"]["code"] for a in flat if "error" in a)
            if seen != sorted(codes) or probed == closes:
                tally.bad(f"hostile input answered {seen[:5]} (probe answered: {probed})")
            else:
                tally.ok("hostile input answered right" + (" and closed" if closes else ""))
        except (OSError, anyio.BrokenResourceError, TimeoutError) as exc:
            tally.bad(f"hostile: {type(exc).__name__} ({framing}, {len(data)} bytes: {data[:30]!r})")
        await anyio.sleep(rng.uniform(0, 0.05))


async def _read_answers(stream: Any, framing: str, until: Any) -> tuple[list[Any], bool]:
    buffer = b""
    answers: list[Any] = []
    with anyio.fail_after(30):
        while True:
            while True:
                if framing == "ndjson":
                    line, sep, rest = buffer.partition(b"\n")
                    if not sep:
                        break
                    buffer, body = rest, line
                else:
                    head, sep, rest = buffer.partition(b"\r\n\r\n")
                    length = int(head.split(b":")[1]) if sep else -1
                    if not sep or len(rest) < length:
                        break
                    buffer, body = rest[length:], rest[:length]
                answer = json.loads(body)
                if isinstance(answer, dict) and answer.get("id") == until is not None:
                    return answers, True
                answers.append(answer)
            try:
                buffer += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return answers, False


async def slow_sender(address: str, stop: anyio.Event, tally: Tally) -> None:
    """One byte every 100 ms: cut off after the server's message_timeout (2 s)."""
    while not stop.is_set():
        started = time.monotonic()
        async with await open_raw(address) as stream:
            try:
                for byte in itertools.cycle(_req("echo", ["slow"], 1) + b"\n"):
                    await stream.send(bytes([byte]))
                    await anyio.sleep(0.1)
                    if time.monotonic() - started > 10:
                        tally.bad("slow sender not cut off within 10 s")
                        break
            except (anyio.BrokenResourceError, OSError):
                tally.ok("slow sender cut off")


async def never_reader(address: str, stop: anyio.Event, tally: Tally) -> None:
    """Asks for 100 kB answers for 5 s without reading any, then goes."""
    ids = itertools.count()
    while not stop.is_set():
        async with await open_raw(address) as stream:
            with anyio.move_on_after(5):
                while not stop.is_set():
                    await stream.send(b"".join(_req("blob", [100_000], next(ids)) + b"\n" for _ in range(50)))
        tally.ok("never-reader went (held back)")
        await anyio.sleep(1)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def server_stats(address: str, collect: bool = False) -> dict[str, Any]:
    async with connect(address, timeout=10, request_timeout=10, ssl=TLS_CLIENT) as remote:
        stats: dict[str, Any] = await remote.request("soak.stats", {"collect": collect})
    stats["connections"] -= 1  # this one
    stats["backend"] = BACKEND
    return stats


def _work(stats: dict[str, Any]) -> str:
    """A server's running work: its tasks, or (blocking) its threads in a handler."""
    if stats.get("backend") == "blocking":
        return f"{stats['tasks']} threads in a handler ({stats['threads']} threads)"
    return f"{stats['tasks']} tasks"


def report(label: str, started: float, tally: Tally, pid: int, stats: dict[str, int] | None) -> None:
    elapsed = time.monotonic() - started
    print(f"[{elapsed:6.1f}s] {label}: {tally.served} requests served "
          f"({tally.served / max(elapsed, 1e-9):.0f}/s), server RSS {rss_kib(pid) / 1024:.1f} MiB"
          + (f", {stats['connections']} connections, {_work(stats)}" if stats else ""))
    for kind, n in sorted(tally.kinds.items()):
        print(f"    {n:9d}  {kind}")
    sys.stdout.flush()


async def load(
    address: str, pid: int, minutes: float, clients: int, seed: int, backend: str, client_backend: str
) -> int:
    tally = Tally()
    started = time.monotonic()
    # Warm-up: a few seconds of light load, then the baseline.
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(good_client, address, seed + i, stop, tally)
        await anyio.sleep(3)
        stop.set()
    await anyio.sleep(1.5)
    base = await server_stats(address, collect=True)
    rss_start = rss_kib(pid)
    print(f"start (after a warm-up): server RSS {rss_start / 1024:.1f} MiB, "
          f"{base['connections']} connections, {_work(base)}, "
          f"{base['blocks']} allocated blocks, {base['memo_entries']} header memo entries", flush=True)
    tally = Tally()
    started = time.monotonic()
    threads_start = threading.active_count()
    own_rss_start = rss_kib(os.getpid())
    stop = anyio.Event()
    stop_threads = threading.Event()
    threads = [
        threading.Thread(
            target=blocking_good_client, args=(address, seed * 1000 + i, stop_threads, tally), daemon=True
        )
        for i in range(clients if client_backend == "blocking" else 0)
    ]
    for thread in threads:
        thread.start()
    async with anyio.create_task_group() as tg:
        if not threads:
            for i in range(clients):
                tg.start_soon(good_client, address, seed * 1000 + i, stop, tally)
        for i in range(max(1, clients // 2)):
            tg.start_soon(dropper, address, seed * 2000 + i, stop, tally)
        for i in range(2):
            tg.start_soon(hostile, address, seed * 3000 + i, stop, tally)
        tg.start_soon(slow_sender, address, stop, tally)
        tg.start_soon(never_reader, address, stop, tally)
        deadline = started + minutes * 60
        while time.monotonic() < deadline:
            await anyio.sleep(min(REPORT_EVERY, max(0.0, deadline - time.monotonic())))
            if time.monotonic() < deadline - 1:
                report("running", started, tally, pid, await server_stats(address))
        stop.set()
        stop_threads.set()
    for thread in threads:
        await anyio.to_thread.run_sync(thread.join, 60)
        if thread.is_alive():
            tally.bad("a blocking client thread did not finish within 60 s of the stop")
    # Recovery: every connection gone, tasks and memory back.
    settle_started = time.monotonic()
    while True:
        stats = await server_stats(address)
        if stats["connections"] == 0 or time.monotonic() - settle_started > 20:
            break
        await anyio.sleep(0.2)
    settled = time.monotonic() - settle_started
    report("end", started, tally, pid, stats)
    rss_end = rss_kib(pid)
    # A connection that has just ended is still held for up to 2 s by the blocking
    # driver's timers (its linger for the peer's EOF, its flush deadline): counted now,
    # the last seconds' connections (~250 in a TLS soak) looked like a leak of Remotes.
    await anyio.sleep(3.0)
    collected = await server_stats(address, collect=True)
    rss_trimmed = rss_kib(pid)
    print("server log records (level, template):")
    for kind, n in sorted(collected["log"].items(), key=lambda item: -item[1]):
        print(f"    {n:9d}  {kind}")
    print(f"server RSS: start {rss_start / 1024:.1f} MiB, end {rss_end / 1024:.1f} MiB "
          f"({(rss_end - rss_start) / 1024:+.1f} MiB; {rss_trimmed / 1024:.1f} MiB after gc and malloc_trim)")
    print(f"server Python blocks allocated: start {base['blocks']}, end {collected['blocks']} "
          f"({collected['blocks'] - base['blocks']:+d}; header memo entries {base['memo_entries']} -> "
          f"{collected['memo_entries']}); {'threads in a handler' if backend == 'blocking' else 'tasks'}: "
          f"start {base['tasks']}, end {stats['tasks']}; "
          f"connections left: {stats['connections']} (settled in {settled:.1f}s); "
          f"notifications handled: {stats['notifications']}")
    gc.collect()
    print(f"this process (the clients): RSS {own_rss_start / 1024:.1f} MiB before the load, "
          f"{rss_kib(os.getpid()) / 1024:.1f} MiB after it")
    if threads:
        # The adapter keeps a shared I/O thread and a pool of idle workers (up to max_workers).
        print(f"client threads: {threads_start} before the load, {threading.active_count()} after it")
    failed = tally.bad_count > 0 or stats["connections"] != 0 or stats["tasks"] != base["tasks"]
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("minutes", type=float, help="how long the load runs")
    parser.add_argument("--clients", type=int, default=20, help="well-behaved clients (default 20)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--server-backend", choices=["asyncio", "uvloop", "trio", "blocking"], default="asyncio"
    )
    parser.add_argument("--codec", default="json", help="the server's codec (json, fast)")
    parser.add_argument(
        "--client-backend",
        choices=["asyncio", "trio", "blocking"],
        default="asyncio",
        help="the well-behaved clients' adapter (the other load runs on asyncio, or on trio with trio)",
    )
    parser.add_argument("--tls", action="store_true", help="TLS on every connection (a trustme test CA)")
    parser.add_argument("--unix", action="store_true", help="a Unix socket instead of TCP")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child
    parser.add_argument("--tls-dir", help=argparse.SUPPRESS)  # the child's certificate
    parser.add_argument("--listen", default="tcp://127.0.0.1:0", help=argparse.SUPPRESS)  # the child's
    args = parser.parse_args()
    global BACKEND
    BACKEND = args.server_backend
    if args.serve:
        if BACKEND == "blocking":
            serve_blocking(args.tls_dir, args.codec, args.listen)
        else:
            anyio.run(
                serve_main, BACKEND, args.tls_dir, args.codec, args.listen,
                backend="trio" if BACKEND == "trio" else "asyncio",
                backend_options={"use_uvloop": True} if BACKEND == "uvloop" else {},
            )
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        argv = [sys.executable, os.path.abspath(__file__), "0", "--serve"]
        argv += ["--server-backend", args.server_backend, "--codec", args.codec]
        if args.unix:
            if args.tls:
                parser.error("--tls is for TCP")
            argv += ["--listen", f"unix:{os.path.join(scratch, 'soak.sock')}"]
        if args.tls:
            import trustme  # (ezipc's test extra)

            global TLS_CLIENT
            ca = trustme.CA()
            ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
                os.path.join(scratch, "server.pem")
            )
            TLS_CLIENT = ssl.create_default_context()
            ca.configure_trust(TLS_CLIENT)
            argv += ["--tls-dir", scratch]
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        return run_load(child, args)


def run_load(child: subprocess.Popen[str], args: argparse.Namespace) -> int:
    try:
        assert child.stdout is not None
        address = child.stdout.readline().strip()
        tls = " (TLS)" if args.tls else ""
        print(f"server pid {child.pid} ({args.server_backend}, {args.codec}) on {address}{tls}; load "
              f"for {args.minutes} min, {args.clients} clients ({args.client_backend}), seed {args.seed}",
              flush=True)
        status = anyio.run(
            load, address, child.pid, args.minutes, args.clients, args.seed, BACKEND, args.client_backend,
            backend="trio" if args.client_backend == "trio" else "asyncio",
        )
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            code = child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            code = child.wait()
    print(f"server exited with status {code} after SIGTERM")
    return int(status or (code != 0))


if __name__ == "__main__":
    sys.exit(main())
