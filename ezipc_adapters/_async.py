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

import asyncio
import contextlib
import functools
import inspect
import math
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import sniffio
from anyio.abc import SocketListener
from anyio.streams.stapled import StapledByteStream

from ezipc_proto import (
    AUTH_METHOD,
    AUTH_TIMEOUT,
    FLUSH_TIMEOUT,
    NEED_DATA,
    PAUSED,
    Connected,
    Interrupt,
    Job,
    RemoteError,
    RequestCancelled,
    Settle,
)

from ._address import DEFAULT_ADDRESS, Address, parse_address
from ._async_io import (
    ProtocolWire,
    StreamWire,
    TLSListener,
    Wire,
    end_process,
    on_asyncio,
    open_wire,
    stdio_stream,
)
from ._options import Options, Stats
from ._peer import PeerCredentials, format_sockaddr
from ._registry import Handler, Hooks, call_handler, log, not_found
from ._serving import ServerBase, announcing, listen_sockets

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # (anyio's dependency before 3.11)
if TYPE_CHECKING:
    from .asgi import ASGIApp

__all__ = ["Call", "Sent", "BatchCall", "Remote", "Server", "Client", "connect", "connect_subprocess"]

T = TypeVar("T")
#: Results that are plainly not awaitable: inspect.isawaitable's ABC check costs ~1.5 µs.
_PLAIN = frozenset((int, str, float, bool, list, dict, type(None)))
_HOOK_TIMEOUT = 10.0  # how long disconnect hooks may take once the connection has ended


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

    __slots__ = ("remote", "id", "method", "_done", "_result", "_error", "_event", "_callback", "_seen")

    def __init__(self, remote: Remote, method: str, callback: Callable[[Call], Any] | None) -> None:
        super().__init__()
        self.remote = remote
        self.id: Any = None
        self.method = method
        self._done = False
        self._result: Any = None
        self._error: BaseException | None = None
        self._event: anyio.Event | None = None
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
            if self._event is None:
                self._event = anyio.Event()
            try:
                await self._event.wait()
            except BaseException:
                if not self._done:  # our task was cancelled: the peer need not go on
                    self.remote._cancel(self)
                raise
        return self.result()

    def _settle(self, result: Any, error: BaseException | None) -> None:
        self._done = True
        self._result = result
        self._error = error
        if self._event is not None:
            self._event.set()
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


class Remote:
    """The other end of one connection; the same on both sides.

    ``request``, ``notify`` and ``batch`` send at once and return something to await;
    requests and notifications from the peer are served by the hooks of the ``Server``
    or ``Client`` it belongs to. ``stats`` counts traffic; ``data`` is a dict for the
    application's own per-connection state; ``remote_address``, ``peer_certificate``
    (TLS) and ``peer_credentials`` (Unix sockets: pid, uid, gid) describe the peer.
    """

    def __init__(self, wire: Wire, hooks: Hooks, options: Options, *, server: Server | None = None) -> None:
        self._wire = wire
        self._hooks = hooks
        self.options = options
        self.server = server
        self.data: dict[str, Any] = {}
        self.local_address = wire.local
        self.remote_address = wire.peer
        self.peer_certificate: dict[str, Any] | None = wire.certificate
        self.peer_credentials: PeerCredentials | None = wire.credentials
        # The clock: the event loop's own, read directly (anyio's costs a lookup each time).
        self._loop_time: Callable[[], float] = (
            asyncio.get_running_loop().time if on_asyncio() else anyio.current_time
        )
        self._session = options.session(
            now=self._loop_time(), name=self.remote_address, server=server is not None, framing=wire.framing
        )
        self._tg: anyio.abc.TaskGroup | None = None
        self._timer_wanted = anyio.Event()
        self._closing = anyio.Event()
        self._finished = anyio.Event()
        self._kicking = False
        self._timer_at = math.inf
        self._disconnected = False

    def __repr__(self) -> str:
        return f"<Remote {self.remote_address} {'closed' if self.closed else 'open'}>"

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
        call.id = session.request(method, params, now=self._loop_time(), timeout=timeout, waiter=call)
        # (a request makes no event to act on: the wire takes it, the timer may be nearer)
        self._wire.output_ready()
        if timeout is not None or session.request_timeout is not None:
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
        )
        for call, id in zip(calls, ids, strict=True):
            call.id = id
        self._kick()
        return BatchCall(calls)

    def _call_soon(self, method: str, params: Any, timeout: float | None) -> Call:
        return self.request(method, params, timeout=timeout)

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
        try:
            while True:
                ev = session.next_event()
                kind = type(ev)
                if kind is Settle:
                    ev.waiter._settle(ev.result, ev.error)  # type: ignore[union-attr]
                elif kind is Job:
                    self._run_job(ev)  # type: ignore[arg-type]
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
            if type(result) in _PLAIN or not inspect.isawaitable(result):
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
            if not reported:  # interrupted: the session drops what it is told
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
                self._timer_wanted = anyio.Event()
            self._kick()


# ---- clients -----------------------------------------------------------------------------


class _Connecting(AbstractAsyncContextManager["Remote"]):
    """What ``connect`` returns: ``async with`` it for the ``Remote``; any other use says so."""

    def __init__(self, open: Callable[[], AbstractAsyncContextManager[Remote]], what: str) -> None:
        self._open = open
        self._what = what
        self._cm: AbstractAsyncContextManager[Remote] | None = None

    async def __aenter__(self) -> Remote:
        self._cm = self._open()
        return await self._cm.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._cm is not None
        return await self._cm.__aexit__(exc_type, exc, tb)

    def _misused(self, how: str) -> TypeError:
        return TypeError(f"{self._what}(...) {how}: use `async with {self._what}(...) as remote:`")

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"{self._what}(...) gives an async context manager, not a Remote, so it has no "
            f"{name!r}: use `async with {self._what}(...) as remote:`"
        )

    def __await__(self) -> Generator[Any, None, Remote]:
        raise self._misused("is not awaited")

    def __enter__(self) -> Remote:
        raise self._misused("needs `async with`, not `with`")

    def __exit__(self, *exc: object) -> None:
        pass


class Client(Hooks):
    """A client whose hooks serve the requests and notifications its server sends.

    ``client.connect(address)`` is an async context manager yielding the ``Remote``.
    """

    def __init__(self, framing: str = "ndjson", **options: Any) -> None:
        super().__init__()
        self.options = Options.build({"framing": framing}, options)

    def connect(
        self,
        address: str | Address = DEFAULT_ADDRESS,
        *,
        timeout: float | None = None,
        server_hostname: str | None = None,
        **options: Any,
    ) -> AbstractAsyncContextManager[Remote]:
        """``async with client.connect(address) as remote:``: connect (within ``timeout``
        seconds; ``ConnectError`` if it cannot), yield the ``Remote``, close on exit."""
        opts = self.options.replace(**options)
        addr = parse_address(address)
        return _Connecting(lambda: self._connect(addr, opts, timeout, server_hostname), "connect")

    @asynccontextmanager
    async def _connect(
        self, addr: Address, opts: Options, timeout: float | None, server_hostname: str | None
    ) -> AsyncIterator[Remote]:
        wire = await open_wire(addr, opts, timeout=timeout, server_hostname=server_hostname)
        async with _running(Remote(wire, self, opts)) as remote:
            log.info("connected to %s", remote.remote_address)
            if opts.auth_token is not None and not wire.presents_token:
                await remote.request(AUTH_METHOD, {"token": opts.auth_token}, timeout=timeout or AUTH_TIMEOUT)
            yield remote

    def connect_subprocess(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stderr: Any = None,
        terminate_timeout: float = 2.0,
        **options: Any,
    ) -> AbstractAsyncContextManager[Remote]:
        """``async with client.connect_subprocess(argv) as remote:``: start ``argv`` and
        talk to it over its stdin/stdout. On exit: close its stdin, wait up to
        ``terminate_timeout`` seconds, then terminate, and kill if need be. ``stderr`` is
        inherited unless given (e.g. ``subprocess.DEVNULL``)."""
        opts = self.options.replace(**options)
        if opts.framing == "auto":
            opts = opts.replace(framing="ndjson")
        spawn = self._spawn(
            list(argv), opts, cwd=cwd, env=env, stderr=stderr, terminate_timeout=terminate_timeout
        )
        return _Connecting(lambda: spawn, "connect_subprocess")

    @asynccontextmanager
    async def _spawn(
        self,
        argv: list[str],
        opts: Options,
        *,
        cwd: str | None,
        env: dict[str, str] | None,
        stderr: Any,
        terminate_timeout: float,
    ) -> AsyncIterator[Remote]:
        import subprocess

        process = await anyio.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=cwd, env=env
        )
        assert process.stdin is not None and process.stdout is not None
        stream = StapledByteStream(process.stdin, process.stdout)
        try:
            async with _running(
                Remote(StreamWire(stream, f"subprocess:{process.pid}"), self, opts)
            ) as remote:
                remote.data["process"] = process
                yield remote
        finally:
            with anyio.CancelScope(shield=True):
                await end_process(process, terminate_timeout)


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
            log.info("connection to %s closed (%s)", remote.remote_address, remote._session.close_reason)
    if raised is not None:
        raise raised


def connect(
    address: str | Address = DEFAULT_ADDRESS,
    *,
    framing: str = "ndjson",
    timeout: float | None = None,
    server_hostname: str | None = None,
    **options: Any,
) -> AbstractAsyncContextManager[Remote]:
    """``async with connect(address) as remote:``, a ``Client`` with no hooks."""
    return Client(framing, **options).connect(address, timeout=timeout, server_hostname=server_hostname)


def connect_subprocess(
    argv: Sequence[str], *, framing: str = "ndjson", **options: Any
) -> AbstractAsyncContextManager[Remote]:
    """``async with connect_subprocess(["prog", "arg"]) as remote:``, with no hooks."""
    keys = ("cwd", "env", "stderr", "terminate_timeout")
    kwargs = {k: options.pop(k) for k in keys if k in options}
    return Client(framing, **options).connect_subprocess(argv, **kwargs)


# ---- the server ----------------------------------------------------------------------


class Server(ServerBase[Remote]):
    """Serves connections with the hooks registered on it.

    ``start(*addresses)`` blocks (SIGINT/SIGTERM shut down gracefully); ``await
    serve(*addresses)`` does the same inside your event loop. No address means
    ``tcp://127.0.0.1:9002``. ``framing="auto"`` (the default) answers each connection in
    the framing it speaks.
    """

    backend = "asyncio"

    def __init__(self, framing: str = "auto", **options: Any) -> None:
        super().__init__(framing, **options)
        self._stop: anyio.Event | None = None
        self._stop_requested = False

    def start(
        self,
        *addresses: str,
        backend: str | None = None,
        use_uvloop: bool = False,
        ready: Callable[[list[str]], Any] | None = None,
    ) -> None:
        """Serve until SIGINT or SIGTERM, then shut down gracefully. Blocks. Where it
        listens is logged (on stderr, unless the application set up logging).

        ``ready(addresses)``, if given, is called once listening, with the bound addresses
        (e.g. to print the port chosen for ``tcp://127.0.0.1:0``)."""
        backend = backend or self.backend
        try:
            anyio.get_current_task()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "Server.start() runs its own event loop: use `await server.serve(...)` inside an event loop"
            )
        options = {"use_uvloop": True} if use_uvloop and backend == "asyncio" else {}
        with announcing():
            try:
                anyio.run(self._main, addresses, ready, backend=backend, backend_options=options)
            except BaseExceptionGroup as group:
                raise _alone(group) from None

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
                    self._log_signal(signum)
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
        are returned (also in ``server.addresses``). Raises ``OSError`` naming the
        address if one cannot be listened on."""
        self._stop = anyio.Event()
        if self._stop_requested:
            self._stop.set()
        parsed = [parse_address(a) for a in (addresses or (DEFAULT_ADDRESS,))]
        options = self.options
        sockets: list[tuple[socket.socket, Address]] = []
        listeners: list[anyio.abc.Listener[Any] | asyncio.AbstractServer] = []
        unix_paths: list[str] = []
        try:
            for addr in parsed:
                if addr.kind != "stdio":
                    sockets += [(sock, addr) for sock in listen_sockets(addr, options.unix_mode)]
                    if addr.kind == "unix":
                        unix_paths.append(addr.path)
            self.addresses = [format_sockaddr(sock.family, sock.getsockname()) for sock, _ in sockets]
            stdio = any(a.kind == "stdio" for a in parsed)
            if stdio:
                self.addresses.append("stdio")
            async with anyio.create_task_group() as connections:
                async with anyio.create_task_group() as accepting:
                    for sock, addr in sockets:
                        if options.ssl is None and on_asyncio():  # the protocol wire
                            accepted = functools.partial(self._accepted, connections)
                            server = await asyncio.get_running_loop().create_server(
                                functools.partial(ProtocolWire, accepted), sock=sock
                            )
                            listeners.append(server)
                            continue
                        listener: anyio.abc.Listener[Any] = await SocketListener.from_socket(sock)
                        if options.ssl is not None and addr.kind == "tcp":
                            listener = TLSListener(listener, options.ssl, standard_compatible=False)
                        listeners.append(listener)
                        accepting.start_soon(listener.serve, self._handle_stream, connections)
                    sockets.clear()  # (the listeners own them now)
                    if stdio:
                        accepting.start_soon(self._serve_stdio)
                    self._log_listening()
                    task_status.started(list(self.addresses))
                    await self._stop.wait()
                    accepting.cancel_scope.cancel()
                await _close_listeners(listeners)
                await self._shut_down()
        finally:
            with anyio.CancelScope(shield=True):
                await _close_listeners(listeners)
            for sock, _ in sockets:
                sock.close()
            for path in unix_paths:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            self._stop_requested = False
            self.addresses = []
            self._log_stopped()

    async def _shut_down(self) -> None:
        remotes = list(self.remotes)
        self._log_shutdown(len(remotes))
        for remote in remotes:
            remote._session.shutdown(remote._loop_time())
            remote._kick()
        for remote in remotes:
            await remote._finished.wait()

    async def _serve_stdio(self) -> None:
        await self._handle(StreamWire(stdio_stream()))
        self.shutdown()  # stdin is closed: nothing more can come

    def _accepted(self, connections: anyio.abc.TaskGroup, wire: ProtocolWire) -> None:
        """A connection accepted by asyncio (a loop callback): served in a task of its own."""
        token = sniffio.current_async_library_cvar.set("asyncio")
        try:
            connections.start_soon(self._handle, wire)
        finally:
            sniffio.current_async_library_cvar.reset(token)

    async def _handle_stream(self, stream: anyio.abc.ByteStream) -> None:
        await self._handle(StreamWire(stream))

    async def _handle(self, wire: Wire) -> None:
        where = wire.peer
        refusal = self._refusal(wire.credentials, where, len(self._remotes))
        if refusal is not None:
            with anyio.move_on_after(1.0), contextlib.suppress(Exception):
                await wire.refuse(refusal)
            return
        remote = Remote(wire, self, self.options, server=self)
        self._add(remote, where)
        try:
            await remote._run()
        finally:
            self._remove(remote, where, remote._session.close_reason)

    async def broadcast(
        self, method: str, params: Any = None, *, exclude: Remote | Iterable[Remote] | None = None
    ) -> None:
        """Notify every connected peer (but those in ``exclude``, e.g. the sender)."""
        for sent in self._notify_all(method, params, exclude):
            await sent

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
        for remote, call in self._request_all(method, params, timeout, exclude).items():
            try:
                results[remote] = await call if isinstance(call, Call) else call
            except Exception as exc:
                results[remote] = exc
        return results

    bcast_notif = broadcast  # the original EZ-IPC's names
    bcast_request = broadcast_request

    def asgi(self, path: str | None = None) -> ASGIApp:
        """This server as an ASGI application (WebSocket and HTTP): see ``ezipc_adapters.asgi``."""
        from .asgi import ASGIApp

        return ASGIApp(self, path)


async def _close_listeners(listeners: list[anyio.abc.Listener[Any] | asyncio.AbstractServer]) -> None:
    for listener in listeners:
        if isinstance(listener, anyio.abc.Listener):
            await listener.aclose()
        else:
            listener.close()  # asyncio's (or uvloop's, not an AbstractServer subclass)
    listeners.clear()


def _alone(group: BaseExceptionGroup[Any]) -> BaseException:
    """The one error inside nested exception groups (else the group itself)."""
    while len(group.exceptions) == 1 and isinstance(group.exceptions[0], BaseExceptionGroup):
        group = group.exceptions[0]
    alone: BaseException = group.exceptions[0] if len(group.exceptions) == 1 else group
    return alone
