"""The blocking driver: an ``ezipc_proto.Session`` per connection, over plain sockets and
pipes, with threads and no event loop.

* I/O: one thread waits on every connection with ``selectors`` (``_blocking_io.Loop``),
  reads, feeds the sessions and keeps their timers: a server's is the thread that runs
  ``serve_forever``; the process's blocking clients share one. It never runs a handler.
* Handlers run in a ``concurrent.futures`` pool (``max_workers`` threads per server or
  client). A handler that takes a ``cancelled`` parameter gets a ``threading.Event``,
  set when the peer cancels the request or the connection ends.
* Writing: whoever made bytes (the I/O thread, a handler, a caller of ``request``) sends
  them at once, without blocking, under the connection's lock. What the socket does not
  take waits for the I/O thread, and meanwhile nothing more is taken from the session, so
  its ``write_buffer_size`` bounds what we hold.
* A caller of ``request`` sleeps on a lock of its own, which the I/O thread releases.

Every decision is the session's: this module moves bytes, runs handlers, keeps the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import math
import os
import select
import signal
import socket
import ssl as _ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

from ezipc_proto import (
    AUTH_METHOD,
    AUTH_TIMEOUT,
    FLUSH_TIMEOUT,
    NEED_DATA,
    PAUSED,
    Connected,
    Interrupt,
    Job,
    JobState,
    RemoteError,
    Settle,
)

from ._address import DEFAULT_ADDRESS, WEB_KINDS, Address, parse_address
from ._blocking_io import Loop, PipeStream, SocketStream, Stream, TLSStream, monotonic
from ._options import Options, Stats
from ._peer import PeerCredentials, format_sockaddr, peer_credentials
from ._registry import Handler, Hooks, call_handler, log, not_found
from ._serving import ConnectError, ServerBase, announcing, listen_sockets

__all__ = ["Remote", "Client", "Server", "connect", "connect_subprocess"]

_LINGER = 2.0  # how long a closed connection reads on, for the peer's EOF (no reset)
_HOOK_TIMEOUT = 10.0  # how long close() waits for the connection to end
_HANDSHAKE_TIMEOUT = 10.0  # a TLS handshake, unless a connect timeout is given
_local = threading.local()  # .ours: a thread of ours (a worker, or an I/O thread)


class _Waiter:
    """A caller of ``request`` sleeps on ``lock`` until the I/O thread settles it (or,
    reading its answer itself, until ``done``)."""

    __slots__ = ("lock", "result", "error", "done", "wake")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.wake: Callable[[], None] | None = None  # the caller reads: wake it from its wait

    def _settle(self, result: Any, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self.done = True
        self.lock.release()
        if self.wake is not None:
            self.wake()

    def _finished(self) -> bool:
        return self.done


class _CallFuture(Future[Any]):
    """What ``submit`` returns: a ``concurrent.futures.Future`` whose ``result()`` (and
    ``exception()``) reads the answer itself when it can, as a caller of ``request``
    does; ``callback`` runs in a worker."""

    def __init__(self, remote: Remote, callback: Callable[[Future[Any]], Any] | None) -> None:
        super().__init__()
        self._remote = remote
        self._callback = callback
        self.wake: Callable[[], None] | None = None

    def _finished(self) -> bool:
        return self.done()

    def _settle(self, result: Any, error: BaseException | None) -> None:
        try:
            if error is None:
                self.set_result(result)
            else:
                self.set_exception(error)
        except Exception:  # cancelled by its owner meanwhile
            return
        if self.wake is not None:
            self.wake()
        if self._callback is not None:
            self._remote._submit(self._callback, self)

    def result(self, timeout: float | None = None) -> Any:
        return super().result(self._read(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._read(timeout))

    def _read(self, timeout: float | None) -> float | None:
        """Read for it (if it may); the time left of ``timeout``."""
        remote = self._remote
        if self.done() or not remote._caller_may_read or threading.get_ident() == remote._loop.ident:
            return timeout
        deadline = None if timeout is None else monotonic() + timeout
        remote._read_for(self, deadline)
        return None if deadline is None else max(0.0, deadline - monotonic())


def _run_awaitable(value: Any) -> Any:
    """An async handler's result, computed in this (worker) thread with asyncio.run."""
    if inspect.iscoroutine(value):
        return asyncio.run(value)

    async def wait() -> Any:
        return await value

    return asyncio.run(wait())


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
        stream: Stream,
        hooks: Hooks,
        options: Options,
        pool: ThreadPoolExecutor,
        loop: Loop,
        *,
        server: Server | None = None,
        framing: str | None = None,
        local_address: str = "",
        remote_address: str = "",
        peer_credentials: PeerCredentials | None = None,
    ) -> None:
        self._stream = stream
        self._hooks = hooks
        self.options = options
        self.server = server
        self._pool = pool
        self._loop = loop
        self.data: dict[str, Any] = {}
        self.local_address = local_address
        self.remote_address = remote_address
        self.peer_certificate: dict[str, Any] | None = stream.peer_certificate()
        self.peer_credentials = peer_credentials
        self._lock = threading.Lock()  # the session, and the stream's writing side
        self._session = options.session(
            now=monotonic(), name=remote_address, server=server is not None, framing=framing or stream.framing
        )
        self._paused = False  # the session said PAUSED: no reading until our output drains
        self._writing = False  # a thread sends, outside the lock (see _take_output_locked)
        self._combine = type(stream) is SocketStream or type(stream) is PipeStream
        # A caller of request() may read its own answer (a plain socket; one caller at a
        # time): a thread hop less, about 50 µs of a sequential call here.
        self._caller_may_read = type(stream) is SocketStream
        self._caller_reading: _Waiter | _CallFuture | None = None
        self._reader_ident = 0
        self._wake_pipe: tuple[int, int] | None = None
        self._poller: Any = None  # (select.poll: made once)
        self._watching = (False, False)  # what the loop watches: (readable, writable)
        self._timer_at = math.inf
        self._closing = False
        self._flush_deadline: float | None = None
        self._ended = False
        self._lost = False  # the connection broke: no flush, no linger
        self._done = threading.Event()
        self._finalizers: list[Callable[[], None]] = []  # close(): end a subprocess
        self._on_finish: list[Callable[[], None]] = []  # once the connection has ended

    def __repr__(self) -> str:
        return f"<Remote {self.remote_address} {'closed' if self.closed else 'open'}>"

    def __enter__(self) -> Remote:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def stats(self) -> Stats:
        """Counters of this connection (a live object)."""
        return self._session.stats

    @property
    def closed(self) -> bool:
        """True once no more requests can be made (closed, or the peer sends nothing more)."""
        return not self._session.can_request

    @property
    def admitted(self) -> bool:
        """False while the server waits for this peer's authentication token."""
        return self._session.admitted

    @property
    def framing(self) -> str:
        return self._session.framing

    # ---- calling the peer ------------------------------------------------------------

    def request(self, method: str, params: Any = None, *, timeout: float | None = None) -> Any:
        """Call ``method`` and wait for its result.

        Raises ``RemoteError`` (an error answer), ``TimeoutError`` (no answer within
        ``timeout`` seconds, default ``request_timeout``; the peer is told to cancel),
        ``ConnectionClosed`` (the connection ended first) or ``LimitExceeded``
        (``max_pending`` requests already await answers; nothing was sent). If the wait
        is interrupted (e.g. KeyboardInterrupt), the peer is told to cancel as well."""
        if threading.get_ident() == self._loop.ident:
            raise RuntimeError(
                "request() would deadlock on the connection's I/O thread; "
                "use submit(), or call from another thread"
            )
        waiter = _Waiter()
        id = self._call(lambda s: s.request(method, params, now=monotonic(), timeout=timeout, waiter=waiter))
        try:
            if self._caller_may_read:
                self._read_for(waiter)
            waiter.lock.acquire()
        except BaseException:
            self._cancel(id)
            raise
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

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
        worker thread when it finishes, however it finishes. Cancelling the future tells
        the peer to cancel. Callbacks added with ``future.add_done_callback`` run on the
        thread that completes the future (often the I/O thread): keep them short and
        never wait in them."""
        future = _CallFuture(self, callback)
        id = self._call(lambda s: s.request(method, params, now=monotonic(), timeout=timeout, waiter=future))

        def cancelled(future: Future[Any]) -> None:
            if future.cancelled():
                self._cancel(id)
                if callback is not None:
                    self._submit(callback, future)

        future.add_done_callback(cancelled)
        return future

    def _call_soon(self, method: str, params: Any, timeout: float | None) -> Future[Any]:
        return self.submit(method, params, timeout=timeout)

    def notify(self, method: str, params: Any = None) -> None:
        """Send a notification (no answer). Allowed after the peer's EOF (it may still
        read), until the connection closes."""
        self._call(lambda s: s.notify(method, params, now=monotonic()))

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
        calls = [(method, params, _Waiter()) for method, params in requests]
        notes = list(notify)
        ids = self._call(lambda s: s.batch(calls, notes, now=monotonic(), timeout=timeout))
        results: list[Any] = []
        try:
            for _, _, waiter in calls:
                waiter.lock.acquire()
                if waiter.error is None or isinstance(waiter.error, RemoteError):
                    results.append(waiter.error or waiter.result)
                else:
                    raise waiter.error
        except BaseException:
            for id in ids:
                self._cancel(id)
            raise
        return results

    def close(self, reason: str = "closed locally") -> None:
        """Close now: pending calls fail with ``ConnectionClosed``, answers still being
        computed are dropped, what is queued is written (briefly). Waits (briefly) until
        the connection has ended, unless called from its I/O thread. (A subprocess is
        ended then: see ``Client.connect_subprocess``.)"""
        self._call(lambda s: s.close(reason, monotonic()))
        if threading.get_ident() != self._loop.ident:
            self._done.wait(_HOOK_TIMEOUT)
        finalizers, self._finalizers = self._finalizers, []
        for finalizer in finalizers:
            finalizer()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the connection has ended (True), or ``timeout`` seconds (False)."""
        return self._done.wait(timeout)

    def _cancel(self, id: Any) -> None:
        self._call(lambda s: s.cancel(id, monotonic()))

    # ---- driving the session (any thread) --------------------------------------------

    def _call(self, action: Callable[[Any], Any]) -> Any:
        """Do ``action(session)`` under the lock, then act on what the session says (in
        the same turn of the lock: one acquisition less per call, which matters when
        many threads share a connection)."""
        return self._kick(action)

    def _kick(self, action: Callable[[Any], Any] | None = None) -> Any:
        """Do what the session says until it needs bytes or our output to drain; write
        what it produced; keep the loop watching what it should. ``action(session)``
        first, if given (its result is returned)."""
        session = self._session
        result = None
        while True:
            with self._lock:
                if action is not None:
                    result = action(session)
                    action = None
                events = []
                while True:
                    ev = session.next_event()
                    if ev is NEED_DATA:
                        self._paused = False
                        break
                    if ev is PAUSED:
                        if not self._writing:
                            self._write_locked()  # (takes the session's output if the stream is empty)
                        if session.output_size <= session.write_buffer_size:
                            continue
                        self._paused = True
                        break
                    events.append(ev)
                out = self._take_output_locked()
                at = session.get_timer()
                schedule = at is not None and at < self._timer_at
                if schedule:
                    self._timer_at = at  # type: ignore[assignment]
                wanted = self._wanted_locked()
            if out:
                self._send_out(out)
            if schedule:
                self._loop.call_at(at, self._on_timer)  # type: ignore[arg-type]
            if wanted != self._watching:
                self._watch()
            if not events:
                return result
            for ev in events:
                self._dispatch(ev)

    def _take_output_locked(self) -> bytes:
        """What this thread is to send, outside the lock (plain sockets and pipes; b"" if
        another thread is sending: it takes this output too before it stops, so that
        many handlers finishing at once make a few large writes, not many small ones).
        A TLS stream is written here, under the lock (its SSL object is shared with the
        reading side)."""
        if self._writing or self._ended:
            return b""
        if not self._combine or self._stream.backlog():
            self._write_locked()
            return b""
        data = self._session.data_to_send()
        if data:
            self._writing = True
        return data

    def _send_out(self, data: bytes) -> None:
        """Send ``data``, then whatever others produced meanwhile (this thread writes)."""
        stream, session = self._stream, self._session
        while True:
            try:
                stream.write(data)
                failed = None
            except OSError as exc:
                failed = exc
            with self._lock:
                if failed is not None:
                    self._lost = True
                    session.close(f"write failed: {failed!r}", monotonic(), abort=True)
                data = b"" if failed is not None or stream.backlog() else session.data_to_send()
                if not data:
                    self._writing = False  # (a backlog is for the loop to write when it can)
                    wanted = self._wanted_locked()
                    break
        if failed is not None:
            self._kick()
        elif wanted != self._watching:
            self._watch()
        if self._closing:
            self._in_loop(self._finish_writing)  # (it waited for this writer)

    def _write_locked(self) -> None:
        stream, session = self._stream, self._session
        if self._ended or self._writing:  # (the linger owns the stream now; or a writer does)
            return
        try:
            if not stream.backlog():
                data = session.data_to_send()
                if data:
                    stream.write(data)
            else:
                stream.flush()
        except OSError as exc:
            self._lost = True
            session.close(f"write failed: {exc!r}", monotonic(), abort=True)

    def _dispatch(self, ev: Any) -> None:
        kind = type(ev)
        if kind is Settle:
            ev.waiter._settle(ev.result, ev.error)
        elif kind is Job:
            handlers = self._hooks.notifications if ev.notification else self._hooks.requests
            handler = handlers.get(ev.method)
            token = threading.Event() if handler is not None and handler.wants_cancelled else None
            ev.context = token
            self._submit(self._serve, ev, handler, token)
        elif kind is Interrupt:
            if ev.job.context is not None:
                ev.job.context.set()
        elif kind is Connected:
            if self._hooks.on_connect:
                self._submit(self._connect_hooks)
            else:
                with self._lock:
                    self._session.start(monotonic())
        else:  # Close
            self._closing = True
            self._in_loop(self._finish_writing)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._pool.submit(fn, *args)
        except RuntimeError:  # the pool is shut down: the server or client is going away
            with self._lock:
                self._session.close("shut down", monotonic())

    def _in_loop(self, fn: Callable[[], None]) -> None:
        if threading.get_ident() == self._loop.ident:
            fn()
        else:
            self._loop.call_soon(fn)

    # ---- handlers (worker threads) ---------------------------------------------------

    def _serve(self, job: Job, handler: Handler | None, token: threading.Event | None) -> None:
        if job.state is JobState.INTERRUPTED:  # answered while it waited for a worker
            self._call(lambda s: s.fail(job, RemoteError(0, "not run"), monotonic()))
            return
        if handler is None:
            if job.notification:
                log.debug("%s: no handler for notification %r", self.remote_address, job.method)
                self._call(lambda s: s.answer(job, None, monotonic()))
            else:
                self._call(lambda s: s.fail(job, not_found(job.method), monotonic()))
            return
        if job.notification and handler.is_async:
            # It begins: the requests that came after it may start now (as in the async
            # driver, where they start at its first step). A plain function must have
            # finished first (an LSP didChange is applied before the completion after it).
            self._call(lambda s: s.started(job, monotonic()))
        try:
            result = call_handler(handler, job.params, self, token)
            if handler.is_async or inspect.isawaitable(result):
                result = _run_awaitable(result)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt too: answered, then raised
            failure = exc
            self._call(lambda s: s.fail(job, failure, monotonic()))
            if not isinstance(exc, Exception):
                raise
        else:
            self._call(lambda s: s.answer(job, result, monotonic()))

    def _connect_hooks(self) -> None:
        try:
            for hook in self._hooks.on_connect:
                result = hook(self)
                if inspect.isawaitable(result):
                    _run_awaitable(result)
        except Exception:
            log.exception("connect hook failed for %s: closing", self.remote_address)
            self._call(lambda s: s.close("rejected by a connect hook", monotonic()))
        else:
            self._call(lambda s: s.start(monotonic()))

    # ---- the I/O thread ----------------------------------------------------------------

    def _begin(self) -> None:
        """Start being served by the loop (on its thread). Read at once: a TLS handshake
        may have taken the peer's first message with it."""
        self._kick()
        self._loop.call_soon(self._on_readable)

    def _wanted_locked(self) -> tuple[bool, bool]:
        """What the loop should watch: (readable, writable)."""
        return (
            self._session.reading and not self._paused and not self._closing and self._caller_reading is None,
            self._stream.backlog() > 0,
        )

    def _watch(self) -> None:
        """Make the loop watch what it should (from any thread)."""
        with self._lock:
            if self._ended:  # (its descriptors may be another connection's by now)
                return
            wanted = self._wanted_locked()
            if wanted == self._watching:
                return
            self._watching = wanted
            self._apply_watch(wanted)

    def _apply_watch(self, wanted: tuple[bool, bool]) -> None:
        stream = self._stream
        read = self._on_readable if wanted[0] else None
        write = self._on_writable if wanted[1] else None
        if stream.rfd == stream.wfd:
            self._loop.watch(stream.rfd, read=read, write=write)
            return
        if stream.selectable:
            self._loop.watch(stream.rfd, read=read)
        elif wanted[0]:
            self._loop.call_soon(self._on_readable)  # a regular file: always readable
        if not self._loop.watch(stream.wfd, write=write) and write is not None:
            self._loop.call_soon(self._on_writable)  # a regular file: always writable

    def _read_for(self, waiter: _Waiter | _CallFuture, deadline: float | None = None) -> None:
        """A caller waits for ``waiter``: it reads the socket itself (the loop stands
        aside), unless another caller does already; it returns once ``waiter`` is
        settled (however: its answer, a timeout from the loop's timer, a close) or the
        ``deadline`` has passed."""
        with self._lock:
            if self._caller_reading is not None or not self._session.reading or self._ended:
                return
            self._caller_reading = waiter
            self._reader_ident = threading.get_ident()
            if self._poller is None:
                self._wake_pipe = os.pipe()
                self._poller = select.poll()
                self._poller.register(self._stream.rfd, select.POLLIN)
                self._poller.register(self._wake_pipe[0], select.POLLIN)
            wake_r, poller = self._wake_pipe[0], self._poller  # type: ignore[index]
        self._watch()  # the loop stops reading this socket
        waiter.wake = self._wake_reader
        try:
            while not waiter._finished():
                wait = None if deadline is None else max(0.0, deadline - monotonic()) * 1000
                ready = poller.poll(wait)
                if not ready and deadline is not None:
                    break  # (the time given is up)
                for fd, _ in ready:
                    if fd == wake_r:
                        os.read(wake_r, 64)
                    else:
                        self._on_readable()
                if self._io_over():
                    break  # (settled by the close: the lock says so)
        finally:
            waiter.wake = None
            with self._lock:
                self._caller_reading = None
                if self._io_over():  # (nobody will wake a reader now)
                    self._close_wake_pipe()
            self._watch()  # the loop reads again

    def _io_over(self) -> bool:
        return self._ended or not self._session.reading

    def _wake_reader(self) -> None:
        """The caller reading for itself waits in poll(): its call was settled elsewhere."""
        if threading.get_ident() == self._reader_ident:
            return  # (it settled it itself)
        with self._lock:
            if self._wake_pipe is not None:
                _quietly(os.write, self._wake_pipe[1], b"x")

    def _close_wake_pipe(self) -> None:  # under the lock
        if self._wake_pipe is not None:
            for fd in self._wake_pipe:
                _quietly(os.close, fd)
            self._wake_pipe = self._poller = None

    def _on_readable(self) -> None:
        if self._ended:
            return
        session = self._session
        with self._lock:
            if not session.reading or self._paused:
                return
            try:
                data = self._stream.recv()
            except OSError:  # reset or closed under us: nobody reads our answers now
                self._lost = True
                session.close("connection lost", monotonic(), abort=True)
            else:
                if data is not None:
                    session.receive_data(data, monotonic())
        self._kick()
        stream = self._stream
        if (stream.buffered() or not stream.selectable) and session.reading and not self._paused:
            self._loop.call_soon(self._on_readable)  # (no readiness will tell of it)

    def _on_writable(self) -> None:
        if self._ended:
            return
        if self._closing:
            self._finish_writing()
        else:
            self._kick()

    def _on_timer(self, now: float) -> None:
        with self._lock:
            if now >= self._timer_at:
                self._timer_at = math.inf
            self._session.handle_timer(now)
        self._kick()

    def _finish_writing(self) -> None:
        """Closed: write what is left (for up to FLUSH_TIMEOUT), then linger, then end."""
        if self._flush_deadline is None:
            self._flush_deadline = monotonic() + FLUSH_TIMEOUT
            self._loop.call_at(self._flush_deadline, lambda now: self._finish_writing())
        with self._lock:
            self._write_locked()
            left = self._stream.backlog() or self._writing or self._session.output_size
        if left and not self._lost and monotonic() < self._flush_deadline and not self._ended:
            self._watch()
            return
        with self._lock:
            if self._ended:
                return
            self._ended = True  # the loop no longer serves it: only the linger reads on
            self._loop.watch(self._stream.rfd, read=None, write=None)
            self._loop.watch(self._stream.wfd, read=None, write=None)
        if self._lost or left:  # (what could not be written in time is lost anyway)
            self._end()
        else:
            _linger(self._loop, self._stream, _LINGER, self._end, self._lock)

    def _end(self) -> None:
        try:
            self._stream.close()
        except OSError:
            pass
        with self._lock:
            if self._caller_reading is None:  # (else the reader closes it on its way out)
                self._close_wake_pipe()
        try:
            self._pool.submit(self._disconnect_hooks)
        except RuntimeError:  # the pool is shut down
            threading.Thread(target=self._disconnect_hooks, daemon=True).start()

    def _disconnect_hooks(self) -> None:
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


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except OSError:
        pass


def _linger(
    loop: Loop, stream: Stream, seconds: float, then: Callable[[], None], lock: threading.Lock | None = None
) -> None:
    """Say we are done writing, and read (discarding) until the peer's EOF or for
    ``seconds``: closing with its bytes unread would reset the connection, and the peer
    could lose our last answers. Then ``then()`` (on the loop thread). ``lock`` guards
    the stream (a TLS stream's state) against other threads."""
    with lock or contextlib.nullcontext():
        stream.shutdown_write()
    done = False

    def finish(now: float = 0.0) -> None:
        nonlocal done
        if not done:
            done = True
            loop.watch(stream.rfd, read=None)
            then()

    def readable() -> None:
        try:
            with lock or contextlib.nullcontext():
                while (data := stream.recv()) is not None and data:
                    pass
        except (OSError, ValueError):
            data = b""
        if data is not None:  # EOF (or an error): done
            finish()

    if not stream.selectable or not loop.watch(stream.rfd, read=readable):
        finish()
        return
    loop.call_at(monotonic() + seconds, finish)


# ---- clients ---------------------------------------------------------------------------

_client_loop: Loop | None = None
_client_loop_lock = threading.Lock()


def _shared_loop() -> Loop:
    """The I/O thread of every blocking client in this process (started on first use)."""
    global _client_loop
    with _client_loop_lock:
        if _client_loop is None:
            _client_loop = Loop("ezipc-client-io")
            _client_loop.start_thread()
        return _client_loop


def _mark_ours() -> None:
    _local.ours = True


def _open_socket(addr: Address, timeout: float | None) -> socket.socket:
    if addr.kind == "tcp":
        sock = socket.create_connection((addr.host, addr.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(addr.path)
    except BaseException:
        sock.close()
        raise
    return sock


def _handshake(stream: TLSStream, deadline: float) -> None:
    """Drive a client's TLS handshake to the end, waiting on the socket (this thread)."""
    import select

    while not stream.handshake():
        left = deadline - monotonic()
        if left <= 0 or not select.select([stream.sock], [], [], left)[0]:
            raise TimeoutError("the TLS handshake did not complete in time")


def _names(sock: socket.socket) -> tuple[str, str]:
    def name(get: Callable[[], Any]) -> str:
        try:
            return format_sockaddr(sock.family, get())
        except OSError:
            return ""

    return name(sock.getsockname), name(sock.getpeername)


class Client(Hooks):
    """A client whose hooks serve the requests and notifications its peer sends (in a
    pool of up to ``max_workers`` threads shared by its connections).

    ``client.connect(address)`` returns a connected ``Remote``; use it as a context
    manager (``with client.connect(...) as remote:``) or close it yourself.
    """

    def __init__(self, framing: str = "ndjson", **options: Any) -> None:
        super().__init__()
        self.options = Options.build({"framing": framing}, options)
        self._pool: ThreadPoolExecutor | None = None
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
        defaults to the address's host). Raises ``ConnectError`` (naming the address) if
        the connection cannot be made."""
        opts = self.options.replace(**options)
        addr = parse_address(address)
        context = ssl if ssl is not None else opts.ssl
        if addr.kind == "stdio":
            stdio = PipeStream(sys.stdin.fileno(), sys.stdout.fileno())
            return self._authenticated(self._attach(stdio, opts, "stdio", "stdio"), opts, timeout)
        if addr.kind in WEB_KINDS:
            from ._web_blocking import open_web_stream  # (wsproto and h11: the web extra)

            web = open_web_stream(addr, opts, context, timeout, server_hostname)
            return self._authenticated(self._attach(web, opts, web.local, str(addr)), opts, timeout)
        if context is not None and addr.kind != "tcp":
            raise ValueError("TLS (ssl=) is for tcp:// addresses")
        try:
            sock = _open_socket(addr, timeout)
        except OSError as exc:
            raise ConnectError.from_error(str(addr), exc) from exc
        local, peer = _names(sock)
        stream: Stream
        try:
            if context is not None:
                stream = TLSStream(
                    sock, context, server_side=False, server_hostname=server_hostname or addr.host
                )
                _handshake(stream, monotonic() + (timeout if timeout is not None else _HANDSHAKE_TIMEOUT))
            else:
                stream = SocketStream(sock)
        except (OSError, ValueError) as exc:
            sock.close()
            raise ConnectError.from_error(str(addr), exc) from exc
        remote = self._attach(stream, opts, local, peer or str(addr), peer_credentials(sock))
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
        stream = PipeStream(
            process.stdout.fileno(),
            process.stdin.fileno(),
            close_read=process.stdout.close,
            close_write=process.stdin.close,
        )
        remote = self._attach(stream, opts, "stdio", f"subprocess:{process.pid}")
        remote.data["process"] = process
        remote._finalizers.append(lambda: _end_process(process, terminate_timeout))
        return remote

    def _authenticated(self, remote: Remote, opts: Options, timeout: float | None) -> Remote:
        """With ``auth_token``: present it first; a refusal raises its ``RemoteError``
        (the connection is closed)."""
        if opts.auth_token is not None and not remote._stream.presents_token:
            try:
                remote.request(AUTH_METHOD, {"token": opts.auth_token}, timeout=timeout or AUTH_TIMEOUT)
            except BaseException:
                remote.close()
                raise
        return remote

    def _attach(
        self, stream: Stream, opts: Options, local: str, peer: str, creds: PeerCredentials | None = None
    ) -> Remote:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    opts.max_workers, "ezipc-client-worker", initializer=_mark_ours
                )
            self._pool_users += 1
            pool = self._pool
        loop = _shared_loop()
        remote = Remote(
            stream, self, opts, pool, loop, local_address=local, remote_address=peer, peer_credentials=creds
        )

        def finished() -> None:
            log.info("connection to %s closed (%s)", remote.remote_address, remote._session.close_reason)
            with self._pool_lock:
                self._pool_users -= 1
                if self._pool_users == 0 and self._pool is not None:
                    self._pool.shutdown(wait=False)
                    self._pool = None

        remote._on_finish.append(finished)
        log.info("connected to %s", peer)
        loop.call_soon(remote._begin)
        return remote


def _end_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait ``timeout`` seconds for ``process`` to exit, then terminate, then kill it."""
    try:
        process.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
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
    """``with connect(address) as remote:``, a ``Client`` with no hooks."""
    return Client(framing, **options).connect(
        address, ssl=ssl, timeout=timeout, server_hostname=server_hostname
    )


def connect_subprocess(argv: Sequence[str], *, framing: str = "ndjson", **options: Any) -> Remote:
    """``with connect_subprocess(["prog", "arg"]) as remote:``, with no hooks."""
    keys = ("cwd", "env", "stderr", "terminate_timeout")
    kwargs = {k: options.pop(k) for k in keys if k in options}
    return Client(framing, **options).connect_subprocess(argv, **kwargs)


# ---- the server ----------------------------------------------------------------------


class Server(ServerBase[Remote]):
    """Serves connections with the hooks registered on it: one I/O thread (the one that
    serves) for every connection, and a pool of ``max_workers`` threads for handlers.

    ``serve_forever(*addresses)`` serves until ``shutdown()`` (from any thread, a handler
    included); ``start(*addresses)`` does the same and also shuts down on SIGINT/SIGTERM
    (main thread); ``serve_in_thread(*addresses)`` serves in a background thread and
    returns the bound addresses (``ready`` is set once listening). No address means
    ``tcp://127.0.0.1:9002``. ``framing="auto"`` (the default) answers each connection in
    the framing it speaks.

    Handlers may be plain functions or ``async def`` (a coroutine runs to completion with
    ``asyncio.run`` in the handler's thread). A running handler cannot be interrupted;
    one that takes a ``cancelled`` parameter gets a ``threading.Event`` to look at.
    """

    def __init__(self, framing: str = "auto", **options: Any) -> None:
        super().__init__(framing, **options)
        #: Set while the server is listening (``addresses`` is then filled in).
        self.ready = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._state_lock = threading.Lock()
        self._loop: Loop | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._connections = 0  # accepted and not ended (handshaking included)
        self._shutting_down = False
        self._listeners: list[socket.socket] = []

    # ---- running ---------------------------------------------------------------------

    def start(self, *addresses: str, ready: Callable[[list[str]], Any] | None = None) -> None:
        """Serve until SIGINT or SIGTERM (or ``shutdown()``), then shut down gracefully.
        Blocks. Signals are caught only when called from the main thread. Where it
        listens is logged (on stderr, unless the application set up logging).

        ``ready(addresses)``, if given, is called once listening, with the bound addresses
        (e.g. to print the port chosen for ``tcp://127.0.0.1:0``)."""
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, frame: Any) -> None:
                self._log_signal(signum)
                for sig, handler in previous.items():  # a second signal acts as usual
                    signal.signal(sig, handler)
                self.shutdown(wait=False)

            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            with announcing():
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
        with self._state_lock:
            if self._stopped.is_set() or self._loop is None:
                return  # not serving
            self._loop.call_soon(self._begin_shutdown)
            ident = self._loop.ident
        if wait and threading.get_ident() != ident and not getattr(_local, "ours", False):
            self._stopped.wait(timeout)

    terminate = shutdown

    def serve_forever(self, *addresses: str, ready: Callable[[list[str]], Any] | None = None) -> None:
        """Serve until ``shutdown()``, then shut down gracefully. Blocks. ``ready``: as
        for :meth:`start`."""
        with self._state_lock:
            if not self._stopped.is_set():
                raise RuntimeError("this server is already serving")
            self._stopped.clear()
            self._shutting_down = False
            loop = self._loop = Loop("ezipc-server")
        parsed = [parse_address(a) for a in (addresses or (DEFAULT_ADDRESS,))]
        unix_paths: list[str] = []
        self._pool = ThreadPoolExecutor(self.options.max_workers, "ezipc-worker", initializer=_mark_ours)
        try:
            for addr in parsed:
                if addr.kind == "stdio":
                    continue
                socks = listen_sockets(addr, self.options.unix_mode)
                if addr.kind == "unix":
                    unix_paths.append(addr.path)
                for sock in socks:
                    self._listeners.append(sock)
                    sock.setblocking(False)
                    loop.watch(sock.fileno(), read=functools.partial(self._accept, sock, addr))
            self.addresses = [format_sockaddr(sock.family, sock.getsockname()) for sock in self._listeners]
            if any(a.kind == "stdio" for a in parsed):
                self.addresses.append("stdio")
                loop.call_soon(self._serve_stdio)
            self._log_listening()
            self.ready.set()
            if ready is not None:
                ready(list(self.addresses))
            _local.ours = True
            loop.run()
        finally:
            _local.ours = False
            self._close_listeners()
            for path in unix_paths:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            self._pool.shutdown(wait=False)
            self.ready.clear()
            self.addresses = []
            self._log_stopped()
            with self._state_lock:
                loop.close()
                self._loop = None
                self._stopped.set()

    def _close_listeners(self) -> None:
        for sock in self._listeners:
            if self._loop is not None:
                self._loop.watch(sock.fileno(), read=None)
            sock.close()
        self._listeners = []

    def _begin_shutdown(self) -> None:
        if self._shutting_down:
            return
        self._shutting_down = True
        self._close_listeners()
        remotes = list(self.remotes)
        self._log_shutdown(len(remotes))
        for remote in remotes:
            remote._call(lambda s: s.shutdown(monotonic()))
        self._stop_if_done()

    def _stop_if_done(self) -> None:
        if self._shutting_down and not self._connections and self._loop is not None:
            self._loop.stop()

    # ---- accepting (on the I/O thread) ---------------------------------------------------

    def _accept(self, sock: socket.socket, addr: Address) -> None:
        while not self._shutting_down:
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # EMFILE and friends: pause accepting briefly, do not spin
                log.warning("accept failed on %s: %s", addr, exc)
                self._pause_accepting(sock, addr)
                return
            self._accepted(conn, addr)

    def _pause_accepting(self, sock: socket.socket, addr: Address) -> None:
        loop = self._loop
        assert loop is not None
        loop.watch(sock.fileno(), read=None)

        def resume(now: float) -> None:
            if not self._shutting_down:
                loop.watch(sock.fileno(), read=lambda: self._accept(sock, addr))

        loop.call_at(monotonic() + 0.1, resume)

    def _accepted(self, conn: socket.socket, addr: Address) -> None:
        assert self._loop is not None
        creds = peer_credentials(conn)
        local, peer = _names(conn)
        if peer == "unix:" and creds is not None:
            peer = f"unix:pid={creds.pid},uid={creds.uid}"
        peer = peer or str(addr)
        refusal = self._refusal(creds, peer, self._connections)
        if addr.kind == "tcp":
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if refusal == b"":
            conn.close()
            return
        self._connections += 1
        stream: Stream = SocketStream(conn)
        if self.options.ssl is not None and addr.kind == "tcp":
            stream = TLSStream(conn, self.options.ssl, server_side=True, server_hostname=None)
        then: Callable[[Stream], object]
        if refusal is None:
            then = functools.partial(self._serve, local=local, peer=peer, creds=creds)
        else:
            then = functools.partial(self._refuse, refusal=refusal)
        if isinstance(stream, TLSStream):
            self._handshake(
                stream, peer, then, monotonic() + (self.options.message_timeout or _HANDSHAKE_TIMEOUT)
            )
        else:
            then(stream)

    def _handshake(
        self, stream: TLSStream, peer: str, then: Callable[[Stream], object], deadline: float
    ) -> None:
        """Drive a TLS handshake on the loop; ``then(stream)`` once it is done."""
        loop = self._loop
        assert loop is not None

        def step(now: float | None = None) -> None:
            if stream.done:
                return
            try:
                if not stream.handshake():
                    if now is None or now < deadline:
                        return
                    raise TimeoutError("the TLS handshake did not complete in time")
            except (OSError, ValueError) as exc:
                loop.watch(stream.rfd, read=None)
                stream.done = True
                log.warning("%s: TLS handshake failed: %s", peer, exc)
                stream.close()
                self._connections -= 1
                self._stop_if_done()
                return
            loop.watch(stream.rfd, read=None)
            then(stream)

        loop.watch(stream.rfd, read=step)
        loop.call_at(deadline, step)
        step()

    def _refuse(self, stream: Stream, refusal: bytes) -> None:
        assert self._loop is not None
        try:
            stream.write(refusal)
        except OSError:
            pass

        def closed() -> None:
            stream.close()
            self._connections -= 1
            self._stop_if_done()

        _linger(self._loop, stream, 1.0, closed)

    def _serve(self, stream: Stream, local: str, peer: str, creds: PeerCredentials | None) -> Remote:
        assert self._loop is not None and self._pool is not None
        remote = Remote(
            stream,
            self,
            self.options,
            self._pool,
            self._loop,
            server=self,
            local_address=local,
            remote_address=peer,
            peer_credentials=creds,
        )
        self._add(remote, peer)

        def finished() -> None:
            self._remove(remote, peer, remote._session.close_reason)
            if self._loop is not None:
                self._loop.call_soon(self._connection_ended)

        remote._on_finish.append(finished)
        remote._begin()
        if self._shutting_down:
            remote._call(lambda s: s.shutdown(monotonic()))
        return remote

    def _connection_ended(self) -> None:
        self._connections -= 1
        self._stop_if_done()

    def _serve_stdio(self) -> None:
        if self.options.allowed_uids is not None:  # (no credentials: fail closed)
            log.warning("refusing stdio: peer credentials None not allowed")
            self._begin_shutdown()
            return
        self._connections += 1
        remote = self._serve(PipeStream(sys.stdin.fileno(), sys.stdout.fileno()), "stdio", "stdio", None)
        remote._on_finish.append(lambda: self.shutdown(wait=False))  # stdin closed: nothing more can come

    # ---- calling every peer ----------------------------------------------------------

    def broadcast(
        self, method: str, params: Any = None, *, exclude: Remote | Iterable[Remote] | None = None
    ) -> None:
        """Notify every connected peer (but those in ``exclude``, e.g. the sender)."""
        self._notify_all(method, params, exclude)

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
        results: dict[Remote, Any] = {}
        for remote, future in self._request_all(method, params, timeout, exclude).items():
            try:
                results[remote] = future.result() if isinstance(future, Future) else future
            except Exception as exc:
                results[remote] = exc
        return results

    bcast_notif = broadcast  # the original EZ-IPC's names
    bcast_request = broadcast_request
