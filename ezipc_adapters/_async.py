"""The async driver: an ``ezipc_proto.Session`` per connection, on anyio (asyncio, uvloop
and trio run the same code).

Per connection, under one task group: its wire (``_async_io``: an asyncio protocol on a
plain socket, else reader and writer tasks on an anyio stream), a timer task (the
session's deadlines) and one task per running handler (a plain-function handler runs
inline: it would block the event loop wherever it ran). Every decision (what starts
when, what is answered how, timeouts, cancellation, shutdown) is the session's: this
module moves bytes, runs handlers and keeps the clock.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Coroutine, Generator, Iterable
from contextvars import ContextVar
from threading import get_ident
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc

from ezipc_proto import (
    FLUSH_TIMEOUT,
    NEED_DATA,
    PAUSED,
    Connected,
    Interrupt,
    Job,
    JobState,
    RemoteError,
    RequestCancelled,
    Settle,
)

from ._async_io import STREAM_AT, STREAM_EVERY, Wire, loop_clock, native_event_class, native_parking
from ._options import Options
from ._registry import PLAIN_RESULTS, Handler, Hooks, call_handler, log, not_found
from ._serving import RemoteBase

if TYPE_CHECKING:
    from ._async_endpoints import Server

__all__ = ["Call", "Sent", "BatchCall", "Remote"]

T = TypeVar("T")
_HOOK_TIMEOUT = 10.0  # how long disconnect hooks may take once the connection has ended
# The peer's request whose handler runs in this task, its connection, and the thread of
# that connection's event loop (see Session.request's ``job``, and Call.wait).
_handling: ContextVar[tuple[Remote, Job, int] | None] = ContextVar("ezipc_handling", default=None)


# ---- what request, notify and batch return ---------------------------------------------


class _Sending(Coroutine[Any, Any, T]):
    """Something already sent, to await for its outcome. Await it any number of times, or
    not at all; it is also a coroutine object, so ``tg.start_soon(remote.request, ...)``
    (anyio) and ``nursery.start_soon(remote.request, ...)`` (trio) work."""

    __slots__ = ("_coro",)

    def __init__(self) -> None:
        self._coro: Coroutine[Any, Any, T] | None = None

    async def wait(self) -> T:
        raise NotImplementedError

    def __await__(self) -> Generator[Any, None, T]:
        return self.wait().__await__()

    # The coroutine protocol, for the task runners: driven by one wait() of its own.
    def send(self, value: Any) -> Any:
        if self._coro is None:
            self._coro = self.wait()
        return self._coro.send(value)

    def throw(self, *args: Any) -> Any:
        if self._coro is None:
            self._coro = self.wait()
        return self._coro.throw(*args)

    def close(self) -> None:
        if self._coro is not None:
            self._coro.close()


class Call(_Sending[Any]):
    """A request in flight (already sent). ``await call`` gives the result, or raises
    ``RemoteError``, ``TimeoutError``, ``ConnectionClosed`` or ``RequestCancelled``; so
    does ``call.result()`` once ``call.done()``. A ``callback(call)`` (sync or async)
    runs when it finishes, however it finishes. If the task awaiting it is cancelled,
    the request is cancelled on the wire. A call that fails with nobody ever looking at
    its outcome is logged when it is garbage collected."""

    __slots__ = ("remote", "id", "method", "_done", "_result", "_error", "_waiters", "_callback", "_seen")

    def __init__(self, remote: Remote, method: str, callback: Callable[[Call], Any] | None) -> None:
        super().__init__()
        self.remote = remote
        self.id: Any = None
        self.method = method
        self._done = False
        self._result: Any = None
        self._error: BaseException | None = None
        self._waiters: list[Any] | None = None  # one per waiting task (see Parking)
        self._callback = callback
        self._seen = callback is not None

    def __repr__(self) -> str:
        state = "pending" if not self._done else ("failed" if self._error else "done")
        return f"<Call {self.method!r} id={self.id!r} {state}>"

    def __del__(self) -> None:
        if self._done and self._error is not None and not self._seen:
            log.warning("request %r failed and nobody awaited it: %s", self.method, self._error)

    def done(self) -> bool:
        return self._done

    def result(self) -> Any:
        """The result of a finished call (raises its error); RuntimeError if pending."""
        if not self._done:
            raise RuntimeError(f"{self!r} has not finished")
        self._seen = True
        if self._error is not None:
            raise self._error
        return self._result

    def exception(self) -> BaseException | None:
        if not self._done:
            raise RuntimeError(f"{self!r} has not finished")
        self._seen = True
        return self._error

    def cancel(self) -> bool:
        """Give up on the answer and tell the peer; False if it had already finished."""
        if self._done:
            return False
        self._seen = True
        self.remote._cancel(self)
        return True

    async def wait(self) -> Any:
        self._seen = True
        if not self._done:
            remote = self.remote
            parking = remote._parking
            waiter = parking.new()
            if self._waiters is None:
                self._waiters = [waiter]
            else:
                self._waiters.append(waiter)
            # A handler of another connection waiting for this answer holds no slot of
            # its own connection meanwhile (see Session.waiting): the answer may need
            # that connection's peer's next requests (A's handler calls B, whose handler
            # calls A over another connection). A call on its own connection is lent
            # for by the session itself (Session.request's ``job``). (Not for a handler
            # of another thread's event loop, whose context came along with a call
            # made through a portal or to_thread: its connection is not ours to touch.)
            lender = _handling.get()
            if lender is not None and (lender[0] is remote or lender[2] != get_ident()):
                lender = None
            if lender is not None:
                lender[0]._lend(lender[1], True)
            try:
                await parking.awaitable(waiter)
            except BaseException:
                self._waiters.remove(waiter)
                if not self._done:  # our task was cancelled: the peer need not go on
                    remote._cancel(self)
                raise
            finally:
                if lender is not None:
                    lender[0]._lend(lender[1], False)
        return self.result()

    def _settle(self, result: Any, error: BaseException | None) -> None:
        self._done = True
        self._result = result
        self._error = error
        if self._waiters:
            wake = self.remote._parking.wake
            for waiter in self._waiters:
                wake(waiter)
        if self._callback is not None:
            self.remote._run_callback(self._callback, self)


class Sent(_Sending[None]):
    """A notification, already sent. Awaiting it waits only while the peer is not
    reading (our unsent output is over ``write_buffer_size``)."""

    __slots__ = ("_remote",)

    def __init__(self, remote: Remote) -> None:
        super().__init__()
        self._remote = remote

    async def wait(self) -> None:
        await self._remote._writable()


class BatchCall(_Sending[list[Any]]):
    """A batch in flight (already sent): awaiting it gives one item per request, in order:
    its result, or the ``RemoteError`` it was answered with (returned, not raised).
    Timeouts and disconnects raise as for a request."""

    __slots__ = ("calls",)

    def __init__(self, calls: list[Call]) -> None:
        super().__init__()
        self.calls = calls

    async def wait(self) -> list[Any]:
        for call in self.calls:  # the batch's outcome is every call's: none is left unseen
            call._seen = True
        results: list[Any] = []
        for call in self.calls:
            try:
                results.append(await call)
            except RemoteError as exc:
                results.append(exc)
            except BaseException:
                for other in self.calls:
                    other.cancel()
                raise
        return results


# ---- a connection ----------------------------------------------------------------------


class Remote(RemoteBase):
    """The other end of one connection; the same on both sides.

    ``request``, ``notify`` and ``batch`` send at once and return something to await;
    requests and notifications from the peer are served by the hooks of the ``Server``
    or ``Client`` it belongs to. ``stats`` counts traffic; ``data`` is a dict for the
    application's own per-connection state; ``remote_address``, ``peer_certificate``
    (TLS) and ``peer_credentials`` (Unix sockets: pid, uid, gid) describe the peer.
    """

    def __init__(self, wire: Wire, hooks: Hooks, options: Options, *, server: Server | None = None) -> None:
        self._loop_time = loop_clock()
        self._new_event = native_event_class()
        self._parking = native_parking()
        super().__init__(
            hooks,
            options,
            server,
            local=wire.local,
            peer=wire.peer,
            certificate=wire.certificate,
            credentials=wire.credentials,
            now=self._loop_time(),
            framing=wire.framing,
        )
        self.server: Server | None = server
        self._wire = wire
        self._tg: anyio.abc.TaskGroup | None = None
        self._timer_wanted = self._new_event()
        self._closing = anyio.Event()
        self._finished = anyio.Event()
        self._kicking = False
        self._timer_at = math.inf
        self._disconnected = False

    # ---- calling the peer ------------------------------------------------------------

    def request(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = None,
        callback: Callable[[Call], Any] | None = None,
    ) -> Call:
        """Send a request now; await the returned :class:`Call` for the result.

        ``timeout`` (seconds; default ``request_timeout``): then the call fails with
        ``TimeoutError`` and the peer is told to cancel. ``callback(call)`` (sync or
        async) runs when the call finishes, however it finishes. Raises at once
        ``ConnectionClosed`` or ``LimitExceeded`` (nothing sent)."""
        call = Call(self, method, callback)
        session = self._session
        job = self._handling_job()  # (a handler's call: see Session.request)
        call.id = session.request(
            method, params, now=self._loop_time(), timeout=timeout, waiter=call, job=job
        )
        # (a request makes no event to act on, but for a handler's, which may let the
        # peer's next requests start: the wire takes it, the timer may be nearer)
        self._wire.output_ready()
        if timeout is not None or session.request_timeout is not None or job is not None:
            self._kick()
        return call

    def notify(self, method: str, params: Any = None) -> Sent:
        """Send a notification now. Await the result to wait while the peer is not
        reading (backpressure); not awaiting it loses nothing."""
        self._session.notify(method, params, now=self._loop_time())
        self._kick()
        return Sent(self)

    notif = notify  # the original EZ-IPC's name

    def batch(
        self,
        requests: Iterable[tuple[str, Any]],
        *,
        notify: Iterable[tuple[str, Any]] = (),
        timeout: float | None = None,
    ) -> BatchCall:
        """Send ``requests`` (``(method, params)`` pairs) and ``notify`` notifications
        now, as one JSON-RPC batch; await the result for one item per request (see
        :class:`BatchCall`)."""
        requests = list(requests)
        calls = [Call(self, method, None) for method, _ in requests]
        ids = self._session.batch(
            [(method, params, call) for (method, params), call in zip(requests, calls, strict=True)],
            list(notify),
            now=self._loop_time(),
            timeout=timeout,
            job=self._handling_job(),
        )
        for call, id in zip(calls, ids, strict=True):
            call.id = id
        self._kick()
        return BatchCall(calls)

    def _call_soon(self, method: str, params: Any, timeout: float | None) -> Call:
        return self.request(method, params, timeout=timeout)

    def _handling_job(self) -> Job | None:
        """The job of this connection whose handler runs in this task, if any."""
        handling = _handling.get()
        return handling[1] if handling is not None and handling[0] is self else None

    def _lend(self, job: Job, waiting: bool) -> None:
        """``job``'s handler waits (or no longer waits) for an answer from another
        connection (see ``Call.wait``)."""
        if waiting:
            self._session.waiting(job, self._loop_time())
            self._kick()  # (the peer's next requests may start now)
        else:
            self._session.resumed(job, self._loop_time())

    async def aclose(self) -> None:
        """Close the connection: pending calls fail with ConnectionClosed, handlers are
        cancelled, queued bytes are written first (briefly)."""
        self.close()
        if self._tg is not None:
            await self._finished.wait()

    def close(self, reason: str = "closed locally") -> None:
        """Start closing without waiting for it (see :meth:`aclose`)."""
        self._session.close(reason, self._loop_time())
        self._kick()

    # ---- driving the session ---------------------------------------------------------

    def _kick(self) -> None:
        """Do what the session says until it needs bytes (NEED_DATA) or our output to
        drain (PAUSED); then hand the wire what there is to write, and wake the timer if
        a deadline came nearer. Re-entered (a handler run inline calls the peer), it
        leaves the work to the outer call."""
        if self._kicking:
            return
        self._kicking = True
        session, wire = self._session, self._wire
        jobs = 0
        try:
            while True:
                ev = session.next_event()
                kind = type(ev)
                if kind is Settle:
                    ev.waiter._settle(ev.result, ev.error)  # type: ignore[union-attr]
                elif kind is Job:
                    self._run_job(ev)  # type: ignore[arg-type]
                    jobs += 1
                    if (jobs >= STREAM_EVERY or session.output_size >= STREAM_AT) and session.output_size:
                        jobs = 0
                        if not wire.output_due():
                            break
                elif ev is NEED_DATA or ev is PAUSED:
                    break
                elif kind is Interrupt:
                    context = ev.job.context  # type: ignore[union-attr]
                    if context is not None:
                        scope, token = context
                        if token is not None:
                            token.set()
                        scope.cancel()
                elif kind is Connected:
                    if self._hooks.on_connect:
                        self._spawn(self._connect_hooks)
                    else:
                        session.start(self._loop_time())
                else:  # Close
                    self._closing.set()
        finally:
            self._kicking = False
        if session.output_size:
            wire.output_ready()
        wire.set_reading(ev is not PAUSED)
        at = session.get_timer()
        if at is not None and at < self._timer_at:
            self._timer_wanted.set()

    def _spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        if self._tg is not None and not self._closing.is_set():
            self._tg.start_soon(fn, *args)

    def _cancel(self, call: Call) -> None:
        self._session.cancel(call.id, self._loop_time())
        self._kick()

    async def _writable(self) -> None:
        session = self._session
        if session.output_size > session.write_buffer_size and not self._closing.is_set():
            await self._wire.drain()

    # ---- running handlers ------------------------------------------------------------

    def _run_job(self, job: Job) -> None:
        handlers = self._hooks.notifications if job.notification else self._hooks.requests
        handler = handlers.get(job.method)
        session = self._session
        if handler is None:
            if job.notification:
                log.debug("%s: no handler for notification %r", self.remote_address, job.method)
                session.answer(job, None, self._loop_time())
            else:
                session.fail(job, not_found(job.method), self._loop_time())
            return
        awaitable = None
        if not handler.is_async and not handler.wants_cancelled:
            # A plain function blocks the event loop wherever it runs, and nothing can
            # interrupt it: running it here saves a task and changes nothing anyone sees.
            try:
                result = call_handler(handler, job.params, self)
            except Exception as exc:
                session.fail(job, exc, self._loop_time())
                return
            if type(result) in PLAIN_RESULTS or not inspect.isawaitable(result):
                session.answer(job, result, self._loop_time())
                return
            awaitable = result  # a plain function that returned an awaitable
        token = anyio.Event() if handler.wants_cancelled else None
        scope = anyio.CancelScope()
        job.context = (scope, token)
        self._spawn(self._serve, job, handler, scope, token, awaitable)

    async def _serve(
        self, job: Job, handler: Handler, scope: anyio.CancelScope, token: anyio.Event | None, awaitable: Any
    ) -> None:
        session = self._session
        reported = False
        try:
            with scope:
                if job.notification:
                    # The requests after it may start now; they run once it has taken its
                    # first step (the timer task hands them over after this task yields).
                    session.started(job, self._loop_time())
                    self._timer_wanted.set()
                _handling.set((self, job, get_ident()))  # (this task's: its calls are made for it)
                try:
                    if awaitable is None:
                        awaitable = call_handler(handler, job.params, self, token)
                    result = await awaitable if inspect.isawaitable(awaitable) else awaitable
                except Exception as exc:
                    reported = True
                    session.fail(job, exc, self._loop_time())
                else:
                    reported = True
                    session.answer(job, result, self._loop_time())
        finally:
            if not reported:
                # Interrupted by the session, which drops what it is told; or cancelled
                # from outside with the whole connection (serve() or a connect block
                # cancelled): the connection is over then, and the handler did not fail.
                if job.state is not JobState.INTERRUPTED:
                    session.close("cancelled", self._loop_time())
                session.fail(job, RequestCancelled("interrupted"), self._loop_time())
            self._kick()

    async def _connect_hooks(self) -> None:
        try:
            for hook in self._hooks.on_connect:
                result = hook(self)
                if inspect.isawaitable(result):
                    await result
        except Exception:
            log.exception("connect hook failed for %s: closing", self.remote_address)
            self._session.close("rejected by a connect hook", self._loop_time())
        else:
            self._session.start(self._loop_time())
        self._kick()

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
            if self._tg is None or self._closing.is_set():
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

    # ---- the connection's tasks ------------------------------------------------------

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        session = self._session
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._timer_loop)
                self._wire.start(self, tg)
                self._kick()
                task_status.started()
                await self._closing.wait()
                if self._wire.closing is not None:
                    self._wire.closing()
                with anyio.move_on_after(FLUSH_TIMEOUT):  # write what is left
                    await self._wire.drain()
                tg.cancel_scope.cancel()
        finally:
            session.close(session.close_reason or "closed locally", self._loop_time())
            self._kick()  # (every call settled, every handler interrupted)
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(FLUSH_TIMEOUT):
                    try:
                        await self._wire.aclose()
                    except Exception:  # the connection is going away: nothing more to tell
                        pass
                await self._disconnect_hooks()
            self._finished.set()

    async def _timer_loop(self) -> None:
        session = self._session
        while True:
            at = session.get_timer()
            self._timer_at = math.inf if at is None else at
            now = self._loop_time()
            if at is not None and at <= now:
                session.handle_timer(now)
            else:
                with anyio.move_on_after(math.inf if at is None else at - now):
                    await self._timer_wanted.wait()
                self._timer_wanted = self._new_event()
            self._kick()
