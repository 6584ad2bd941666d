"""The async adapter: ezipc_proto driven over anyio streams (asyncio, uvloop and trio).

One ``Remote`` per connection runs a small family of tasks under one task group: the
reader (bytes -> core -> events), the writer (coalesces queued bytes into one send), the
notification runner (notifications one at a time, in arrival order), a timer (request
timeouts) and one task per running request handler. The reader never waits on a handler:
requests beyond ``max_concurrency`` wait in a bounded line, and reading stops only while
that line (or the write buffer) is full.
"""

from __future__ import annotations

import contextlib
import heapq
import inspect
import itertools
import logging
import math
import os
import signal
import stat
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
from anyio.streams.stapled import StapledByteStream
from anyio.streams.tls import TLSAttribute, TLSListener

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

__all__ = ["Call", "Remote", "Server", "Client", "connect", "connect_subprocess"]

_CLOSED_ERRORS = (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError)
_FLUSH_TIMEOUT = 2.0  # how long a closing connection waits to write what it still holds
_HOOK_TIMEOUT = 10.0  # how long disconnect hooks may take once the connection has ended
_READ_SIZE = 65536


class Call:
    """A request in flight. ``await call`` gives the result, or raises ``RemoteError``,
    ``TimeoutError``, ``ConnectionClosed`` or ``RequestCancelled``. It may be awaited any
    number of times, later, or not at all (with a ``callback``, called with the finished
    call). If the task awaiting it is cancelled, the request is cancelled on the wire."""

    __slots__ = ("remote", "id", "method", "_done", "_result", "_exc", "_event", "_callback")

    def __init__(self, remote: Remote, id: Id, method: str, callback: Callable[[Call], Any] | None) -> None:
        self.remote = remote
        self.id = id
        self.method = method
        self._done = False
        self._result: Any = None
        self._exc: BaseException | None = None
        self._event: anyio.Event | None = None
        self._callback = callback

    def __repr__(self) -> str:
        state = "pending" if not self._done else ("failed" if self._exc else "done")
        return f"<Call {self.method!r} id={self.id!r} {state}>"

    def done(self) -> bool:
        return self._done

    def result(self) -> Any:
        """The result of a finished call (raises its error); RuntimeError if pending."""
        if not self._done:
            raise RuntimeError(f"{self!r} has not finished")
        if self._exc is not None:
            raise self._exc
        return self._result

    def exception(self) -> BaseException | None:
        if not self._done:
            raise RuntimeError(f"{self!r} has not finished")
        return self._exc

    def cancel(self) -> bool:
        """Give up on the answer and tell the peer; False if it had already finished."""
        if self._done:
            return False
        self.remote._abandon(self, RequestCancelled(f"request {self.method!r} was cancelled"))
        return True

    def __await__(self) -> Any:
        return self.wait().__await__()

    async def wait(self) -> Any:
        if not self._done:
            if self._event is None:
                self._event = anyio.Event()
            try:
                await self._event.wait()
            except BaseException:
                if not self._done:  # our caller was cancelled: the peer need not go on
                    self.remote._abandon(self, RequestCancelled(f"request {self.method!r} was cancelled"))
                raise
        if self._exc is not None:
            raise self._exc
        return self._result

    def _finish(self, result: Any, exc: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        self._result = result
        self._exc = exc
        if self._event is not None:
            self._event.set()
        if self._callback is not None:
            self.remote._run_callback(self._callback, self)


class Remote:
    """The other end of one connection; the same on both sides.

    ``request``, ``notify`` and ``batch`` call the peer; requests and notifications from
    the peer are served by the hooks of the ``Server`` or ``Client`` it belongs to.
    ``stats`` counts traffic; ``data`` is a dict for the application's own per-connection
    state; ``remote_address``, ``peer_certificate`` (TLS) and ``peer_credentials`` (Unix
    sockets: pid, uid, gid) describe the peer.
    """

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        hooks: Hooks,
        options: Options,
        *,
        server: Server | None = None,
        description: str | None = None,
    ) -> None:
        self._stream = stream
        self._hooks = hooks
        self.options = options
        self.server = server
        self._conn = options.connection()
        self._stats = Stats()
        self.data: dict[str, Any] = {}
        self._waiters: dict[Id, Call] = {}
        self._scopes: dict[Id, anyio.CancelScope] = {}  # running request handlers
        self._why_cancelled: dict[Id, tuple[int, str]] = {}
        self._backlog: deque[tuple[Request, int]] = deque()  # requests waiting for a slot
        self._running = 0
        self._ready = False  # connect hooks done: requests may be handled
        # A server with auth_token handles nothing until the client has presented it.
        self._auth_pending = server is not None and options.auth_token is not None
        self._auth_done = anyio.Event()
        self._shutting_down = False
        self._notifications: deque[Notification] = deque()
        self._notif_received = 0
        self._notif_started = 0
        self._wakeups: dict[str, anyio.Event] = {}
        self._out: list[bytes] = []
        self._out_size = 0
        self._writing = False
        self._deadlines: list[tuple[float, int, Call]] = []
        self._seq = itertools.count()
        self._closing = anyio.Event()
        self._finished = anyio.Event()
        self._close_reason = "connection closed"
        self._closed = False
        self._disconnected = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._log_messages = options.log_messages and log.isEnabledFor(logging.DEBUG)
        extra = stream.extra
        self.local_address = _describe(
            extra(anyio.abc.SocketAttribute.family, None),
            extra(anyio.abc.SocketAttribute.local_address, None),
        )
        self.remote_address = description or _describe(
            extra(anyio.abc.SocketAttribute.family, None),
            extra(anyio.abc.SocketAttribute.remote_address, None),
        )
        self.peer_certificate: dict[str, Any] | None = extra(TLSAttribute.peer_certificate, None)
        raw = extra(anyio.abc.SocketAttribute.raw_socket, None)
        self.peer_credentials: PeerCredentials | None = peer_credentials(raw) if raw is not None else None
        if self.remote_address == "unix:" and self.peer_credentials is not None:
            creds = self.peer_credentials
            self.remote_address = f"unix:pid={creds.pid},uid={creds.uid}"

    def __repr__(self) -> str:
        return f"<Remote {self.remote_address} {'closed' if self._closed else 'open'}>"

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
        """True once no more calls can be made (closed, or the peer sends nothing more)."""
        return self._closed or self._peer_eof

    @property
    def framing(self) -> str:
        return self._conn.framing

    # ---- calling the peer ------------------------------------------------------------

    def request(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = None,
        callback: Callable[[Call], Any] | None = None,
    ) -> Call:
        """Send a request now and return its :class:`Call` (await it for the result).

        ``timeout`` (seconds; default ``request_timeout``): then the call fails with
        ``TimeoutError`` and the peer is told to cancel. ``callback(call)`` (sync or async)
        runs when the call finishes, however it finishes."""
        if self._closed or self._peer_eof:
            raise ConnectionClosed(f"{self.remote_address}: {self._close_reason}")
        if len(self._waiters) >= self.options.max_pending:
            raise LimitExceeded(f"{len(self._waiters)} requests already await an answer (max_pending)")
        conn = self._conn
        id = conn.next_id()
        data = conn.send(Request(method, as_params(params), id))
        call = Call(self, id, method, callback)
        self._waiters[id] = call
        self._write(data)
        timeout = self.options.request_timeout if timeout is None else timeout
        if timeout is not None:
            self._add_deadline(call, timeout)
        return call

    async def notify(self, method: str, params: Any = None) -> None:
        """Send a notification (no answer). Waits only if the peer is not reading."""
        if self._closed:
            raise ConnectionClosed(f"{self.remote_address}: {self._close_reason}")
        self._write(self._conn.send(Notification(method, as_params(params))))
        await self._writable()

    notif = notify  # the original EZ-IPC's name

    async def batch(
        self,
        requests: Iterable[tuple[str, Any]],
        *,
        notify: Iterable[tuple[str, Any]] = (),
        timeout: float | None = None,
    ) -> list[Any]:
        """Send ``requests`` (``(method, params)`` pairs) and ``notify`` notifications as
        one JSON-RPC batch; return one item per request, in order: its result, or the
        ``RemoteError`` it was answered with (returned, not raised). Timeouts and
        disconnects raise as for ``request``."""
        if self._closed or self._peer_eof:
            raise ConnectionClosed(f"{self.remote_address}: {self._close_reason}")
        requests = list(requests)
        if len(self._waiters) + len(requests) > self.options.max_pending:
            raise LimitExceeded(f"a batch of {len(requests)} would exceed max_pending")
        conn = self._conn
        events: list[Request | Notification] = [
            Request(method, as_params(params), conn.next_id()) for method, params in requests
        ]
        events += [Notification(method, as_params(params)) for method, params in notify]
        data = conn.send_batch(events)
        calls = [Call(self, ev.id, ev.method, None) for ev in events if isinstance(ev, Request)]
        for call in calls:
            self._waiters[call.id] = call
        self._write(data)
        timeout = self.options.request_timeout if timeout is None else timeout
        if timeout is not None:
            for call in calls:
                self._add_deadline(call, timeout)
        results = []
        for call in calls:
            try:
                results.append(await call)
            except RemoteError as exc:
                results.append(exc)
            except BaseException:
                for other in calls:
                    other.cancel()
                raise
        return results

    async def aclose(self) -> None:
        """Close the connection: pending calls fail with ConnectionClosed, handlers are
        cancelled, queued bytes are written first (briefly)."""
        self.close()
        if self._tg is not None:
            await self._finished.wait()

    def close(self, reason: str = "closed locally") -> None:
        """Start closing without waiting for it (see :meth:`aclose`)."""
        if not self._closing.is_set():
            self._close_reason = reason
            self._closing.set()

    # ---- internals: life cycle -------------------------------------------------------

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._write_loop)
                tg.start_soon(self._notification_loop)
                tg.start_soon(self._timer_loop)
                tg.start_soon(self._read_loop)
                tg.start_soon(self._connect_hooks)
                task_status.started()
                await self._closing.wait()
                self._fail_pending()
                with anyio.move_on_after(_FLUSH_TIMEOUT):
                    await self._flush()
                tg.cancel_scope.cancel()
        finally:
            self._fail_pending()
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(_FLUSH_TIMEOUT):
                    try:
                        await self._stream.aclose()
                    except Exception:  # the stream is going away: nothing more to tell
                        pass
                await self._disconnect_hooks()
            self._finished.set()

    def _fail_pending(self) -> None:
        self._closed = True
        self._closing.set()
        self._fail_waiters(self._close_reason)
        self._backlog.clear()
        self._deadlines.clear()
        wakeups = list(self._wakeups.values())
        self._wakeups.clear()
        for event in wakeups:
            event.set()

    def _fail_waiters(self, reason: str) -> None:
        if self._waiters:
            exc = ConnectionClosed(f"{self.remote_address}: {reason}")
            waiters = list(self._waiters.values())
            self._waiters.clear()
            for call in waiters:
                call._finish(None, exc)

    async def _finish_after_eof(self) -> None:
        """The peer will send nothing more (EOF), though it may still read: our calls can
        no longer be answered and fail now, but its requests already received are
        finished and answered (for up to ``shutdown_timeout``) before we close. A peer
        that has closed altogether makes the first write fail, which closes at once."""
        self._peer_eof = True
        self._fail_waiters("closed by the peer")
        with anyio.move_on_after(self.options.shutdown_timeout):
            while (
                self._running or self._backlog or self._notifications or self._notif_busy
            ) and not self._closed:
                await self._sleep_until_woken("idle")
        self.close("closed by the peer")

    _peer_eof = False

    async def _connect_hooks(self) -> None:
        if self._auth_pending:
            with anyio.move_on_after(AUTH_TIMEOUT):
                await self._auth_done.wait()
            if self._auth_pending:
                log.warning("%s did not authenticate within %ss: closing", self.remote_address, AUTH_TIMEOUT)
                self.close("not authenticated")
                return
        try:
            for hook in self._hooks.on_connect:
                result = hook(self)
                if inspect.isawaitable(result):
                    await result
        except Exception:
            log.exception("connect hook failed for %s: closing", self.remote_address)
            self.close("rejected by a connect hook")
            return
        self._ready = True
        self._start_backlog()
        self._wake("notify")

    async def _disconnect_hooks(self) -> None:
        if self._disconnected:
            return
        self._disconnected = True
        with anyio.move_on_after(_HOOK_TIMEOUT):
            for hook in self._hooks.on_disconnect:
                try:
                    result = hook(self)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("disconnect hook failed for %s", self.remote_address)

    def _run_callback(self, callback: Callable[[Call], Any], call: Call) -> None:
        try:
            result = callback(call)
        except Exception:
            log.exception("callback of %r raised", call)
            return
        if inspect.isawaitable(result):
            if self._tg is None or self._closed:
                log.warning("async callback of %r not run: the connection has closed", call)
                if inspect.iscoroutine(result):
                    result.close()
                return

            async def run() -> None:
                try:
                    await result
                except Exception:
                    log.exception("callback of %r raised", call)

            self._tg.start_soon(run)

    # ---- internals: wake-ups ---------------------------------------------------------

    async def _sleep_until_woken(self, name: str) -> None:
        event = self._wakeups.get(name)
        if event is None:
            event = self._wakeups[name] = anyio.Event()
        await event.wait()

    def _wake(self, name: str) -> None:
        event = self._wakeups.pop(name, None)
        if event is not None:
            event.set()

    # ---- internals: writing ----------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if not data or self._closed or self._stream_broken:
            return
        self._out.append(data)
        self._out_size += len(data)
        self._stats.messages_out += 1
        if self._log_messages:
            log.debug("sent to %s: %s", self.remote_address, shorten(data))
        if not self._writing and not self._reading:
            self._wake("write")

    async def _writable(self) -> None:
        while self._out_size > self.options.write_buffer_size and not self._closed:
            await self._sleep_until_woken("drained")

    async def _flush(self) -> None:
        while (self._out or self._writing) and not self._stream_broken:
            await self._sleep_until_woken("drained")

    _stream_broken = False
    _reading = False  # the reader is handling a chunk: it sends what the chunk produced

    async def _write_loop(self) -> None:
        while not self._stream_broken:
            if not self._out or self._writing:
                self._wake("drained")
                await self._sleep_until_woken("write")
                continue
            await self._send_queued()

    async def _send_queued(self) -> None:
        """Send everything queued, coalesced; only one task sends at a time (the writer,
        or the reader for what it produced itself). Both are cancelled only on close."""
        stream = self._stream
        out = self._out
        self._writing = True
        try:
            while out and not self._stream_broken:
                data = out[0] if len(out) == 1 else b"".join(out)
                out.clear()
                self._out_size = 0
                try:
                    await stream.send(data)
                except _CLOSED_ERRORS as exc:
                    self._stream_broken = True
                    out.clear()
                    self._out_size = 0
                    self.close(f"write failed: {exc!r}")
                    break
                self._stats.bytes_out += len(data)
                if self._out_size <= self.options.write_buffer_size:
                    self._wake("drained")
        finally:
            self._writing = False
            self._wake("drained")

    # ---- internals: reading ----------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            await self._read_loop_inner()
        except Exception:
            log.exception("reader of %s failed", self.remote_address)
            self.close("internal error")

    async def _receive(self) -> bytes:
        """The next chunk, or b"" at EOF. With an idle or slow-message timeout, the timer
        task watches ``_read_deadline`` (a cancel scope per read would cost more than the
        read itself)."""
        options = self.options
        if options.idle_timeout is not None or options.message_timeout is not None:
            if self._conn.in_message:
                limit, since = options.message_timeout, self._message_started
            else:
                limit, since = options.idle_timeout, anyio.current_time()
            if limit is not None:
                self._read_deadline = since + limit
                if self._read_deadline < self._timer_wakes_at:
                    self._wake("timer")
        try:
            return await self._stream.receive(_READ_SIZE)
        except anyio.EndOfStream:
            return b""  # the peer sends nothing more, but may still read our answers
        except _CLOSED_ERRORS as exc:
            # Reset or closed under us: nobody will read an answer, so stop at once.
            self._stream_broken = True
            self.close(f"connection lost: {exc!r}" if str(exc) else "connection lost")
            return b""
        finally:
            self._read_deadline = math.inf

    def _read_timed_out(self, now: float) -> None:
        in_message = self._conn.in_message
        if not in_message and (self._running or self._waiters or self._backlog or self._notifications):
            self._read_deadline = now + (self.options.idle_timeout or math.inf)  # busy, not idle
            return
        self._read_deadline = math.inf
        what = "half-received message" if in_message else "idle connection"
        log.warning("%s: closing %s (timeout)", self.remote_address, what)
        self.close(f"{what} timed out")

    _message_started = 0.0
    _read_deadline = math.inf
    _timer_wakes_at = math.inf

    async def _read_loop_inner(self) -> None:
        conn = self._conn
        stats = self._stats
        waiters = self._waiters
        timed = self.options.message_timeout is not None
        was_in_message = False
        while not self._closed:
            data = await self._receive()
            if self._stream_broken:
                return
            stats.bytes_in += len(data)
            conn.receive_data(data)
            received = stats.messages_in + stats.errors
            self._reading = True
            while True:
                try:
                    event = conn.next_event()
                except RemoteProtocolError as exc:
                    log.warning("%s broke the protocol: %s", self.remote_address, exc)
                    stats.errors += 1
                    self._write(conn.send(Error(None, exc.error_code, str(exc))))
                    self._reading = False
                    self._wake("write")
                    self.close(f"protocol error: {exc}")
                    return
                if event is NEED_DATA:
                    break
                kind = type(event)
                if self._log_messages and kind is not InvalidMessage:
                    log.debug("received from %s: %s", self.remote_address, shorten(repr(event).encode()))
                if kind is Response:
                    stats.messages_in += 1
                    call = waiters.pop(event.id, None)  # type: ignore[union-attr]
                    if call is not None:
                        call._finish(event.result, None)  # type: ignore[union-attr]
                elif kind is Request:
                    stats.messages_in += 1
                    await self._on_request(event)  # type: ignore[arg-type]
                elif kind is Notification:
                    stats.messages_in += 1
                    await self._on_notification(event)  # type: ignore[arg-type]
                elif kind is Error:
                    stats.messages_in += 1
                    self._on_error(event)  # type: ignore[arg-type]
                elif kind is Cancel:
                    stats.messages_in += 1
                    self._on_cancel(event.id)  # type: ignore[union-attr]
                elif kind is InvalidMessage:
                    stats.errors += 1
                    log.warning("%s sent an invalid message: %s", self.remote_address, event.error.message)  # type: ignore[union-attr]
                    self._write(event.reply)  # type: ignore[union-attr]
                else:  # Closed
                    unfinished = event.unfinished  # type: ignore[union-attr]
                    if unfinished:
                        log.warning(
                            "%s closed in the middle of a message (%d bytes lost)",
                            self.remote_address,
                            len(unfinished),
                        )
                    self._reading = False
                    self._wake("write")
                    await self._finish_after_eof()
                    return
                if self._out_size > self.options.write_buffer_size:
                    # The answers to this chunk already fill the write buffer: send them
                    # before handling more of it (a chunk of small requests for large
                    # answers must not make us queue without bound).
                    self._reading = False
                    if not self._writing:
                        await self._send_queued()
                    await self._writable()
                    if self._closing.is_set():
                        return
                    self._reading = True
            self._reading = False
            if self._out and not self._writing:
                await self._send_queued()
            elif self._out:
                self._wake("write")
            stats.late_responses = conn.late_responses
            if timed:
                # The slow-sender clock runs from the last complete message while one
                # is partly received.
                in_message = conn.in_message
                if in_message and (not was_in_message or stats.messages_in + stats.errors != received):
                    self._message_started = anyio.current_time()
                was_in_message = in_message
            await self._writable()

    def _on_error(self, event: Error) -> None:
        call = self._waiters.pop(event.id, None)
        if call is not None:
            call._finish(None, RemoteError(event.code, event.message, event.data))
        else:  # id null: the peer could not read something we sent
            self._stats.errors += 1
            log.warning("%s reported an error: [%s] %s", self.remote_address, event.code, event.message)

    def _on_cancel(self, id: Id) -> None:
        scope = self._scopes.get(id)
        if scope is not None:
            self._why_cancelled[id] = (ErrorCode.REQUEST_CANCELLED, "Request cancelled")
            scope.cancel()
            return
        for item in self._backlog:
            if item[0].id == id:
                self._backlog.remove(item)
                self._answer(Error(id, ErrorCode.REQUEST_CANCELLED, "Request cancelled"), item[0].method)
                return

    # ---- internals: serving the peer's calls -----------------------------------------

    async def _on_request(self, event: Request) -> None:
        if self._closing.is_set():
            return  # closing (e.g. a failed authentication): nothing more is handled
        if self._auth_pending:
            self._authenticate(event)
            return
        if self._shutting_down:
            self._answer(Error(event.id, ErrorCode.SHUTTING_DOWN, "Server is shutting down"), event.method)
            return
        seq = self._notif_received
        if self._ready and self._running < self.options.max_concurrency and not self._backlog:
            handler = self._hooks.requests.get(event.method)
            if handler is not None and not handler.is_async and self._notif_started == seq:
                # A sync handler blocks the event loop wherever it runs, and nothing can
                # cancel it: running it here saves a task without changing what anyone sees.
                try:
                    result = call_handler(handler, event.params, self)
                except Exception as exc:
                    self._answer(
                        error_answer(event.id, exc, method=event.method, debug=self.options.debug),
                        event.method,
                    )
                    return
                if not inspect.isawaitable(result):
                    self._answer(Response(event.id, result), event.method)
                    return
                self._start(event, seq, result)  # a sync function that returned an awaitable
                return
            self._start(event, seq)
            return
        self._backlog.append((event, seq))
        # Backpressure: stop reading while the waiting line is as long as the limit.
        while len(self._backlog) > self.options.max_concurrency and not self._closed:
            await self._sleep_until_woken("slot")

    def _start(self, event: Request, seq: int, awaitable: Awaitable[Any] | None = None) -> None:
        assert self._tg is not None
        self._running += 1
        self._stats.handlers_running = self._running
        scope = anyio.CancelScope()
        self._scopes[event.id] = scope
        self._tg.start_soon(self._serve_request, event, seq, scope, awaitable)

    def _start_backlog(self) -> None:
        while self._backlog and self._running < self.options.max_concurrency and self._ready:
            event, seq = self._backlog.popleft()
            self._start(event, seq)
        self._wake("slot")

    async def _serve_request(
        self, event: Request, seq: int, scope: anyio.CancelScope, awaitable: Awaitable[Any] | None
    ) -> None:
        id, method = event.id, event.method
        try:
            with scope:
                while self._notif_started < seq:  # notifications that came first start first
                    await self._sleep_until_woken("notif_started")
                handler = self._hooks.requests.get(method)
                if handler is None:
                    answer: Response | Error = not_found(id, method)
                else:
                    try:
                        result = call_handler(handler, event.params, self) if awaitable is None else awaitable
                        if inspect.isawaitable(result):
                            result = await result
                        answer = Response(id, result)
                    except Exception as exc:
                        answer = error_answer(id, exc, method=method, debug=self.options.debug)
            if scope.cancelled_caught:
                code, message = self._why_cancelled.pop(
                    id, (ErrorCode.REQUEST_CANCELLED, "Request cancelled")
                )
                answer = Error(id, code, message)
            self._answer(answer, method)
        finally:
            self._scopes.pop(id, None)
            self._why_cancelled.pop(id, None)
            self._running -= 1
            self._stats.handlers_running = self._running
            if self._backlog:
                self._start_backlog()
            self._wake("idle")
        await self._writable()

    def _answer(self, answer: Response | Error, method: str) -> None:
        if self._closed:
            return
        try:
            data = self._conn.send(answer)
        except LocalProtocolError as exc:
            answer = unencodable_answer(answer.id, exc, method=method, debug=self.options.debug)
            data = self._conn.send(answer)
        if type(answer) is Error:
            self._stats.errors += 1
            log.info(
                "%s: %s answered with error %s: %s", self.remote_address, method, answer.code, answer.message
            )
        self._write(data)

    def _authenticate(self, event: Request) -> None:
        """Fail closed: anything but the right token first ends the connection."""
        expected = self.options.auth_token
        assert expected is not None
        if token_matches(event, expected):
            self._auth_pending = False
            self._auth_done.set()
            self._answer(Response(event.id, True), event.method)
            return
        log.warning("%s failed to authenticate (first request: %r)", self.remote_address, event.method)
        self._answer(Error(event.id, ErrorCode.UNAUTHORIZED, "Unauthorized"), event.method)
        self.close("authentication failed")

    async def _on_notification(self, event: Notification) -> None:
        if self._closing.is_set():
            return
        if self._auth_pending:
            log.warning("%s sent a notification before authenticating: closing", self.remote_address)
            self.close("authentication failed")
            return
        self._notifications.append(event)
        self._notif_received += 1
        self._wake("notify")
        while len(self._notifications) > self.options.max_concurrency and not self._closed:
            await self._sleep_until_woken("notif_started")

    async def _notification_loop(self) -> None:
        queue = self._notifications
        while True:
            if not queue or not self._ready:
                await self._sleep_until_woken("notify")
                continue
            event = queue.popleft()
            self._notif_started += 1
            self._wake("notif_started")
            handler = self._hooks.notifications.get(event.method)
            if handler is None:
                log.debug("%s: no handler for notification %r", self.remote_address, event.method)
            else:
                self._notif_busy = True
                try:
                    result = call_handler(handler, event.params, self)
                    if handler.is_async or inspect.isawaitable(result):
                        await result
                except (RemoteError, InvalidParams) as exc:
                    log.warning("notification %r from %s: %s", event.method, self.remote_address, exc)
                except Exception:
                    log.exception("notification handler %r raised", event.method)
                finally:
                    self._notif_busy = False
            if not queue:
                self._wake("idle")

    _notif_busy = False

    # ---- internals: our calls --------------------------------------------------------

    def _abandon(self, call: Call, exc: BaseException) -> None:
        """Stop waiting for ``call``: tell the peer (per the cancellation profile)."""
        if self._waiters.pop(call.id, None) is not None and not self._closed:
            self._write(self._conn.send(Cancel(call.id)))
        call._finish(None, exc)

    def _add_deadline(self, call: Call, timeout: float) -> None:
        entry = (anyio.current_time() + timeout, next(self._seq), call)
        heapq.heappush(self._deadlines, entry)
        if self._deadlines[0] is entry:
            self._wake("timer")

    async def _timer_loop(self) -> None:
        """Expires request timeouts and watches the reader's deadline (idle and slow
        message timeouts). It sleeps until the earliest deadline; a deadline that moved
        later meanwhile is simply re-read when it wakes."""
        heap = self._deadlines
        while True:
            while heap and heap[0][2]._done:
                heapq.heappop(heap)
            deadline = min(heap[0][0] if heap else math.inf, self._read_deadline)
            if deadline == math.inf:
                self._timer_wakes_at = math.inf
                await self._sleep_until_woken("timer")
                continue
            now = anyio.current_time()
            if deadline > now:
                self._timer_wakes_at = deadline
                with anyio.move_on_after(deadline - now):
                    await self._sleep_until_woken("timer")
                continue
            if self._read_deadline <= now:
                self._read_timed_out(now)
            while heap and heap[0][0] <= now:
                call = heapq.heappop(heap)[2]
                if not call._done:
                    self._abandon(call, TimeoutError(f"request {call.method!r} timed out"))

    # ---- internals: shutdown (driven by the server) ----------------------------------

    async def _shutdown(self, grace: float) -> None:
        """Stop taking requests, let running ones finish within ``grace`` seconds, answer
        the rest with SHUTTING_DOWN, then close."""
        self._shutting_down = True
        while self._backlog:
            event, _ = self._backlog.popleft()
            self._answer(Error(event.id, ErrorCode.SHUTTING_DOWN, "Server is shutting down"), event.method)
        with anyio.move_on_after(grace):
            while (self._running or self._notif_busy or self._notifications) and not self._closed:
                await self._sleep_until_woken("idle")
        for id, scope in list(self._scopes.items()):
            self._why_cancelled[id] = (ErrorCode.SHUTTING_DOWN, "Server is shutting down")
            scope.cancel()
        with anyio.move_on_after(1.0):  # let cancelled handlers write their answers
            while self._running and not self._closed:
                await self._sleep_until_woken("idle")
        await self.aclose()


def _describe(family: Any, address: Any) -> str:
    if family is None:
        return "stdio"
    return format_sockaddr(family, address)


# ---- the process's own stdio as a byte stream ----------------------------------------


class _FdStream(anyio.abc.ByteStream):
    """A byte stream over two file descriptors (this process's stdin and stdout).

    Pipes, sockets and terminals are polled without threads (non-blocking descriptors),
    so nothing is left blocked in a read when the connection closes; a regular file
    (stdin redirected from a file) is read in a worker thread, where reads never block.
    """

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._rfd = read_fd
        self._wfd = write_fd
        self._closed = False
        self._restore: list[tuple[int, bool]] = []
        self._poll_read = self._pollable(read_fd)
        self._poll_write = self._pollable(write_fd)

    def _pollable(self, fd: int) -> bool:
        if sys.platform == "win32":
            return False
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return False
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            return False
        if all(fd != done for done, _ in self._restore):
            self._restore.append((fd, os.get_blocking(fd)))
            os.set_blocking(fd, False)
        return True

    async def receive(self, max_bytes: int = _READ_SIZE) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        if not self._poll_read:
            data = await anyio.to_thread.run_sync(os.read, self._rfd, max_bytes)
        else:
            while True:
                try:
                    data = os.read(self._rfd, max_bytes)
                    break
                except BlockingIOError:
                    await anyio.wait_readable(self._rfd)
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        view = memoryview(item)
        while view:
            if not self._poll_write:
                written = await anyio.to_thread.run_sync(os.write, self._wfd, view)
            else:
                try:
                    written = os.write(self._wfd, view)
                except BlockingIOError:
                    await anyio.wait_writable(self._wfd)
                    continue
                except BrokenPipeError as exc:
                    raise anyio.BrokenResourceError from exc
            view = view[written:]

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd, blocking in self._restore:
            try:
                os.set_blocking(fd, blocking)
            except OSError:
                pass


def _stdio_stream() -> anyio.abc.ByteStream:
    return _FdStream(sys.stdin.fileno(), sys.stdout.fileno())


# ---- opening connections --------------------------------------------------------------


async def _open_stream(
    address: Address, options: Options, *, server_hostname: str | None
) -> anyio.abc.ByteStream:
    if address.kind == "tcp":
        if options.ssl is not None:
            return await anyio.connect_tcp(
                address.host,
                address.port,
                ssl_context=options.ssl,
                tls_hostname=server_hostname or address.host,
                tls_standard_compatible=False,
            )
        return await anyio.connect_tcp(address.host, address.port)
    if address.kind == "unix":
        return await anyio.connect_unix(address.path)
    return _stdio_stream()


class Client(Hooks):
    """A client whose hooks serve the requests and notifications its server sends.

    ``client.connect(address)`` is an async context manager yielding the ``Remote``.
    """

    def __init__(self, framing: str = "ndjson", **options: Any) -> None:
        super().__init__()
        self.options = Options.build({"framing": framing}, options)

    @asynccontextmanager
    async def connect(
        self,
        address: str | Address = DEFAULT_ADDRESS,
        *,
        timeout: float | None = None,
        server_hostname: str | None = None,
        **options: Any,
    ) -> AsyncIterator[Remote]:
        """Connect (within ``timeout`` seconds) and yield the ``Remote``; on exit, close."""
        opts = self.options.replace(**options)
        addr = parse_address(address)
        with anyio.fail_after(timeout) if timeout is not None else contextlib.nullcontext():
            stream = await _open_stream(addr, opts, server_hostname=server_hostname)
        async with _running(Remote(stream, self, opts)) as remote:
            log.info("connected to %s", remote.remote_address)
            if opts.auth_token is not None:
                auth = auth_params(opts.auth_token)
                await remote.request(AUTH_METHOD, auth, timeout=timeout or AUTH_TIMEOUT)
            yield remote

    @asynccontextmanager
    async def connect_subprocess(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stderr: Any = None,
        terminate_timeout: float = 2.0,
        **options: Any,
    ) -> AsyncIterator[Remote]:
        """Start ``argv`` and talk to it over its stdin/stdout. On exit: close its stdin,
        wait up to ``terminate_timeout`` seconds, then terminate, and kill if need be.
        ``stderr`` is inherited unless given (e.g. ``subprocess.DEVNULL``)."""
        opts = self.options.replace(**options)
        if opts.framing == "auto":
            opts = opts.replace(framing="ndjson")
        import subprocess

        process = await anyio.open_process(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=cwd,
            env=env,
        )
        assert process.stdin is not None and process.stdout is not None
        stream = StapledByteStream(process.stdin, process.stdout)
        try:
            async with _running(
                Remote(stream, self, opts, description=f"subprocess:{process.pid}")
            ) as remote:
                remote.data["process"] = process
                yield remote
        finally:
            with anyio.CancelScope(shield=True):
                await _end_process(process, terminate_timeout)


async def _end_process(process: anyio.abc.Process, timeout: float) -> None:
    try:
        if process.stdin is not None:
            await process.stdin.aclose()
    except Exception:
        pass
    with anyio.move_on_after(timeout):
        await process.wait()
        return
    try:
        process.terminate()
    except ProcessLookupError:
        return
    with anyio.move_on_after(timeout):
        await process.wait()
        return
    try:
        process.kill()
    except ProcessLookupError:
        return
    await process.wait()


@asynccontextmanager
async def _running(remote: Remote) -> AsyncIterator[Remote]:
    """Run ``remote`` for the duration of the block. An exception from the block is
    re-raised as itself after the connection's tasks end, not wrapped in the task group's
    ExceptionGroup (cancellation goes through the task group, as it must)."""
    raised: BaseException | None = None
    async with anyio.create_task_group() as tg:
        await tg.start(remote._run)
        try:
            yield remote
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            raised = exc
        finally:
            await remote.aclose()
            log.info("connection to %s closed (%s)", remote.remote_address, remote._close_reason)
    if raised is not None:
        raise raised


def connect(
    address: str | Address = DEFAULT_ADDRESS,
    *,
    framing: str = "ndjson",
    timeout: float | None = None,
    server_hostname: str | None = None,
    **options: Any,
) -> Any:
    """``async with connect(address) as remote:`` — a ``Client`` with no hooks."""
    return Client(framing, **options).connect(address, timeout=timeout, server_hostname=server_hostname)


def connect_subprocess(argv: Sequence[str], *, framing: str = "ndjson", **options: Any) -> Any:
    """``async with connect_subprocess(["prog", "arg"]) as remote:`` — no hooks."""
    keys = ("cwd", "env", "stderr", "terminate_timeout")
    kwargs = {k: options.pop(k) for k in keys if k in options}
    return Client(framing, **options).connect_subprocess(argv, **kwargs)


# ---- the server ----------------------------------------------------------------------


class Server(Hooks):
    """Serves connections with the hooks registered on it.

    ``start(*addresses)`` blocks (SIGINT/SIGTERM shut down gracefully); ``await
    serve(*addresses)`` does the same inside your event loop. No address means
    ``tcp://127.0.0.1:9002``. ``framing="auto"`` (the default) answers each connection in
    the framing it speaks.
    """

    backend = "asyncio"

    def __init__(self, framing: str = "auto", **options: Any) -> None:
        super().__init__()
        self.options = Options.build({"framing": framing}, options)
        self._remotes: set[Remote] = set()
        #: The addresses being served (with the real port for port 0), once listening.
        self.addresses: list[str] = []
        self._stop: anyio.Event | None = None
        self._stop_requested = False

    @property
    def remotes(self) -> frozenset[Remote]:
        """The connected peers."""
        return frozenset(self._remotes)

    def start(
        self,
        *addresses: str,
        backend: str | None = None,
        use_uvloop: bool = False,
        ready: Callable[[list[str]], Any] | None = None,
    ) -> None:
        """Serve until SIGINT or SIGTERM, then shut down gracefully. Blocks.

        ``ready(addresses)``, if given, is called once listening, with the bound addresses
        (e.g. to print the port chosen for ``tcp://127.0.0.1:0``)."""
        backend = backend or self.backend
        backend_options = {"use_uvloop": True} if use_uvloop and backend == "asyncio" else {}
        anyio.run(self._main, addresses, ready, backend=backend, backend_options=backend_options)

    run = start  # the original EZ-IPC's name for serving

    async def _main(self, addresses: Sequence[str], ready: Callable[[list[str]], Any] | None) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_signals)
            bound = await tg.start(self._serve_then_stop, addresses, tg.cancel_scope)
            if ready is not None:
                ready(bound)

    async def _serve_then_stop(
        self,
        addresses: Sequence[str],
        scope: anyio.CancelScope,
        *,
        task_status: anyio.abc.TaskStatus[list[str]],
    ) -> None:
        await self.serve(*addresses, task_status=task_status)
        scope.cancel()

    async def _watch_signals(self) -> None:
        try:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("received %s: shutting down", signal.Signals(signum).name)
                    self.shutdown()
                    return
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
            await anyio.sleep_forever()

    def shutdown(self) -> None:
        """Begin a graceful shutdown (call it from the server's event loop thread)."""
        self._stop_requested = True
        if self._stop is not None:
            self._stop.set()

    terminate = shutdown

    async def serve(
        self, *addresses: str, task_status: anyio.abc.TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until :meth:`shutdown` (then gracefully) or until cancelled (abruptly).
        With ``await tg.start(server.serve, "tcp://127.0.0.1:0")`` the bound addresses
        are returned (also in ``server.addresses``)."""
        self._stop = anyio.Event()
        if self._stop_requested:
            self._stop.set()
        parsed = [parse_address(a) for a in (addresses or (DEFAULT_ADDRESS,))]
        listeners: list[tuple[anyio.abc.Listener[Any], Address]] = []
        unix_paths: list[str] = []
        stdio = any(a.kind == "stdio" for a in parsed)
        try:
            for addr in parsed:
                if addr.kind != "stdio":
                    listeners.append((await self._listen(addr), addr))
                    if addr.kind == "unix":
                        unix_paths.append(addr.path)
            self.addresses = [b for listener, a in listeners for b in _bound(listener, a)]
            if stdio:
                self.addresses.append("stdio")
            async with anyio.create_task_group() as connections:
                async with anyio.create_task_group() as accepting:
                    for listener, _ in listeners:
                        accepting.start_soon(listener.serve, self._handle, connections)
                    if stdio:
                        accepting.start_soon(self._serve_stdio, connections)
                    for address in self.addresses:
                        log.info("serving on %s", address)
                    task_status.started(list(self.addresses))
                    await self._stop.wait()
                    accepting.cancel_scope.cancel()
                for listener, _ in listeners:
                    await listener.aclose()
                listeners.clear()
                remotes = list(self._remotes)
                if remotes:
                    log.info(
                        "shutting down: %d connection(s), up to %.1fs for work in flight",
                        len(remotes),
                        self.options.shutdown_timeout,
                    )
                async with anyio.create_task_group() as closing:
                    for remote in remotes:
                        closing.start_soon(remote._shutdown, self.options.shutdown_timeout)
        finally:
            with anyio.CancelScope(shield=True):
                for listener, _ in listeners:
                    await listener.aclose()
            for path in unix_paths:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            self._stop_requested = False
            log.info("server stopped")

    async def _serve_stdio(self, connections: anyio.abc.TaskGroup) -> None:
        await self._handle(_stdio_stream())
        self.shutdown()  # stdin is closed: nothing more can come

    async def _listen(self, addr: Address) -> anyio.abc.Listener[Any]:
        options = self.options
        if addr.kind == "tcp":
            listener: anyio.abc.Listener[Any] = await anyio.create_tcp_listener(
                local_host=addr.host, local_port=addr.port
            )
            if options.ssl is not None:
                listener = _TLSListener(listener, options.ssl, standard_compatible=False)
            return listener
        free_unix_path(addr.path)
        return await anyio.create_unix_listener(addr.path, mode=options.unix_mode)

    async def _handle(self, stream: anyio.abc.ByteStream) -> None:
        options = self.options
        remote = Remote(stream, self, options, server=self)
        if options.allowed_uids is not None and (
            remote.peer_credentials is None or remote.peer_credentials.uid not in options.allowed_uids
        ):  # before anything is read or written: a stranger learns nothing, not even "busy"
            log.warning(
                "refusing %s: peer credentials %s not allowed", remote.remote_address, remote.peer_credentials
            )
            await anyio.aclose_forcefully(stream)
            return
        if len(self._remotes) >= options.max_connections:
            log.warning("refusing a connection: max_connections (%d) reached", options.max_connections)
            body = options.connection().send(Error(None, ErrorCode.SERVER_BUSY, "Too many connections"))
            with anyio.move_on_after(1.0):
                try:
                    await stream.send(body)
                except Exception:
                    pass
            await anyio.aclose_forcefully(stream)
            return
        self._remotes.add(remote)
        log.info("connection from %s", remote.remote_address)
        try:
            await remote._run()
        finally:
            self._remotes.discard(remote)
            log.info("connection from %s closed (%s)", remote.remote_address, remote._close_reason)

    def _audience(self, exclude: Remote | Iterable[Remote] | None) -> list[Remote]:
        """Connected (and authenticated) peers, minus ``exclude``."""
        skip = {exclude} if isinstance(exclude, Remote) else set(exclude or ())
        return [r for r in self._remotes if not r._auth_pending and not r.closed and r not in skip]

    async def broadcast(
        self, method: str, params: Any = None, *, exclude: Remote | Iterable[Remote] | None = None
    ) -> None:
        """Notify every connected peer (but those in ``exclude``, e.g. the sender)."""
        for remote in self._audience(exclude):
            if not remote.closed:
                try:
                    await remote.notify(method, params)
                except ConnectionClosed:
                    pass

    async def broadcast_request(
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

        async def one(remote: Remote) -> None:
            try:
                results[remote] = await remote.request(method, params, timeout=timeout)
            except (RemoteError, TimeoutError, ConnectionClosed, LimitExceeded, RequestCancelled) as exc:
                results[remote] = exc

        async with anyio.create_task_group() as tg:
            for remote in self._audience(exclude):
                tg.start_soon(one, remote)
        return results

    bcast_notif = broadcast  # the original EZ-IPC's names
    bcast_request = broadcast_request


class _TLSListener(TLSListener):
    """anyio's TLS listener, logging a failed handshake (a scanner, a plain-text client, a
    wrong certificate) as one line on the "ezipc" logger instead of a traceback."""

    @staticmethod
    async def handle_handshake_error(exc: BaseException, stream: anyio.abc.AnyByteStream) -> None:
        try:  # before closing: a closed socket no longer knows its peer
            peer = _describe(
                stream.extra(anyio.abc.SocketAttribute.family, None),
                stream.extra(anyio.abc.SocketAttribute.remote_address, None),
            )
        except OSError:
            peer = "a TLS client"
        await anyio.aclose_forcefully(stream)
        if isinstance(exc, anyio.get_cancelled_exc_class()) or not isinstance(exc, Exception):
            raise exc
        log.warning("%s: TLS handshake failed: %s", peer, exc.__cause__ or exc)


def _bound(listener: anyio.abc.Listener[Any], addr: Address) -> list[str]:
    if isinstance(listener, TLSListener):
        listener = listener.listener
    inner = getattr(listener, "listeners", [listener])
    out = []
    for one in inner:
        family = one.extra(anyio.abc.SocketAttribute.family, None)
        local = one.extra(anyio.abc.SocketAttribute.local_address, None)
        out.append(format_sockaddr(family, local) if family is not None else str(addr))
    return out
