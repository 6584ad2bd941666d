"""The blocking adapter: ezipc_proto driven over plain sockets and pipes, with threads.

Threads, per connection: up to two *reading threads*, and the ``Server``'s (or
``Client``'s) pool of ``max_workers`` threads for handlers and callbacks.

* Reading: each reading thread waits for data in an epoll of its own, on which the socket
  is registered ``EPOLLEXCLUSIVE`` (elsewhere: ``poll``), so the kernel wakes one of them
  per arrival. The one woken takes the *baton* (only its holder reads and feeds the core)
  and settles the answers to our calls: a caller of ``request`` sleeps on a lock of its
  own, which the reader releases.
* Serving the peer's calls: a request or notification that may start is run by the
  reading thread that read it *if the other reading thread is not serving a call itself*
  (it waits for data, or is on its way back to it: the connection is still read, and no
  thread has to be woken to run the handler); otherwise it goes to the pool. Either way,
  reading never waits on a handler. At most ``max_concurrency`` requests per connection
  run at once; more wait in a line, and reading stops while the line is longer than that
  (backpressure; nothing is dropped). Notifications run one at a time in arrival order,
  and a request starts only after the notifications that came before it have started
  (a plain-function handler: finished, as in the async adapter).
* Caller reads (client side, plain sockets): a caller of ``request`` that finds nobody
  holding the baton reads its answer itself, so no thread hop is on its path. The reading
  threads then stand aside for a moment (``_STAND_ASIDE``) instead of waking up for
  answers the callers read; anything that needs them (a future, a batch, a caller that
  could not take the baton, a close) calls them back at once.
* Writing: whoever has bytes to send writes them itself, a blocking ``sendall`` under the
  write lock; a peer that does not read makes its writers wait (the kernel's socket
  buffers are the write buffer), never the reader. The core (``ezipc_proto.Connection``)
  is not thread-safe: every use of it is under the connection's lock, which is never held
  while reading from or writing to the peer.
* A process-wide timer thread handles ``submit`` timeouts and the idle and slow-message
  timeouts; it never blocks (what it has to write goes to the pool).
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import inspect
import itertools
import logging
import os
import queue
import select
import signal
import socket
import ssl as _ssl
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from ezipc_proto import (
    NEED_DATA,
    Cancel,
    Error,
    ErrorCode,
    Id,
    InvalidMessage,
    LocalProtocolError,
    Notification,
    RemoteProtocolError,
    Request,
    Response,
)
from ezipc_proto._events import _error, _request, _response  # the core's unchecked constructors

from ._address import DEFAULT_ADDRESS, Address, parse_address
from ._auth import AUTH_METHOD, AUTH_TIMEOUT, auth_params, token_matches
from ._errors import ConnectionClosed, LimitExceeded, RemoteError, RequestCancelled
from ._options import Options, Stats
from ._peer import PeerCredentials, format_sockaddr, free_unix_path, peer_credentials
from ._registry import (
    Hooks,
    InvalidParams,
    as_params,
    call_handler,
    error_answer,
    log,
    not_found,
    shorten,
    unencodable_answer,
)

__all__ = ["Remote", "Client", "Server", "connect", "connect_subprocess"]

_READ_SIZE = 65536
_HOOK_TIMEOUT = 10.0  # how long close() waits for the reader to finish (disconnect hooks)
_LINGER = 2.0  # how long a connection closed gracefully waits for the peer's EOF
_HANDSHAKE_TIMEOUT = 10.0  # TLS handshake, unless a connect timeout is given
# After a caller has read its own answer, the reading threads keep off the socket this
# long (unless a call needs them): a caller looping over request() would otherwise wake
# one with every answer, for nothing. Only what arrives while no caller reads and no
# future or batch waits can wait that long to be read.
_STAND_ASIDE = 0.001
_MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_monotonic = time.monotonic
_SHUTTING_DOWN = "Server is shutting down"
_CANCELLED = "Request cancelled"
_PLAIN = frozenset((int, str, float, bool, list, dict, type(None)))  # results that are not awaitable
_get_ident = threading.get_ident
_allocate_lock = threading.Lock


def _new_request(method: str, params: Any, id: int) -> Request:
    """A request to send: validated only if unusual (the core's fast constructor skips
    the checks that these type tests already made; the id comes from ``next_id``)."""
    if type(method) is str and (params is None or type(params) is dict or type(params) is list):
        return _request(method, params, id)
    return Request(method, params, id)


def _run_awaitable(value: Any) -> Any:
    """An async handler's result, computed in this (worker) thread with asyncio.run."""
    if inspect.iscoroutine(value):
        return asyncio.run(value)

    async def wait() -> Any:
        return await value

    return asyncio.run(wait())


# ---- a timer thread (submit() timeouts, idle and slow-message timeouts) ----------------


class _TimerHandle:
    __slots__ = ("when", "fn", "cancelled")

    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Timer:
    """One daemon thread for the whole process; callbacks must be quick and never block."""

    def __init__(self) -> None:
        self._cv = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, _TimerHandle]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, fn: Callable[[], None]) -> _TimerHandle:
        handle = _TimerHandle(_monotonic() + delay, fn)
        with self._cv:
            heapq.heappush(self._heap, (handle.when, next(self._seq), handle))
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name="ezipc-timer", daemon=True)
                self._thread.start()
            if self._heap[0][2] is handle:
                self._cv.notify()
        return handle

    def _main(self) -> None:
        heap = self._heap
        while True:
            with self._cv:
                while heap and heap[0][2].cancelled:
                    heapq.heappop(heap)
                if not heap:
                    self._cv.wait()
                    continue
                delay = heap[0][0] - _monotonic()
                if delay > 0:
                    self._cv.wait(delay)
                    continue
                handle = heapq.heappop(heap)[2]
            try:
                handle.fn()
            except Exception:
                log.exception("timer callback %r failed", handle.fn)


_timer = _Timer()
_local = threading.local()  # .ours: this thread is one of ours (a worker, or a connection's reader)


# ---- the worker pool -----------------------------------------------------------------


_JobItem = tuple[Callable[..., Any], tuple[Any, ...]]


class _Pool:
    """At most ``max_workers`` daemon threads, started when a job would otherwise wait
    (no worker is free and the limit is not reached), taking jobs in order."""

    def __init__(self, max_workers: int, name: str) -> None:
        self._max = max_workers
        self._name = name
        self._queue: queue.SimpleQueue[_JobItem | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._free = 0  # workers waiting for a job
        self._queued = 0  # jobs not taken yet
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            self._queue.put((fn, args))
            self._queued += 1
            if self._queued <= self._free or len(self._threads) >= self._max:
                return
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{len(self._threads) + 1}", daemon=True
            )
            self._threads.append(thread)
            self._free += 1  # (it will be, in a moment)
        thread.start()

    def _work(self) -> None:
        _local.ours = True
        get, lock = self._queue.get, self._lock
        while True:
            item = get()
            if item is None:
                return
            with lock:
                self._free -= 1
                self._queued -= 1
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # a worker must survive whatever a job does
                log.exception("job %r failed", fn)
            del item, fn, args
            with lock:
                self._free += 1

    def close(self) -> None:
        """Let the workers end once the jobs already queued have run (does not wait)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)


# ---- transports ----------------------------------------------------------------------


class _Readiness:
    """Waiting until a descriptor is readable, for up to two reading threads at once.

    Each reading thread (slot 0 or 1) waits in an epoll of its own on which the
    descriptor is registered with ``EPOLLEXCLUSIVE``, so the kernel wakes one of them
    per arrival, not both (elsewhere: ``poll``, which wakes both; still correct). Ending
    every wait, now and later (on abort): a socket's ``shutdown`` does (it wakes every
    waiter, and the socket stays readable); for pipes, ``wake_all`` writes to a wake-up
    pipe that is in every wait.
    """

    #: A read failed (the peer reset the connection): not a mere EOF, nobody reads answers.
    lost = False

    def __init__(self, fd: int, *, wake_pipe: bool) -> None:
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe() if wake_pipe else (-1, -1)
        self._woken = False
        self._waits: list[Callable[[], object] | None] = [None, None]
        self._epolls: list[Any] = []
        self._rclosed = False

    def wait_readable(self, slot: int) -> None:
        if self._rclosed:
            return
        wait = self._waits[slot]
        if wait is None:
            wait = self._waits[slot] = self._make_wait()
        try:
            wait()
        except (OSError, ValueError):  # closed meanwhile: the next read says so
            pass

    def _make_wait(self) -> Callable[[], object]:
        epoll = getattr(select, "epoll", None)
        if epoll is not None:
            ep = epoll()
            self._epolls.append(ep)
            try:
                ep.register(self._fd, select.EPOLLIN | getattr(select, "EPOLLEXCLUSIVE", 0))
                if self._wake_r >= 0:
                    ep.register(self._wake_r, select.EPOLLIN)
                return ep.poll  # type: ignore[no-any-return]
            except OSError:  # e.g. a regular file (stdin redirected): plain poll
                pass
        poll = select.poll()
        poll.register(self._fd, select.POLLIN)
        if self._wake_r >= 0:
            poll.register(self._wake_r, select.POLLIN)
        return poll.poll

    def readable_within(self, timeout: float) -> bool:
        """For callers (never blocks longer than ``timeout``; True also once aborted)."""
        poll = select.poll()
        poll.register(self._fd, select.POLLIN)
        if self._wake_r >= 0:
            poll.register(self._wake_r, select.POLLIN)
        try:
            return bool(poll.poll(timeout * 1000))
        except (OSError, ValueError):
            return True

    def readable_now(self) -> bool:
        return self.readable_within(0)

    def wake_all(self) -> None:
        if not self._woken and self._wake_w >= 0:
            self._woken = True
            try:
                os.write(self._wake_w, b"x")  # never drained: every later wait returns too
            except OSError:
                pass

    def close_readiness(self) -> None:
        self.wake_all()
        self._rclosed = True
        for ep in self._epolls:
            ep.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass


class _SocketTransport(_Readiness):
    """A connected stream socket (TCP or Unix). ``recv`` returns b"" at EOF or on error;
    ``abort`` (any thread) wakes blocked reads and waits and makes writers fail at once."""

    #: A caller of request() may read its own answer (with blocking ``recv``).
    callers_read = True

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock.fileno(), wake_pipe=False)
        self.sock = sock
        self.wlock = threading.Lock()
        self._recv = sock.recv

    def recv(self) -> bytes:
        try:
            return self._recv(_READ_SIZE)
        except OSError:
            self.lost = True
            return b""

    def recv_nowait(self) -> bytes | None:
        """What there is to read now (b"" at EOF), or None."""
        try:
            return self._recv(_READ_SIZE, _MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError:
            self.lost = True
            return b""

    def more_buffered(self, last: int) -> bool:
        """After reading ``last`` bytes: may more be there already (read before waiting)?"""
        return last == _READ_SIZE

    def send(self, data: bytes) -> None:  # the caller holds wlock
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def abort(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.wake_all()

    def close(self) -> None:
        """Release the descriptors (once the reading threads are done with them)."""
        self.abort()
        self.close_readiness()
        # Under the write lock, so that no writer can be handed a reused descriptor.
        if self.wlock.acquire(timeout=_LINGER):
            try:
                self.sock.close()
            finally:
                self.wlock.release()

    def peer_certificate(self) -> dict[str, Any] | None:
        return None


class _TLSTransport(_SocketTransport):
    """TLS over a socket through memory BIOs, so that the SSL object is only ever used
    under a lock (OpenSSL objects must not be used by two threads at once) while
    blocking happens on the raw socket, holding nothing."""

    callers_read = False  # request() waits for the reading threads instead

    def __init__(
        self, sock: socket.socket, context: _ssl.SSLContext, *, server_side: bool, server_hostname: str | None
    ) -> None:
        super().__init__(sock)
        self._in = _ssl.MemoryBIO()
        self._out = _ssl.MemoryBIO()
        self._obj = context.wrap_bio(
            self._in, self._out, server_side=server_side, server_hostname=server_hostname
        )
        self._ssl_lock = threading.Lock()

    def handshake(self, timeout: float | None) -> None:
        sock = self.sock
        sock.settimeout(timeout)
        try:
            while True:
                try:
                    self._obj.do_handshake()
                    break
                except _ssl.SSLWantReadError:
                    out = self._out.read()
                    if out:
                        sock.sendall(out)
                    data = sock.recv(_READ_SIZE)
                    if not data:
                        msg = "the peer closed the connection during the TLS handshake"
                        raise ConnectionError(msg) from None
                    self._in.write(data)
            out = self._out.read()
            if out:
                sock.sendall(out)
        finally:
            sock.settimeout(None)

    def _decrypted(self) -> bytes | None:
        """Plaintext the SSL object can give now (b"" at the end), or None."""
        with self._ssl_lock:
            try:
                data = self._obj.read(_READ_SIZE)
            except _ssl.SSLWantReadError:
                data = None
            except (_ssl.SSLError, OSError):  # close_notify, a ragged EOF, a bad record
                data = b""
            pending = self._out.pending
        if pending:
            self._flush_nowait()
        return data

    def _feed(self, raw: bytes) -> None:
        with self._ssl_lock:
            if raw:
                self._in.write(raw)
            else:
                self._in.write_eof()

    def recv(self) -> bytes:
        while True:
            data = self._decrypted()
            if data is not None:
                return data
            try:
                raw = self._recv(_READ_SIZE)
            except OSError:
                self.lost = True
                raw = b""
            self._feed(raw)

    def recv_nowait(self) -> bytes | None:
        while True:
            data = self._decrypted()
            if data is not None:
                return data
            try:
                raw = self._recv(_READ_SIZE, _MSG_DONTWAIT)
            except BlockingIOError:
                return None  # (a partial record waits in the SSL object)
            except OSError:
                self.lost = True
                raw = b""
            self._feed(raw)

    def more_buffered(self, last: int) -> bool:
        with self._ssl_lock:  # (records may wait undecrypted, e.g. sent with the handshake)
            return bool(self._in.pending or self._obj.pending()) or last == _READ_SIZE

    def _flush_nowait(self) -> None:
        """Bytes the SSL object produced while reading (e.g. a key update): written now if
        no writer is busy, else they go with the next write."""
        if self.wlock.acquire(blocking=False):
            try:
                with self._ssl_lock:
                    out = self._out.read()
                if out:
                    self.sock.sendall(out)
            except OSError:
                pass
            finally:
                self.wlock.release()

    def send(self, data: bytes) -> None:  # the caller holds wlock
        with self._ssl_lock:
            self._obj.write(data)
            out = self._out.read()
        self.sock.sendall(out)

    def shutdown_write(self) -> None:
        if self.wlock.acquire(timeout=_LINGER):
            try:
                with self._ssl_lock:
                    try:
                        self._obj.unwrap()
                    except (_ssl.SSLError, OSError, ValueError):
                        pass
                    out = self._out.read()
                if out:
                    self.sock.sendall(out)
            except OSError:
                pass
            finally:
                self.wlock.release()
        super().shutdown_write()

    def peer_certificate(self) -> dict[str, Any] | None:
        try:
            return self._obj.getpeercert() or None
        except ValueError:
            return None


class _PipeTransport(_Readiness):
    """Two file descriptors: a child's stdout and stdin, or this process's stdin and
    stdout. Reads happen only once ``poll`` says there is data, so a read never blocks
    and ``abort`` (the wake-up pipe) ends every wait: closing a descriptor would not
    wake a thread reading it."""

    callers_read = False

    def __init__(
        self,
        rfd: int,
        wfd: int,
        *,
        close_read: Callable[[], None] | None = None,
        close_write: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(rfd, wake_pipe=True)
        self.wlock = threading.Lock()
        self._rfd = rfd
        self._wfd = wfd
        # How to close each end when done (a child's pipes); None: leave it (our stdio).
        self._close_read = close_read
        self._close_write = close_write
        self._aborted = False
        self._write_closed = False
        self._closed = False

    def recv(self) -> bytes:
        while not self._aborted:
            self.wait_readable(0)
            data = self.recv_nowait()
            if data is not None:
                return data
        return b""

    def recv_nowait(self) -> bytes | None:
        if self._aborted:
            return b""
        if not self.readable_now():
            return None
        if self._aborted:  # set by another thread meanwhile
            return b""  # type: ignore[unreachable]
        try:
            return os.read(self._rfd, _READ_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def more_buffered(self, last: int) -> bool:
        return last == _READ_SIZE

    def send(self, data: bytes) -> None:  # the caller holds wlock
        if self._write_closed or self._aborted:
            raise BrokenPipeError(errno.EPIPE, "the pipe is closed")
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._wfd, view)
            except BlockingIOError:
                select.select([], [self._wfd], [])
                continue
            view = view[written:]

    def shutdown_write(self) -> bool:
        """Close the writing end (a child sees EOF on its stdin); False if a writer is
        stuck (the peer does not read) and it could not be done."""
        if not self.wlock.acquire(timeout=_LINGER):
            return False
        try:
            if not self._write_closed:
                self._write_closed = True
                if self._close_write is not None:
                    _quietly(self._close_write)
        finally:
            self.wlock.release()
        return True

    def abort(self) -> None:
        self._aborted = True
        self.wake_all()

    def close(self) -> None:
        self.abort()
        if self._closed:
            return
        self._closed = True
        self.shutdown_write()
        self.close_readiness()
        if self._close_read is not None:
            _quietly(self._close_read)

    def peer_certificate(self) -> dict[str, Any] | None:
        return None


_Transport = _SocketTransport | _PipeTransport


def _auth_timed_out(ref: weakref.ref[Remote]) -> None:  # on the timer thread
    remote = ref()
    if remote is not None and remote._auth_pending and not remote._closed:
        log.warning("%s did not authenticate within %ss: closing", remote.remote_address, AUTH_TIMEOUT)
        remote._abort("not authenticated")


# ---- calls in flight and requests being served ---------------------------------------


class _Call:
    """One of our requests awaiting its answer: ``request`` sleeps on ``lock`` (held from
    the start, released by whoever settles the call); ``submit`` completes ``future``."""

    __slots__ = ("id", "method", "lock", "result", "exc", "future", "callback", "timer")

    def __init__(self, method: str, id: Id = None) -> None:
        self.id = id
        self.method = method
        lock = self.lock = _allocate_lock()
        lock.acquire()
        self.result: Any = None
        self.exc: BaseException | None = None
        self.future: Future[Any] | None = None
        self.callback: Callable[[Future[Any]], Any] | None = None
        self.timer: _TimerHandle | None = None


class _Job:
    """A request from the peer: waiting (in the line or the pool's queue), running, or
    answered (it may be answered before it runs: cancelled, or shut down)."""

    __slots__ = ("event", "started", "answered")

    def __init__(self, event: Request) -> None:
        self.event = event
        self.started = False
        self.answered = False


class Remote:
    """The other end of one connection; the same on both sides, and thread-safe.

    ``request`` (blocks for the answer), ``submit`` (returns a ``Future`` at once),
    ``notify`` and ``batch`` call the peer; requests and notifications from the peer are
    served by the hooks of the ``Server`` or ``Client`` it belongs to, in worker threads.
    ``stats`` counts traffic; ``data`` is a dict for the application's per-connection
    state; ``local_address``, ``remote_address``, ``peer_certificate`` (TLS) and
    ``peer_credentials`` (Unix sockets: pid, uid, gid) describe the connection.

    A ``Remote`` is a context manager: leaving the ``with`` block closes it.
    """

    def __init__(
        self,
        transport: _Transport,
        hooks: Hooks,
        options: Options,
        pool: _Pool,
        *,
        server: Server | None = None,
        framing: str | None = None,
        local_address: str = "",
        remote_address: str = "",
        peer_credentials: PeerCredentials | None = None,
        caller_reads: bool = False,
    ) -> None:
        self._t = transport
        self._hooks = hooks
        self.options = options
        self.server = server
        self._pool = pool
        self._conn = options.connection(framing)
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)  # the line got shorter / the jobs ended
        self._space_waiters = 0  # threads in _space.wait() (notify only if any: it is not free)
        self._stats = Stats()
        self.data: dict[str, Any] = {}
        self.local_address = local_address
        self.remote_address = remote_address
        self.peer_certificate: dict[str, Any] | None = transport.peer_certificate()
        self.peer_credentials = peer_credentials
        self._waiters: dict[Id, _Call] = {}
        self._jobs: dict[Id, _Job] = {}  # requests received and not answered yet
        self._line: deque[_Job | Notification] = deque()  # received, not started
        self._running = 0  # request jobs handed to the pool and not finished
        self._limit = options.max_concurrency
        self._max_pending = options.max_pending
        self._answers_made = 0  # answers taken from the core (under _lock) ...
        self._answers_written = 0  # ... and written (under the write lock), ...
        self._answers_dropped = 0  # ... or given up (under _lock)
        self._notifying = False  # a notification handler is running (or about to)
        self._notif_unstarted = False  # ... and has not begun (or, a plain function, ended): requests wait
        # A server with auth_token handles nothing until the client has presented it.
        self._auth_pending = server is not None and options.auth_token is not None
        self._auth_timer: _TimerHandle | None = None
        # Connect hooks done (after authentication): the peer's calls may be served.
        self._ready = not hooks.on_connect and not self._auth_pending
        self._shutting_down = False
        self._closed = False
        self._aborted = False
        self._close_reason = "connection closed"
        self._reader_ident = 0  # the thread reading now (request() there would deadlock)
        self._finishing_ident = 0  # the thread running _finish (and the disconnect hooks)
        self._started = False
        self._done = threading.Event()
        self._baton = threading.Lock()  # held while reading and feeding the core
        self._serving = [False, False]  # per reading thread: serving a call itself
        # A caller of request() reads its own answer when nobody else is reading: only
        # on the client side (a server seldom calls) and on plain sockets.
        self._callers_read = caller_reads and transport.callers_read
        self._aside = threading.Condition(threading.Lock())  # reading threads standing aside
        self._reader_wanted = False
        self._standing_aside = 0
        self._caller_read_at = 0.0
        self._second: threading.Thread | None = None
        self._readers = 1  # reading threads not yet gone (the last one closes the transport)
        self._reading_done = False
        self._end_reason: str | None = None  # the peer ended the connection (EOF, bad framing)
        self._finalizers: list[Callable[[], None]] = []  # close(): end a subprocess
        self._on_finish: list[Callable[[], None]] = []  # after the disconnect hooks
        self._log_messages = options.log_messages and log.isEnabledFor(logging.DEBUG)
        self._timed = options.idle_timeout is not None or options.message_timeout is not None
        self._last_rx = self._last_tx = _monotonic()
        self._message_since: float | None = None

    def __repr__(self) -> str:
        return f"<Remote {self.remote_address} {'closed' if self._closed else 'open'}>"

    def __enter__(self) -> Remote:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def stats(self) -> Stats:
        """Counters of this connection (a live object; pending counts are refreshed here)."""
        stats = self._stats
        stats.requests_pending = len(self._waiters)
        stats.handlers_running = self._running
        stats.late_responses = self._conn.late_responses
        return stats

    @property
    def closed(self) -> bool:
        """True once the connection has ended or begun to close (or the peer sends
        nothing more): calls raise ``ConnectionClosed``."""
        return self._closed

    @property
    def framing(self) -> str:
        return self._conn.framing

    # ---- calling the peer ------------------------------------------------------------

    def request(self, method: str, params: Any = None, *, timeout: float | None = None) -> Any:
        """Call ``method`` and wait for its result.

        Raises ``RemoteError`` (an error answer), ``TimeoutError`` (no answer within
        ``timeout`` seconds, default ``request_timeout``; the peer is told to cancel),
        ``ConnectionClosed`` (the connection ended first) or ``LimitExceeded``
        (``max_pending`` requests already await answers; nothing was sent). If the wait
        is interrupted (e.g. KeyboardInterrupt), the peer is told to cancel as well.
        """
        if self._reader_ident == _get_ident():
            raise RuntimeError(
                "request() would deadlock on the connection's reader thread; "
                "use submit(), or call from another thread"
            )
        call = self._send_request(method, params)
        if timeout is None:
            timeout = self.options.request_timeout
        lock = call.lock
        try:
            if self._callers_read:
                settled = self._read_for(call, None if timeout is None else _monotonic() + timeout)
            elif timeout is None:
                settled = lock.acquire()
            else:
                settled = lock.acquire(timeout=max(timeout, 0))
            if not settled:
                if self._abandon(call, TimeoutError(f"request {method!r} timed out after {timeout}s")):
                    raise call.exc  # type: ignore[misc]
                lock.acquire()  # settled at this very moment: take its outcome
        except BaseException:
            if not lock.acquire(blocking=False):
                self._abandon(call, RequestCancelled(f"request {method!r} was abandoned"))
            raise
        if call.exc is not None:
            raise call.exc
        return call.result

    def submit(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = None,
        callback: Callable[[Future[Any]], Any] | None = None,
    ) -> Future[Any]:
        """Send a request and return a ``concurrent.futures.Future`` of its result at once.

        The future fails as ``request`` would raise. ``callback(future)`` runs in a
        worker thread when it finishes, however it finishes. Cancelling the future
        (``future.cancel()``) tells the peer to cancel. Callbacks added with
        ``future.add_done_callback`` run on the thread that completes the future (often
        the connection's reader): keep them short and never wait in them.
        """
        call = self._send_request(method, params, future=True, callback=callback)
        self._want_reader()
        future = call.future
        assert future is not None
        if timeout is None:
            timeout = self.options.request_timeout
        if timeout is not None:
            exc = TimeoutError(f"request {method!r} timed out after {timeout}s")

            def expire() -> None:
                self._abandon(call, exc, defer_write=True)

            call.timer = _timer.call_later(timeout, expire)

        def on_done(future: Future[Any]) -> None:
            if future.cancelled():
                self._abandon(call, RequestCancelled(f"request {method!r} was cancelled"))
                if call.callback is not None:
                    self._defer(call.callback, future)

        future.add_done_callback(on_done)
        return future

    def notify(self, method: str, params: Any = None) -> None:
        """Send a notification (no answer). Blocks only while the peer is not reading.
        Allowed after the peer's EOF (it may still read), until the connection closes."""
        if self._aborted or (self._closed and self._end_reason is None):
            raise ConnectionClosed(f"{self.remote_address}: {self._close_reason}")
        with self._lock:
            data = self._conn.send(Notification(method, as_params(params)))
        self._write(data)

    notif = notify  # the original EZ-IPC's name

    def batch(
        self,
        requests: Iterable[tuple[str, Any]],
        *,
        notify: Iterable[tuple[str, Any]] = (),
        timeout: float | None = None,
    ) -> list[Any]:
        """Send ``requests`` (``(method, params)`` pairs) and ``notify`` notifications as
        one JSON-RPC batch; return one item per request, in order: its result, or the
        ``RemoteError`` it was answered with (returned, not raised). ``TimeoutError``,
        ``ConnectionClosed`` and ``LimitExceeded`` raise as for ``request``."""
        requests = list(requests)
        notes = [Notification(m, as_params(p)) for m, p in notify]
        calls: list[_Call] = []
        with self._lock:
            if self._closed:
                raise ConnectionClosed(f"{self.remote_address}: {self._close_reason}")
            if len(self._waiters) + len(requests) > self.options.max_pending:
                raise LimitExceeded(
                    f"a batch of {len(requests)} would exceed max_pending ({self.options.max_pending})"
                )
            conn = self._conn
            events: list[Request | Notification] = []
            for method, params in requests:
                ev = Request(method, as_params(params), conn.next_id())
                events.append(ev)
                calls.append(_Call(method, ev.id))
            events.extend(notes)
            data = conn.send_batch(events)
            for call in calls:
                self._waiters[call.id] = call
        self._write(data)
        self._want_reader()
        if timeout is None:
            timeout = self.options.request_timeout
        deadline = None if timeout is None else _monotonic() + timeout
        results: list[Any] = []
        try:
            for call in calls:
                if deadline is None:
                    call.lock.acquire()
                elif not call.lock.acquire(timeout=max(0.0, deadline - _monotonic())):
                    if self._abandon(call, TimeoutError(f"batch timed out after {timeout}s")):
                        raise call.exc  # type: ignore[misc]
                    call.lock.acquire()
                if call.exc is None:
                    results.append(call.result)
                elif isinstance(call.exc, RemoteError):
                    results.append(call.exc)
                else:
                    raise call.exc
        except BaseException:
            for call in calls:
                self._abandon(call, RequestCancelled("the batch was abandoned"))
            raise
        return results

    def close(self, reason: str = "closed locally") -> None:
        """Close now: pending calls fail with ``ConnectionClosed``, answers still being
        computed are dropped. Waits (briefly) for the reader thread and the disconnect
        hooks, unless called from them. (A subprocess is ended first: see
        ``Client.connect_subprocess``.)"""
        self._mark_closed(reason)
        finalizers, self._finalizers = self._finalizers, []
        for finalizer in finalizers:
            finalizer()
        self._abort(reason)
        if self._started and self._finishing_ident != _get_ident():
            self._done.wait(_HOOK_TIMEOUT)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the connection has ended (True), or ``timeout`` seconds (False)."""
        return self._done.wait(timeout)

    # ---- internals: our calls --------------------------------------------------------

    def _send_request(
        self,
        method: str,
        params: Any,
        *,
        future: bool = False,
        callback: Callable[[Future[Any]], Any] | None = None,
    ) -> _Call:
        if type(params) is tuple:
            params = list(params)
        call = _Call(method)
        if future:  # (all set before it is sent: the answer may come at once)
            call.future = Future()
            call.callback = callback
        with self._lock:
            if self._closed:
                raise ConnectionClosed(f"{self.remote_address}: {self._close_reason}")
            waiters = self._waiters
            if len(waiters) >= self._max_pending:
                raise LimitExceeded(
                    f"{len(waiters)} requests already await an answer (max_pending={self._max_pending})"
                )
            conn = self._conn
            id = call.id = conn.next_id()
            data = conn.send(_new_request(method, params, id))
            waiters[id] = call
        self._write(data)
        return call

    def _settle(self, call: _Call, result: Any, exc: BaseException | None) -> None:
        """Give ``call`` its outcome (exactly once: whoever popped it from the waiters)."""
        call.result = result
        call.exc = exc
        call.lock.release()
        future = call.future
        if future is not None:
            if call.timer is not None:
                call.timer.cancel()
            try:
                if exc is None:
                    future.set_result(result)
                else:
                    future.set_exception(exc)
            except Exception:  # cancelled by its owner meanwhile
                return
            if call.callback is not None:
                self._defer(call.callback, future)

    def _abandon(self, call: _Call, exc: BaseException, *, defer_write: bool = False) -> bool:
        """Stop waiting for ``call``; tell the peer (per the cancellation profile). False
        if it had been settled already."""
        with self._lock:
            if self._waiters.get(call.id) is not call:
                return False
            del self._waiters[call.id]
            data = b"" if self._aborted else self._conn.send(Cancel(call.id))
        self._settle(call, None, exc)
        if data:
            if defer_write:  # on the timer thread, which must never block
                self._defer(self._write, data)
            else:
                self._write(data)
        return True

    def _defer(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._pool.submit(fn, *args)
        except RuntimeError:  # the pool is closed: the process is shutting down
            log.debug("dropped %r: the worker pool is closed", fn)

    # ---- internals: writing ----------------------------------------------------------

    def _write(self, data: bytes, wait: float = -1, *, answer: bool = False) -> None:
        """Write one or more whole messages; on failure, abort the connection. ``wait``:
        how long another writer may hold us up (the server's shutdown must not wait
        forever behind a peer that does not read). ``answer``: counts as written."""
        wlock = self._t.wlock
        if not data or self._aborted or not wlock.acquire(True, wait):
            if answer:  # given up: no longer owed
                with self._lock:
                    self._answers_dropped += 1
                    if not self._busy():
                        self._wake_space()
            if data and not self._aborted:
                self._abort("write timed out: the peer does not read")
            return
        if self._log_messages:  # before the write: the peer may answer (or close) at once
            log.debug("sent to %s: %s", self.remote_address, shorten(data))
        try:
            self._t.send(data)
            stats = self._stats
            stats.bytes_out += len(data)
            stats.messages_out += 1
        except (OSError, ValueError) as exc:
            if not self._aborted:
                self._abort(f"write failed: {exc!r}")
            return
        finally:
            if answer:
                self._answers_written += 1
            wlock.release()
            if answer and self._space_waiters:
                self._answer_written()
        if self._timed:
            self._last_tx = _monotonic()

    # ---- internals: life cycle -------------------------------------------------------

    def _start_thread(self) -> None:
        """Client side: read in a new daemon thread."""
        self._started = True
        thread = threading.Thread(target=self._run, name=f"ezipc-reader {self.remote_address}", daemon=True)
        thread.start()

    def _run(self) -> None:
        """Read until the connection ends, then finish it (on this thread or on the
        connection's second thread, whichever saw the end; this one waits for it)."""
        self._started = True
        if self._timed:
            self._schedule_timeout_check()
        if self._auth_pending:
            ref = weakref.ref(self)  # (the timer does not keep a closed connection alive)
            self._auth_timer = _timer.call_later(AUTH_TIMEOUT, lambda: _auth_timed_out(ref))
        elif not self._ready:
            self._defer(self._connect_hooks)
        self._lead(0)
        self._done.wait()

    def _connect_hooks(self) -> None:
        try:
            for hook in self._hooks.on_connect:
                result = hook(self)
                if inspect.isawaitable(result):
                    _run_awaitable(result)
        except Exception:
            log.exception("connect hook failed for %s: closing", self.remote_address)
            self._abort("rejected by a connect hook")
            return
        with self._lock:
            self._ready = True
            start = self._pump()
        self._start(start)

    def _authenticate(self, ev: Request) -> tuple[bytes, bool]:
        """Under the lock: the client's first request on a server with ``auth_token``.
        Fail closed: the bytes of the answer, and whether the client authenticated (if
        not, the connection ends)."""
        expected = self.options.auth_token
        assert expected is not None
        if token_matches(ev, expected):
            self._auth_pending = False
            if self._auth_timer is not None:
                self._auth_timer.cancel()
            if not self._hooks.on_connect:
                self._ready = True
            return self._answer_locked(None, _response(ev.id, True), ev.method), True
        log.warning("%s failed to authenticate (first request: %r)", self.remote_address, ev.method)
        answer = _error(ev.id, ErrorCode.UNAUTHORIZED, "Unauthorized", None)
        return self._answer_locked(None, answer, ev.method), False

    def _mark_closed(self, reason: str) -> None:
        """No more calls from us; the pending ones fail (the transport stays up)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close_reason = reason
            waiters = list(self._waiters.values())
            self._waiters.clear()
        self._fail(waiters)

    def _abort(self, reason: str) -> None:
        """End the connection now (any thread; never blocks): pending calls fail."""
        with self._lock:
            if self._aborted:
                return
            self._aborted = True
            if not self._closed:
                self._closed = True
                self._close_reason = reason
            waiters = list(self._waiters.values())
            self._waiters.clear()
            self._wake_space()
        self._t.abort()
        self._want_reader()
        self._fail(waiters)

    def _fail(self, waiters: list[_Call]) -> None:
        if waiters:
            exc = ConnectionClosed(f"{self.remote_address}: {self._close_reason}")
            for call in waiters:
                self._settle(call, None, exc)

    def _finish(self) -> None:
        self._abort(self._close_reason)  # (the last reading thread to go releases the transport)
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        with self._lock:
            self._line.clear()
            self._wake_space()
        for hook in self._hooks.on_disconnect:
            try:
                result = hook(self)
                if inspect.isawaitable(result):
                    _run_awaitable(result)
            except Exception:
                log.exception("disconnect hook failed for %s", self.remote_address)
        for fn in self._on_finish:
            fn()
        self._done.set()

    def _close_gracefully(self, linger: float) -> None:
        """Server shutdown: say we are done writing, let the peer hang up (or not)."""
        self._t.shutdown_write()
        if not self._done.wait(linger):
            self._abort("server shut down")

    # ---- internals: timeouts (on the timer thread) -----------------------------------

    def _schedule_timeout_check(self, at: float | None = None) -> None:
        opts = self.options
        if at is None:
            at = _monotonic() + min(t for t in (opts.idle_timeout, opts.message_timeout) if t is not None)
        _timer.call_later(max(0.0, at - _monotonic()), self._check_timeouts)

    def _check_timeouts(self) -> None:
        if self._closed:
            return
        opts = self.options
        now = _monotonic()
        next_at = float("inf")
        if opts.message_timeout is not None:
            since = self._message_since
            if since is not None and now - since >= opts.message_timeout:
                log.warning("%s: closing a half-received message (timeout)", self.remote_address)
                self._abort("half-received message timed out")
                return
            next_at = (since if since is not None else now) + opts.message_timeout
        if opts.idle_timeout is not None:
            busy = self._running or self._waiters or self._line or self._notifying or self._jobs
            last = max(self._last_rx, self._last_tx)
            if not busy and now - last >= opts.idle_timeout:
                log.warning("%s: closing an idle connection (timeout)", self.remote_address)
                self._abort("idle connection timed out")
                return
            next_at = min(next_at, (now if busy else last) + opts.idle_timeout)
        self._schedule_timeout_check(next_at)

    # ---- internals: reading ----------------------------------------------------------

    def _lead(self, slot: int) -> None:
        """The loop of the connection's reading threads: slot 0, and slot 1 started when
        the first call from the peer arrives.

        Each waits for data in its own epoll; the kernel wakes one of them per arrival.
        The one woken reads (holding the baton) and feeds the core. A request or
        notification that may start is served by this very thread if the other one is
        not serving a call itself, i.e. it waits for data or is on its way back to it
        (so the connection is still read, and no thread has to be woken to run the
        handler); otherwise it goes to the pool. Either way the reading never waits on
        a handler.

        On the client side, a caller of ``request`` reads its own answer itself when
        nobody else holds the baton (plain sockets); the reading threads then stand
        aside briefly rather than wake up for answers that callers read.
        """
        _local.ours = True
        baton, serving, t = self._baton, self._serving, self._t
        aside = self._callers_read
        wait = not t.more_buffered(0)
        while self._end_reason is None:
            self._wait_for_space()
            if wait:
                if aside:
                    self._stand_aside()
                t.wait_readable(slot)
            baton.acquire()
            try:
                if self._end_reason is not None:  # (set by another thread meanwhile)
                    break  # type: ignore[unreachable]
                data = t.recv_nowait()
                if data is None:  # someone else read it
                    wait = True
                    continue
                wait = not (data and t.more_buffered(len(data)))
                self._reader_ident = _get_ident()
                start = self._process(data)
                # Serve one here? Decided holding the baton, so that the two threads
                # never both go (then nobody would read); and only if nothing is left
                # buffered (the other's epoll is woken by new arrivals only).
                item = None
                if start and wait and self._end_reason is None and self._other_waits(slot):
                    item = start.pop(0)
                    serving[slot] = True
            except BaseException:
                log.exception("reader of %s failed", self.remote_address)
                self._abort("internal error")
                if self._end_reason is None:
                    self._end_reason = "internal error"
                break
            finally:
                self._reader_ident = 0
                baton.release()
            if start:
                self._start(start)
            if item is not None:
                try:
                    if type(item) is _Job:
                        self._serve_request(item, slot)
                    else:
                        self._serve_notification(item)  # type: ignore[arg-type]
                finally:
                    serving[slot] = False
                wait = True  # (the other thread read whatever came meanwhile)
        with self._lock:
            first = not self._reading_done
            self._reading_done = True
        try:
            if first:  # this thread finishes the connection
                self._finishing_ident = _get_ident()
                try:
                    self._ended(self._end_reason or "connection closed")
                finally:
                    self._finish()
        finally:
            with self._lock:
                self._readers -= 1
                last = not self._readers
            if last:  # nobody waits on the descriptors any more: release them
                self._t.close()

    def _other_waits(self, slot: int) -> bool:
        """May this reading thread serve a call itself? Yes if the other one is waiting
        for data, or on its way back to it (it is not serving a call itself); it is
        started now if need be."""
        if self._second is not None:
            return not self._serving[1 - slot]
        if not self._aborted:
            with self._lock:
                self._readers += 1
            self._second = threading.Thread(
                target=self._lead, args=(1,), daemon=True, name=f"ezipc-reader {self.remote_address}"
            )
            self._second.start()
            return True
        return False

    def _stand_aside(self) -> None:
        """Client side: keep off the socket while callers read for themselves."""
        aside = self._aside
        with aside:
            self._standing_aside += 1
            try:
                while not self._reader_wanted and not self._aborted:
                    left = self._caller_read_at + _STAND_ASIDE - _monotonic()
                    if left <= 0:
                        break
                    aside.wait(left)
            finally:
                self._standing_aside -= 1
            self._reader_wanted = False

    def _want_reader(self) -> None:
        """Something waits that no caller reads for: the reading threads must read."""
        if self._callers_read:
            self._reader_wanted = True  # (seen by a thread about to stand aside)
            if self._standing_aside:  # (and one that stands aside already is woken)
                with self._aside:
                    self._aside.notify_all()

    def _wait_for_space(self) -> None:
        """Backpressure: no reading while the line of waiting calls is over the limit."""
        line, limit = self._line, self.options.max_concurrency
        if len(line) > limit:
            with self._lock:
                while len(line) > limit and not self._aborted:
                    self._wait_space()

    def _read_for(self, call: _Call, deadline: float | None) -> bool:
        """A caller waiting for ``call``: read its answer itself if nobody else is
        reading; otherwise wait for the reader to settle it. True once settled (its
        lock is then ours), False if the deadline passed first."""
        baton, lock, t = self._baton, call.lock, self._t
        while True:
            if len(self._line) > self.options.max_concurrency or not baton.acquire(blocking=False):
                self._want_reader()  # (the baton's holder may leave before our answer comes)
                if deadline is None:
                    return lock.acquire()
                return lock.acquire(timeout=max(0.0, deadline - _monotonic()))
            try:
                if lock.acquire(blocking=False):
                    return True  # settled while we were getting the baton
                if deadline is not None:
                    left = deadline - _monotonic()
                    if left <= 0 or not t.readable_within(left):
                        return False
                self._reader_ident = _get_ident()
                try:
                    start = self._process(t.recv())
                finally:
                    self._reader_ident = 0
                    self._caller_read_at = _monotonic()
            finally:
                baton.release()
            if start:
                self._start(start)  # a caller never serves the peer's calls itself
            if lock.acquire(blocking=False):
                if self._waiters:
                    self._want_reader()  # others wait for answers: someone must read
                return True
            if self._end_reason is not None or self._aborted:
                return lock.acquire()  # failed with ConnectionClosed meanwhile

    def _process(self, data: bytes) -> list[_Job | Notification]:
        """Holding the baton: feed one chunk (b"" at EOF) to the core and act on what it
        gives. Returns what may start now; sets ``_end_reason`` if the connection ended."""
        conn = self._conn
        stats = self._stats
        waiters = self._waiters
        timed = self._timed
        if timed:
            self._last_rx = _monotonic()
        start: list[_Job | Notification] = []
        later: list[tuple[Any, ...]] | None = None  # what to do once the lock is released
        ended: str | None = None
        with self._lock:
            if self._aborted:
                if self._end_reason is None:
                    self._end_reason = self._close_reason
                return start
            stats.bytes_in += len(data)
            conn.receive_data(data)
            received = stats.messages_in + stats.errors
            next_event = conn.next_event
            while True:
                try:
                    ev = next_event()
                except RemoteProtocolError as exc:
                    log.warning("%s broke the protocol: %s", self.remote_address, exc)
                    stats.errors += 1
                    later = later or []
                    later.append((self._write, conn.send(Error(None, exc.error_code, str(exc)))))
                    ended = f"protocol error: {exc}"
                    break
                if ev is NEED_DATA:
                    break
                kind = type(ev)
                if self._log_messages and kind is not InvalidMessage:
                    log.debug("received from %s: %s", self.remote_address, shorten(repr(ev)))
                if kind is Response:
                    stats.messages_in += 1
                    call = waiters.pop(ev.id, None)  # type: ignore[union-attr]
                    if call is not None:
                        if call.future is None:  # request(): wake the caller right here
                            call.result = ev.result  # type: ignore[union-attr]
                            call.lock.release()
                        else:
                            later = later or []
                            later.append((self._settle, call, ev.result, None))  # type: ignore[union-attr]
                elif kind is Request:
                    stats.messages_in += 1
                    if self._auth_pending:
                        answer, authenticated = self._authenticate(ev)  # type: ignore[arg-type]
                        later = later or []
                        later.append((self._write_answer, answer))
                        if not authenticated:
                            ended = "authentication failed"
                            break
                        if not self._ready:
                            later.append((self._defer, self._connect_hooks))
                        continue
                    item = self._received_request(ev)  # type: ignore[arg-type]
                    if type(item) is bytes:
                        later = later or []
                        later.append((self._write_answer, item))
                    elif item is not None:
                        start.append(item)  # type: ignore[arg-type]
                elif kind is Notification:
                    stats.messages_in += 1
                    if self._auth_pending:
                        log.warning(
                            "%s sent a notification before authenticating: closing", self.remote_address
                        )
                        ended = "authentication failed"
                        break
                    if self._ready and not self._line and not self._notifying:
                        self._notifying = self._notif_unstarted = True
                        start.append(ev)  # type: ignore[arg-type]
                    else:
                        self._line.append(ev)  # type: ignore[arg-type]
                elif kind is Error:
                    stats.messages_in += 1
                    call = waiters.pop(ev.id, None)  # type: ignore[union-attr]
                    if call is not None:
                        later = later or []
                        later.append((self._settle, call, None, RemoteError(ev.code, ev.message, ev.data)))  # type: ignore[union-attr]
                    else:  # id null: the peer could not read something we sent
                        stats.errors += 1
                        log.warning("%s reported an error: [%s] %s", self.remote_address, ev.code, ev.message)  # type: ignore[union-attr]
                elif kind is Cancel:
                    stats.messages_in += 1
                    job = self._jobs.get(ev.id)  # type: ignore[union-attr]
                    if job is not None and not job.started:
                        later = later or []
                        cancelled = _error(job.event.id, ErrorCode.REQUEST_CANCELLED, _CANCELLED, None)
                        later.append((self._write_answer, self._answer_locked(job, cancelled)))
                elif kind is InvalidMessage:
                    stats.errors += 1
                    log.warning("%s sent an invalid message: %s", self.remote_address, ev.error.message)  # type: ignore[union-attr]
                    if ev.reply:  # type: ignore[union-attr]
                        later = later or []
                        later.append((self._write, ev.reply))  # type: ignore[union-attr]
                else:  # Closed
                    unfinished = ev.unfinished  # type: ignore[union-attr]
                    if unfinished:
                        log.warning(
                            "%s closed in the middle of a message (%d bytes lost)",
                            self.remote_address,
                            len(unfinished),
                        )
                    # A reset is no half-close: nobody will read our answers (as in the
                    # async adapter, the connection ends at once).
                    ended = "connection lost" if self._t.lost else "closed by the peer"
                    break
            stats.late_responses = conn.late_responses
            stats.requests_pending = len(waiters)
            if timed:
                if not conn.in_message:
                    self._message_since = None
                elif self._message_since is None or stats.messages_in + stats.errors != received:
                    self._message_since = self._last_rx
            if ended is not None and self._end_reason is None:
                self._end_reason = ended
        if later is not None:
            for fn, *args in later:
                fn(*args)
        if ended is not None:
            self._mark_closed(ended)  # our calls can get no answer now
        return start

    def _received_request(self, ev: Request) -> _Job | bytes | None:
        """Under the lock: a request from the peer: the job to start now, or None (it
        waits in the line), or the bytes of an answer to write at once."""
        if self._shutting_down:
            return self._answer_locked(None, _error(ev.id, ErrorCode.SHUTTING_DOWN, _SHUTTING_DOWN, None))
        job = _Job(ev)
        self._jobs[ev.id] = job
        if self._ready and not self._line and self._running < self._limit and not self._notif_unstarted:
            self._running += 1
            return job
        self._line.append(job)
        return None

    def _ended(self, reason: str) -> None:
        """The peer sent EOF (or broke the framing): our calls can get no answer, but the
        answers still owed are written first (within ``shutdown_timeout``)."""
        self._mark_closed(reason)
        if reason.startswith("protocol error") or reason in ("authentication failed", "connection lost"):
            return
        deadline = _monotonic() + self.options.shutdown_timeout
        with self._lock:
            while self._busy() and not self._aborted:
                left = deadline - _monotonic()
                if left <= 0:
                    break
                self._wait_space(left)

    # ---- internals: serving the peer's calls -----------------------------------------

    def _busy(self) -> bool:
        """Under the lock: requests owed (or their answers not yet written), or
        notifications waiting or running."""
        return bool(
            self._jobs
            or self._notifying
            or self._line
            or self._answers_made != self._answers_written + self._answers_dropped
        )

    def _wait_space(self, timeout: float | None = None) -> None:
        """Under the lock: wait for the line to shrink or the work to end."""
        self._space_waiters += 1
        try:
            self._space.wait(timeout)
        finally:
            self._space_waiters -= 1

    def _wake_space(self) -> None:
        """Under the lock."""
        if self._space_waiters:
            self._space.notify_all()

    def _pump(self) -> list[_Job | Notification]:
        """Under the lock: take from the line what may start now."""
        out: list[_Job | Notification] = []
        if not self._ready or self._aborted:
            return out
        line = self._line
        limit = self.options.max_concurrency
        while line:
            item = line[0]
            if type(item) is _Job:
                if not item.answered:
                    if self._running >= limit or self._notif_unstarted:
                        break  # (a request starts after the notifications before it have)
                    self._running += 1
                    out.append(item)
            else:
                if self._notifying:
                    break
                self._notifying = self._notif_unstarted = True
                out.append(item)
            line.popleft()
        if out:
            self._wake_space()
        return out

    def _start(self, items: list[_Job | Notification]) -> None:
        submit = self._pool.submit
        try:
            for item in items:
                if type(item) is _Job:
                    submit(self._serve_request, item)
                else:
                    submit(self._serve_notification, item)
        except RuntimeError:  # the pool is closed: the server is going away
            self._abort("server shut down")

    def _serve_request(self, job: _Job, slot: int = -1) -> None:
        """Run the handler of ``job`` (in a worker, or on reading thread ``slot``)."""
        ev = job.event
        job.started = True  # (a cancel that comes after this lets it run: its answer is dropped)
        if job.answered or self._aborted:  # cancelled or shut down while it waited
            with self._lock:
                self._running -= 1
                start = self._pump()
                if not self._busy():
                    self._wake_space()
            self._start(start)
            return
        self._stats.handlers_running = self._running
        id, method = ev.id, ev.method
        answer: Response | Error
        try:
            handler = self._hooks.requests.get(method)
            if handler is None:
                answer = not_found(id, method)
            else:
                try:
                    result = call_handler(handler, ev.params, self)
                    if handler.is_async or (type(result) not in _PLAIN and inspect.isawaitable(result)):
                        result = _run_awaitable(result)
                    answer = _response(id, result)  # (the id came from the core: valid)
                except Exception as exc:
                    answer = error_answer(id, exc, method=method, debug=self.options.debug)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: answer, then let it go
            answer = error_answer(id, exc, method=method, debug=self.options.debug)
            self._finish_request(job, answer)
            raise
        if slot >= 0:  # the handler is done: the other reading thread may serve the next
            self._serving[slot] = False
        self._finish_request(job, answer)

    def _finish_request(self, job: _Job, answer: Response | Error) -> None:
        with self._lock:
            self._running -= 1
            data = self._answer_locked(job, answer, job.event.method)
            start = self._pump() if self._line else None
            if self._space_waiters and not self._busy():
                self._space.notify_all()
        self._stats.handlers_running = self._running
        if data:
            self._write(data, answer=True)
        if start:
            self._start(start)

    def _answer_locked(self, job: _Job | None, answer: Response | Error, method: str = "") -> bytes:
        """Under the lock: the bytes of ``answer`` (b"" if the job was answered already)."""
        if job is not None:
            if job.answered:
                return b""
            job.answered = True
            del self._jobs[answer.id]
        if self._aborted:
            return b""
        conn = self._conn
        try:
            data = conn.send(answer)
        except LocalProtocolError as exc:
            answer = unencodable_answer(answer.id, exc, method=method, debug=self.options.debug)
            data = conn.send(answer)
        if type(answer) is Error:
            self._stats.errors += 1
            log.info(
                "%s: %s answered with error %s: %s",
                self.remote_address,
                method or (job.event.method if job is not None else "?"),
                answer.code,
                answer.message,
            )
        if data:
            self._answers_made += 1
        return data

    def _answer_written(self) -> None:
        with self._lock:
            if not self._busy():
                self._wake_space()

    def _write_answer(self, data: bytes, wait: float = -1) -> None:
        """Write an answer from ``_answer_locked``: until it is written, the connection is
        not idle (a graceful close waits for it)."""
        if data:
            self._write(data, wait, answer=True)

    def _serve_notification(self, ev: Notification) -> None:
        handler = self._hooks.notifications.get(ev.method)
        if handler is not None and handler.is_async:
            # It begins: the requests that came after it may start now (as in the async
            # adapter, where they start at its first await). A plain function must have
            # finished first (an LSP didChange is applied before the completion after it).
            with self._lock:
                self._notif_unstarted = False
                start = self._pump() if self._line else None
            if start:
                self._start(start)
        try:
            if handler is None:
                log.debug("%s: no handler for notification %r", self.remote_address, ev.method)
            else:
                try:
                    result = call_handler(handler, ev.params, self)
                    if handler.is_async or inspect.isawaitable(result):
                        _run_awaitable(result)
                except (RemoteError, InvalidParams) as exc:
                    log.warning("notification %r from %s: %s", ev.method, self.remote_address, exc)
                except Exception:
                    log.exception("notification handler %r raised", ev.method)
        finally:
            with self._lock:
                self._notifying = self._notif_unstarted = False
                start = self._pump()
                if not start and not self._busy():
                    self._wake_space()
            if start:
                self._start(start)

    # ---- internals: shutdown (driven by the server) ----------------------------------

    def _begin_shutdown(self) -> None:
        """Take no new requests: those not started yet are answered SHUTTING_DOWN."""
        writes = []
        with self._lock:
            self._shutting_down = True
            for item in list(self._line):
                if type(item) is _Job and not item.answered:
                    writes.append(
                        self._answer_locked(
                            item, Error(item.event.id, ErrorCode.SHUTTING_DOWN, "Server is shutting down"), ""
                        )
                    )
            notes = [item for item in self._line if type(item) is not _Job]
            self._line.clear()
            self._line.extend(notes)
            self._wake_space()
        for data in writes:
            self._write_answer(data, _LINGER)

    def _wait_idle(self, deadline: float) -> bool:
        with self._lock:
            while self._busy() and not self._aborted:
                left = deadline - _monotonic()
                if left <= 0:
                    return False
                self._wait_space(left)
        return True

    def _end_shutdown(self) -> None:
        """Answer what is still running with SHUTTING_DOWN (its own answer is dropped)."""
        writes = []
        with self._lock:
            for job in list(self._jobs.values()):
                writes.append(
                    self._answer_locked(
                        job, Error(job.event.id, ErrorCode.SHUTTING_DOWN, "Server is shutting down"), ""
                    )
                )
            self._wake_space()
        for data in writes:
            self._write_answer(data, _LINGER)


# ---- opening connections ---------------------------------------------------------------


def _socket_names(sock: socket.socket) -> tuple[str, str]:
    try:
        local = format_sockaddr(sock.family, sock.getsockname())
    except OSError:
        local = ""
    try:
        peer = format_sockaddr(sock.family, sock.getpeername())
    except OSError:
        peer = ""
    return local, peer


def _open_socket(addr: Address, timeout: float | None) -> socket.socket:
    if addr.kind == "tcp":
        sock = socket.create_connection((addr.host, addr.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(addr.path)
        except BaseException:
            sock.close()
            raise
    return sock


class Client(Hooks):
    """A client whose hooks serve the requests and notifications its peer sends (in a
    pool of up to ``max_workers`` threads shared by its connections).

    ``client.connect(address)`` returns a connected ``Remote``; use it as a context
    manager (``with client.connect(...) as remote:``) or close it yourself.
    """

    def __init__(self, framing: str = "ndjson", **options: Any) -> None:
        super().__init__()
        self.options = Options.build({"framing": framing}, options)
        self._pool: _Pool | None = None
        self._pool_users = 0
        self._pool_lock = threading.Lock()

    def connect(
        self,
        address: str | Address = DEFAULT_ADDRESS,
        *,
        ssl: _ssl.SSLContext | None = None,
        timeout: float | None = None,
        server_hostname: str | None = None,
        **options: Any,
    ) -> Remote:
        """Connect (within ``timeout`` seconds, TLS handshake included) and return the
        ``Remote``. ``ssl``: an ``SSLContext`` for TLS over TCP (``server_hostname``
        defaults to the address's host). Raises ``OSError`` (``ConnectionRefusedError``,
        ``TimeoutError``, ``ssl.SSLError``...) if the connection cannot be made."""
        opts = self.options.replace(**options)
        addr = parse_address(address)
        context = ssl if ssl is not None else opts.ssl
        if addr.kind == "stdio":
            stdio = _PipeTransport(sys.stdin.fileno(), sys.stdout.fileno())
            return self._authenticated(self._attach(stdio, opts, "stdio", "stdio"), opts, timeout)
        sock = _open_socket(addr, timeout)
        try:
            transport: _Transport
            if context is not None:
                if addr.kind != "tcp":
                    raise ValueError("TLS (ssl=) is for tcp:// addresses")
                tls = _TLSTransport(
                    sock, context, server_side=False, server_hostname=server_hostname or addr.host
                )
                tls.handshake(timeout if timeout is not None else _HANDSHAKE_TIMEOUT)
                transport = tls
            else:
                transport = _SocketTransport(sock)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        local, peer = _socket_names(sock)
        remote = self._attach(transport, opts, local, peer or str(addr), peer_credentials(sock))
        return self._authenticated(remote, opts, timeout)

    def connect_subprocess(
        self,
        argv: Sequence[str],
        *,
        framing: str | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stderr: Any = None,
        terminate_timeout: float = 2.0,
        **options: Any,
    ) -> Remote:
        """Start ``argv`` and talk to it over its stdin/stdout; returns the ``Remote``.
        On close: close the child's stdin, wait up to ``terminate_timeout`` seconds for
        it to exit, then terminate it, and kill it if it still runs. ``stderr`` is
        inherited unless given (e.g. ``subprocess.DEVNULL``); the ``Popen`` object is in
        ``remote.data["process"]``."""
        if framing is not None:
            options["framing"] = framing
        opts = self.options.replace(**options)
        if opts.framing == "auto":
            opts = opts.replace(framing="ndjson")
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=cwd,
            env=env,
            bufsize=0,
        )
        assert process.stdin is not None and process.stdout is not None
        transport = _PipeTransport(
            process.stdout.fileno(),
            process.stdin.fileno(),
            close_read=process.stdout.close,
            close_write=process.stdin.close,
        )
        name = f"subprocess:{process.pid}"
        remote = self._attach(transport, opts, "stdio", name, start=False)
        remote.data["process"] = process

        def end() -> None:
            if transport.shutdown_write():  # the child's stdin: EOF, its cue to exit
                _end_process(process, terminate_timeout)
            else:  # a writer is stuck: ending the child unblocks it, then stdin can go
                _end_process(process, 0)
                transport.shutdown_write()
            if not remote._done.wait(terminate_timeout):
                transport.abort()  # a grandchild may hold the pipe open
                remote._done.wait(terminate_timeout)

        remote._finalizers.append(end)
        remote._start_thread()
        return remote

    def _authenticated(self, remote: Remote, opts: Options, timeout: float | None) -> Remote:
        """With ``auth_token``: present it first (as the async adapter does); a refusal
        raises its ``RemoteError`` (the connection is closed)."""
        if opts.auth_token is not None:
            try:
                remote.request(AUTH_METHOD, auth_params(opts.auth_token), timeout=timeout or AUTH_TIMEOUT)
            except BaseException:
                remote.close()
                raise
        return remote

    def _attach(
        self,
        transport: _Transport,
        opts: Options,
        local: str,
        peer: str,
        creds: PeerCredentials | None = None,
        *,
        start: bool = True,
    ) -> Remote:
        pool = self._acquire_pool(opts)
        remote = Remote(
            transport,
            self,
            opts,
            pool,
            local_address=local,
            remote_address=peer,
            peer_credentials=creds,
            caller_reads=True,
        )

        def finished() -> None:
            log.info("connection to %s closed (%s)", remote.remote_address, remote._close_reason)
            self._release_pool()

        remote._on_finish.append(finished)
        log.info("connected to %s", peer)
        if start:
            remote._start_thread()
        return remote

    def _acquire_pool(self, opts: Options) -> _Pool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = _Pool(opts.max_workers, "ezipc-client-worker")
            self._pool_users += 1
            return self._pool

    def _release_pool(self) -> None:
        with self._pool_lock:
            self._pool_users -= 1
            if self._pool_users == 0 and self._pool is not None:
                self._pool.close()
                self._pool = None


def _quietly(close: Callable[[], None]) -> None:
    try:
        close()
    except OSError:
        pass


def _end_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait ``timeout`` seconds for ``process`` to exit, then terminate, then kill it."""
    try:
        process.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    process.terminate()
    try:
        process.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    process.kill()
    process.wait()


def connect(
    address: str | Address = DEFAULT_ADDRESS,
    *,
    framing: str = "ndjson",
    ssl: _ssl.SSLContext | None = None,
    timeout: float | None = None,
    server_hostname: str | None = None,
    **options: Any,
) -> Remote:
    """``with connect(address) as remote:`` — a ``Client`` with no hooks."""
    return Client(framing, **options).connect(
        address, ssl=ssl, timeout=timeout, server_hostname=server_hostname
    )


def connect_subprocess(argv: Sequence[str], *, framing: str = "ndjson", **options: Any) -> Remote:
    """``with connect_subprocess(["prog", "arg"]) as remote:`` — no hooks."""
    keys = ("cwd", "env", "stderr", "terminate_timeout")
    kwargs = {k: options.pop(k) for k in keys if k in options}
    return Client(framing, **options).connect_subprocess(argv, **kwargs)


# ---- the server ----------------------------------------------------------------------


class Server(Hooks):
    """Serves connections with the hooks registered on it, with threads: up to two
    reading threads per connection (a handler may run on the one that read its request
    while the other goes on reading) and a pool of ``max_workers`` threads shared by all
    connections for the rest.

    ``serve_forever(*addresses)`` serves until ``shutdown()`` (from any thread, a handler
    included); ``start(*addresses)`` does the same and also shuts down on SIGINT/SIGTERM
    (main thread); ``serve_in_thread(*addresses)`` serves in a background thread and
    returns the bound addresses (``ready`` is set once listening). No address means
    ``tcp://127.0.0.1:9002``. ``framing="auto"`` (the default) answers each connection in
    the framing it speaks.

    Handlers may be plain functions or ``async def``: a coroutine runs to completion with
    ``asyncio.run`` in the handler's thread (so it cannot share an event loop with
    anything else). A running handler cannot be interrupted: a cancelled or timed-out
    request's handler finishes, and its answer goes through the core (which writes it
    under the LSP profile, where the peer drops it as late, and withholds it under MCP's).
    """

    def __init__(self, framing: str = "auto", **options: Any) -> None:
        super().__init__()
        self.options = Options.build({"framing": framing}, options)
        self._remotes: set[Remote] = set()
        self._lock = threading.Lock()
        self._connections = 0  # accepted and not finished (handshaking included)
        #: The addresses being served (with the real port for port 0), once listening.
        self.addresses: list[str] = []
        #: Set while the server is listening (``addresses`` is then filled in).
        self.ready = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._stop_requested = False
        self._wake_r = self._wake_w = -1
        self._pool: _Pool | None = None
        self._thread: threading.Thread | None = None
        self._serve_ident = 0

    def __repr__(self) -> str:
        return f"<Server {' '.join(self.addresses) or 'not serving'}>"

    @property
    def remotes(self) -> frozenset[Remote]:
        """The connected peers."""
        with self._lock:
            return frozenset(self._remotes)

    # ---- running ---------------------------------------------------------------------

    def start(self, *addresses: str, ready: Callable[[list[str]], Any] | None = None) -> None:
        """Serve until SIGINT or SIGTERM (or ``shutdown()``), then shut down gracefully.
        Blocks. Signals are caught only when called from the main thread.

        ``ready(addresses)``, if given, is called once listening, with the bound addresses
        (e.g. to print the port chosen for ``tcp://127.0.0.1:0``)."""
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, frame: Any) -> None:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                for sig, handler in previous.items():  # a second signal acts as usual
                    signal.signal(sig, handler)
                self.shutdown(wait=False)

            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            self.serve_forever(*addresses, ready=ready)
        finally:
            for sig, handler in previous.items():
                if signal.getsignal(sig) is not handler:
                    signal.signal(sig, handler)

    run = start  # the original EZ-IPC's name for serving

    def serve_in_thread(self, *addresses: str, timeout: float = 10.0) -> list[str]:
        """Serve in a daemon thread; return the bound addresses once listening (raises
        what binding raised). Stop it with ``shutdown()``."""
        errors: list[BaseException] = []

        def main() -> None:
            try:
                self.serve_forever(*addresses)
            except BaseException as exc:
                errors.append(exc)
                self.ready.set()
                if not isinstance(exc, Exception):
                    raise

        self.ready.clear()
        self._thread = threading.Thread(target=main, name="ezipc-server", daemon=True)
        self._thread.start()
        if not self.ready.wait(timeout):
            raise TimeoutError("the server did not start listening in time")
        if errors:
            raise errors[0]
        return list(self.addresses)

    def shutdown(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """Shut down gracefully (from any thread): stop accepting, let requests in flight
        finish within ``shutdown_timeout``, answer the rest with SHUTTING_DOWN, close the
        connections. With ``wait``, block until done (not when called from a handler or
        from the serving thread itself)."""
        with self._lock:
            if self._stopped.is_set():
                return  # not serving
            self._stop_requested = True
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if not wait or _get_ident() == self._serve_ident or getattr(_local, "ours", False):
            return  # a handler (or the serving thread) cannot wait for its own end
        self._stopped.wait(timeout)

    terminate = shutdown

    def serve_forever(self, *addresses: str, ready: Callable[[list[str]], Any] | None = None) -> None:
        """Serve until ``shutdown()``, then shut down gracefully. Blocks. ``ready``: as
        for :meth:`start`."""
        with self._lock:
            if not self._stopped.is_set():
                raise RuntimeError("this server is already serving")
            self._stopped.clear()
            self._stop_requested = False
            self._wake_r, self._wake_w = os.pipe()
        self._serve_ident = _get_ident()
        options = self.options
        parsed = [parse_address(a) for a in (addresses or (DEFAULT_ADDRESS,))]
        listeners: list[tuple[socket.socket, Address]] = []
        unix_paths: list[str] = []
        stdio_thread: threading.Thread | None = None
        self._pool = _Pool(options.max_workers, "ezipc-worker")
        try:
            for addr in parsed:
                if addr.kind == "tcp":
                    listeners += [(sock, addr) for sock in _listen_tcp(addr)]
                elif addr.kind == "unix":
                    listeners.append((_listen_unix(addr.path, options.unix_mode), addr))
                    unix_paths.append(addr.path)
            self.addresses = [format_sockaddr(sock.family, sock.getsockname()) for sock, _ in listeners]
            if any(a.kind == "stdio" for a in parsed):
                self.addresses.append("stdio")
                stdio_thread = threading.Thread(target=self._serve_stdio, name="ezipc-stdio", daemon=True)
            for address in self.addresses:
                log.info("serving on %s", address)
            self.ready.set()
            if ready is not None:
                ready(list(self.addresses))
            if stdio_thread is not None:
                stdio_thread.start()
            self._accept_loop(listeners)
        finally:
            for sock, _ in listeners:
                sock.close()
            for path in unix_paths:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            try:
                self._shut_down_connections()
            finally:
                self._pool.close()
                self._serve_ident = 0
                self.ready.clear()
                log.info("server stopped")
                with self._lock:
                    for fd in (self._wake_r, self._wake_w):
                        os.close(fd)
                    self._wake_r = self._wake_w = -1
                    self._stopped.set()

    def _accept_loop(self, listeners: list[tuple[socket.socket, Address]]) -> None:
        poller = select.poll()
        by_fd: dict[int, tuple[socket.socket, Address]] = {}
        for sock, addr in listeners:
            sock.setblocking(False)
            by_fd[sock.fileno()] = (sock, addr)
            poller.register(sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop_requested:
            for fd, _ in poller.poll():
                if fd == self._wake_r:
                    continue
                sock, addr = by_fd[fd]
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                except OSError as exc:  # EMFILE and friends: do not spin
                    log.warning("accept failed on %s: %s", addr, exc)
                    time.sleep(0.1)
                    continue
                self._accepted(conn, addr)

    def _accepted(self, conn: socket.socket, addr: Address) -> None:
        options = self.options
        conn.setblocking(True)
        creds = peer_credentials(conn)
        if options.allowed_uids is not None and (creds is None or creds.uid not in options.allowed_uids):
            log.warning("refusing a connection on %s: peer credentials %s not allowed", addr, creds)
            conn.close()
            return
        if addr.kind == "tcp":
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            busy = self._connections >= options.max_connections
            if not busy:
                self._connections += 1
        target = self._refuse if busy else self._serve_connection
        thread = threading.Thread(
            target=target, args=(conn, addr, creds), name="ezipc-connection", daemon=True
        )
        thread.start()

    def _transport(self, conn: socket.socket, addr: Address) -> _Transport:
        if self.options.ssl is not None and addr.kind == "tcp":
            tls = _TLSTransport(conn, self.options.ssl, server_side=True, server_hostname=None)
            tls.handshake(self.options.message_timeout or _HANDSHAKE_TIMEOUT)
            return tls
        return _SocketTransport(conn)

    def _refuse(self, conn: socket.socket, addr: Address, creds: PeerCredentials | None) -> None:
        log.warning(
            "refusing a connection on %s: max_connections (%d) reached", addr, self.options.max_connections
        )
        try:
            transport = self._transport(conn, addr)
            body = self.options.connection().send(Error(None, ErrorCode.SERVER_BUSY, "Too many connections"))
            conn.settimeout(1.0)
            with transport.wlock:
                transport.send(body)
            transport.shutdown_write()
            deadline = _monotonic() + 1.0  # let the peer read it before we go (no RST)
            while _monotonic() < deadline and conn.recv(_READ_SIZE):
                pass
        except (OSError, _ssl.SSLError, ValueError):
            pass
        finally:
            conn.close()

    def _serve_connection(self, conn: socket.socket, addr: Address, creds: PeerCredentials | None) -> None:
        try:
            try:
                transport = self._transport(conn, addr)
            except (OSError, _ssl.SSLError, ValueError) as exc:
                log.warning("TLS handshake with %s failed: %s", _socket_names(conn)[1] or addr, exc)
                conn.close()
                return
            local, peer = _socket_names(conn)
            if peer == "unix:" and creds is not None:
                peer = f"unix:pid={creds.pid},uid={creds.uid}"
            self._serve(transport, local, peer or f"{addr}", creds)
        finally:
            with self._lock:
                self._connections -= 1

    def _serve(self, transport: _Transport, local: str, peer: str, creds: PeerCredentials | None) -> None:
        assert self._pool is not None
        remote = Remote(
            transport,
            self,
            self.options,
            self._pool,
            server=self,
            local_address=local,
            remote_address=peer,
            peer_credentials=creds,
        )
        with self._lock:
            self._remotes.add(remote)
        log.info("connection from %s", peer)

        def finished() -> None:
            # Once the connection has ended (its disconnect hooks ran), not when this
            # thread is free: it may still be running a handler that cannot be stopped.
            with self._lock:
                if remote not in self._remotes:
                    return
                self._remotes.discard(remote)
            log.info("connection from %s closed (%s)", peer, remote._close_reason)

        remote._on_finish.append(finished)
        try:
            if self._stop_requested:
                remote._abort("server shut down")
            remote._run()
        finally:
            finished()

    def _serve_stdio(self) -> None:
        if self.options.allowed_uids is not None:  # (no credentials: fail closed)
            log.warning("refusing stdio: peer credentials None not allowed")
            self.shutdown(wait=False)
            return
        with self._lock:
            self._connections += 1
        try:
            self._serve(_PipeTransport(sys.stdin.fileno(), sys.stdout.fileno()), "stdio", "stdio", None)
        finally:
            with self._lock:
                self._connections -= 1
        self.shutdown(wait=False)  # stdin is closed: nothing more can come

    def _shut_down_connections(self) -> None:
        remotes = list(self.remotes)
        grace = self.options.shutdown_timeout
        if remotes:
            log.info("shutting down: %d connection(s), up to %.1fs for work in flight", len(remotes), grace)
        for remote in remotes:
            remote._begin_shutdown()
        deadline = _monotonic() + grace
        for remote in remotes:
            remote._wait_idle(deadline)
        for remote in remotes:
            remote._end_shutdown()
        closers = [
            threading.Thread(target=remote._close_gracefully, args=(_LINGER,), daemon=True)
            for remote in remotes
        ]
        for thread in closers:
            thread.start()
        for thread in closers:
            thread.join()
        # Connections still handshaking (or accepted just now) end on their own: abort them.
        deadline = _monotonic() + _LINGER
        while _monotonic() < deadline:
            with self._lock:
                if not self._connections:
                    break
                late = list(self._remotes)
            for remote in late:
                remote._abort("server shut down")
            time.sleep(0.01)

    # ---- calling every peer ----------------------------------------------------------

    def _audience(self, exclude: Remote | Iterable[Remote] | None) -> list[Remote]:
        """Connected (and authenticated) peers, minus ``exclude``."""
        skip = {exclude} if isinstance(exclude, Remote) else set(exclude or ())
        return [r for r in self.remotes if not r._auth_pending and not r.closed and r not in skip]

    def broadcast(
        self, method: str, params: Any = None, *, exclude: Remote | Iterable[Remote] | None = None
    ) -> None:
        """Notify every connected peer (but those in ``exclude``, e.g. the sender; one
        whose connection fails is skipped)."""
        for remote in self._audience(exclude):
            if not remote.closed:
                try:
                    remote.notify(method, params)
                except ConnectionClosed:
                    pass

    def broadcast_request(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = None,
        exclude: Remote | Iterable[Remote] | None = None,
    ) -> dict[Remote, Any]:
        """Call every connected peer at once; map each ``Remote`` to its result or to the
        exception its call ended with."""
        futures: dict[Remote, Future[Any] | BaseException] = {}
        for remote in self._audience(exclude):
            try:
                futures[remote] = remote.submit(method, params, timeout=timeout)
            except (ConnectionClosed, LimitExceeded) as exc:
                futures[remote] = exc
        results: dict[Remote, Any] = {}
        for remote, future in futures.items():
            if isinstance(future, BaseException):
                results[remote] = future
                continue
            try:
                results[remote] = future.result()
            except Exception as exc:
                results[remote] = exc
        return results

    bcast_notif = broadcast  # the original EZ-IPC's names
    bcast_request = broadcast_request


def _listen_tcp(addr: Address) -> list[socket.socket]:
    """Listening sockets for every address ``addr.host`` resolves to (one port for all)."""
    infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    port = addr.port
    seen = set()
    try:
        for family, _, _, _, sockaddr in infos:
            if (family, sockaddr[0]) in seen:
                continue
            seen.add((family, sockaddr[0]))
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                if os.name == "posix":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((sockaddr[0], port, *sockaddr[2:]))
                sock.listen(socket.SOMAXCONN)
            except BaseException:
                sock.close()
                raise
            port = sock.getsockname()[1]
            socks.append(sock)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _listen_unix(path: str, mode: int) -> socket.socket:
    free_unix_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)  # before listen(): nobody can connect in between
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return sock
