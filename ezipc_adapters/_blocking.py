"""The blocking driver: an ``ezipc_proto.Session`` per connection, over plain sockets and
pipes, with threads and no event loop.

* I/O: one thread waits on every connection with ``selectors`` (``_blocking_io.Loop``),
  reads, feeds the sessions and keeps their timers: a server's is the thread that runs
  ``serve_forever``; the process's blocking clients share one. It never runs a handler.
* Handlers run in a ``concurrent.futures`` pool (``max_workers`` threads per server or
  client), a connection's in turn by its runners: one more joins while its jobs wait
  with every runner in a handler (``_blocking_runners.py``). A handler that takes a
  ``cancelled`` parameter gets a ``threading.Event``, set when the peer cancels the
  request or the connection ends.
* Writing: whoever made bytes (the I/O thread, a handler, a caller of ``request``) sends
  them at once, without blocking, under the connection's lock. What the socket does not
  take waits for the I/O thread, and meanwhile nothing more is taken from the session, so
  its ``write_buffer_size`` bounds what we hold.
* A caller of ``request`` sleeps on a lock of its own, which the I/O thread releases;
  on a plain socket it reads its answer itself instead, and a worker that has answered
  reads for its connection's next request (``_blocking_callers.py``).

Every decision is the session's: this module moves bytes, runs handlers, keeps the clock.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ezipc_proto import (
    FLUSH_TIMEOUT,
    NEED_DATA,
    PAUSED,
    Connected,
    Id,
    Interrupt,
    Job,
    JobState,
    RemoteError,
    RequestCancelled,
    Settle,
)

from ._blocking_callers import CallerReads, CallFuture, NextJob, Waiter
from ._blocking_io import Loop, PipeStream, SocketStream, Stream, acquire, linger, monotonic
from ._blocking_runners import Pool, Runners
from ._options import Options
from ._peer import PeerCredentials
from ._registry import PLAIN_RESULTS, Handler, Hooks, call_handler, log, not_found
from ._serving import RemoteBase

__all__ = ["Remote"]

if TYPE_CHECKING:
    from ._blocking_endpoints import Server

_LINGER = 2.0  # how long a closed connection reads on, for the peer's EOF (no reset)
_HOOK_TIMEOUT = 10.0  # how long close() waits for the connection to end
DEFER_COUNT = 8  # at most this many handlers' outcomes are held back (see Remote._report)
CORK_PENDING = 8  # a submit()'s request is held back only while more calls than this await answers
CORK_COUNT = 16  # and at most this many in a row (see Remote.submit)
CORK_LIMIT = 8 * 1024  # and at most this much of our output (as the async driver's chunks)


# .ours: a thread of ours (a worker, or an I/O thread); .handling: (remote, job) whose
# handler this thread runs (its calls are made for that job: see Session.request).
class _Local(threading.local):
    ours = False
    handling: tuple[Remote, Job] | None = None  # (a default: getattr() of a missing one costs ~1 µs)


_local = _Local()


# Events whose dispatch acts on the session only through _call (see _kick).
_INERT = frozenset((Settle, Job, Interrupt))


def _handler_waits(handling: tuple[Remote, Job], on: Remote, waiting: bool, ids: Sequence[Id] = ()) -> None:
    """A handler (``handling``: its connection and job) begins (or ends) waiting for an
    answer from ``on``'s peer, to its calls ``ids``. Its pool thread is held meanwhile
    (see ``_blocking_runners``). A call on its own connection has its slot lent by the
    session (``Session.request``'s ``job``), and is given up by it if the job is
    cancelled. On another, the handler's own connection is told (``Session.waiting``):
    the answer may need its peer's next requests (A's handler calls B, whose handler
    calls A over the first connection); and if its peer cancels the job, or has already,
    the calls are given up here (see ``_give_up``), as a cancelled async handler's are."""
    owner, job = handling
    owner._calls_peer(waiting)
    if owner is on:
        return
    if waiting:
        if owner._call(lambda s: owner._wait_elsewhere(s, job, on, ids)):
            on._give_up(ids, job)
    else:
        owner._call(lambda s: owner._resume(s, job))


def _run_awaitable(value: Any) -> Any:
    """An async handler's result, computed in this (worker) thread with asyncio.run."""
    import asyncio  # (here: a blocking program need not load asyncio, ~2 MiB)

    if inspect.iscoroutine(value):
        return asyncio.run(value)

    async def wait() -> Any:
        return await value

    return asyncio.run(wait())


class Remote(CallerReads, Runners, RemoteBase):
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
        pool: Pool,
        loop: Loop,
        *,
        server: Server | None = None,
        framing: str | None = None,
        local_address: str = "",
        remote_address: str = "",
        peer_credentials: PeerCredentials | None = None,
    ) -> None:
        super().__init__(
            hooks,
            options,
            server,
            local=local_address,
            peer=remote_address,
            certificate=stream.peer_certificate(),
            credentials=peer_credentials,
            now=monotonic(),
            framing=framing or stream.framing,
        )
        self.server: Server | None = server
        self._stream = stream
        self._pool = pool
        self._loop = loop
        self._lock = threading.Lock()  # the session, and the stream's writing side
        # Handlers' outcomes, (job, result, exception), wait here for whoever next holds
        # the lock (see _report).
        self._reports: deque[tuple[Job, Any, BaseException | None]] = deque()
        self._reports_lock = threading.Lock()
        self._reporting = False  # a worker is applying the reports: the others need not
        self._paused = False  # the session said PAUSED: no reading until our output drains
        self._writing = False  # a thread sends, outside the lock (see _take_output_locked)
        self._deferred = False  # our requests are held back (see submit)
        self._held = 0  # how many in a row (see submit)
        # Our handlers waiting for answers on other connections: job -> (there, call ids).
        self._elsewhere: dict[Job, tuple[Remote, Sequence[Id]]] = {}
        # A plain socket or pipe: whoever made output sends it outside the lock (see
        # _take_output_locked); its backlog() is its ``pending`` count, read as such on
        # the hot paths (a call less, eight times a sequential call).
        self._combine = type(stream) is SocketStream or type(stream) is PipeStream
        # May a read leave bytes that no readiness tells of (TLS records; a regular file)?
        self._rereads = type(stream).buffered is not Stream.buffered or not stream.selectable
        self._init_reading(stream)
        self._init_runners()
        self._watching = (False, False)  # what the loop watches: (readable, writable)
        self._timer_at = math.inf
        self._closing = False
        self._flush_deadline: float | None = None
        self._ended = False
        self._lost = False  # the connection broke: no flush, no linger
        self._closed_here = False  # close() was called
        self._done = threading.Event()
        self._finalizers: list[Callable[[float], None]] = []  # close(at): end a subprocess
        self._linger = _LINGER  # (a subprocess's: its terminate_timeout)
        self._on_finish: list[Callable[[], None]] = []  # once the connection has ended

    def __enter__(self) -> Remote:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- calling the peer ------------------------------------------------------------

    def request(self, method: str, params: Any = None, *, timeout: float | None = None) -> Any:
        """Call ``method`` and wait for its result.

        Raises ``RemoteError`` (an error answer), ``TimeoutError`` (no answer within
        ``timeout`` seconds, default ``request_timeout``; the peer is told to cancel),
        ``ConnectionClosed`` (the connection ended first), ``LimitExceeded``
        (``max_pending`` requests already await answers; nothing was sent) or, in a
        handler, ``RequestCancelled`` (the peer cancelled the request it handles: the
        call is given up, and the peer told). If the wait is interrupted (e.g.
        KeyboardInterrupt), the peer is told to cancel as well."""
        if threading.get_ident() == self._loop.ident:
            raise RuntimeError(
                "request() would deadlock on the connection's I/O thread; "
                "use submit(), or call from another thread"
            )
        waiter = Waiter()
        handling, job = self._handling()  # (a handler's call: see Session.request)
        id = self._kick(
            lambda s: s.request(method, params, now=monotonic(), timeout=timeout, waiter=waiter, job=job)
        )
        if handling is not None:
            _handler_waits(handling, self, True, (id,))
        try:
            if self._caller_may_read:
                self._read_for(waiter)
            if not waiter.done:  # (most often it is: the caller read its answer itself)
                acquire(waiter.lock)
        except BaseException:
            self._cancel(id)
            raise
        finally:
            if handling is not None:
                _handler_waits(handling, self, False)
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
        future = CallFuture(self, callback)
        job = self._handling()[1]  # (a handler's call: see Session.request)
        # While more than CORK_PENDING calls await answers and a caller reads for itself
        # (the loop stands aside), the request is held back, CORK_COUNT at most, to go
        # in one send() with the next ones (as Nagle's rule: the peer has work meanwhile).
        # Written before a caller waits or reads (CallFuture._read, _collected), by any
        # other call or notification, and by the loop's timer within GRACE (_give_back).
        # A send per request was half of submit()'s time: 64 pipelined submits to the
        # floor's server, 36-38k -> 53-58k calls/s (ezipc's server: 38-44k -> 50-53k).
        future._id = self._kick(
            lambda s: s.request(method, params, now=monotonic(), timeout=timeout, waiter=future, job=job),
            hold=True,
        )
        if self._caller_may_read and callback is None and not self._aside:
            # Its result() will likely read the answer: the loop stands aside until then
            # (GRACE at most), else the I/O thread reads and both threads take turns at
            # the GIL (64 pipelined submits to a plain server: 21k -> 38-45k calls/s).
            self._stand_aside()
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
        calls = [(method, params, Waiter()) for method, params in requests]
        notes = list(notify)
        handling, job = self._handling()  # (a handler's call: see Session.request)
        ids = self._call(lambda s: s.batch(calls, notes, now=monotonic(), timeout=timeout, job=job))
        results: list[Any] = []
        if handling is not None:
            _handler_waits(handling, self, True, ids)
        try:
            for _, _, waiter in calls:
                acquire(waiter.lock)
                if waiter.error is None or isinstance(waiter.error, RemoteError):
                    results.append(waiter.error or waiter.result)
                else:
                    raise waiter.error
        except BaseException:
            for id in ids:
                self._cancel(id)
            raise
        finally:
            if handling is not None:
                _handler_waits(handling, self, False)
        return results

    def _handling(self) -> tuple[tuple[Remote, Job] | None, Job | None]:
        """The connection and job whose handler runs on this thread, if any; and that
        job, if it is this connection's (its calls here lend its slot)."""
        handling: tuple[Remote, Job] | None = _local.handling
        return handling, handling[1] if handling is not None and handling[0] is self else None

    def _as_caller(self, wait: Callable[[], Any], id: Id) -> Any:
        """``wait()``: a wait for the answer to our call ``id``, counted as such when a
        handler waits (see ``_handler_waits``)."""
        handling = _local.handling
        if handling is None:
            return wait()
        _handler_waits(handling, self, True, (id,))
        try:
            return wait()
        finally:
            _handler_waits(handling, self, False)

    def close(self, reason: str = "closed locally") -> None:
        """Close now: pending calls fail with ``ConnectionClosed``, answers still being
        computed are dropped, what is queued is written (briefly). Waits (briefly) until
        the connection has ended, unless called from its I/O thread; a client does not
        wait for the peer to finish what it still runs. (A subprocess is ended then: see
        ``Client.connect_subprocess``.)"""
        self._closed_here = True
        at = monotonic()
        self._call(lambda s: s.close(reason, at))
        if threading.get_ident() != self._loop.ident:
            self._done.wait(_HOOK_TIMEOUT)
        finalizers, self._finalizers = self._finalizers, []
        for finalizer in finalizers:
            finalizer(at)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the connection has ended (True), or ``timeout`` seconds (False)."""
        return self._done.wait(timeout)

    def _cancel(self, id: Any) -> None:
        self._call(lambda s: s.cancel(id, monotonic()))

    def _wait_elsewhere(self, session: Any, job: Job, there: Remote, ids: Sequence[Id]) -> bool:
        """(Under the lock.) Our handler of ``job`` waits for ``there``'s answers to
        ``ids``; True if ``job`` was answered without it already (they are to be given up)."""
        session.waiting(job, monotonic())
        if job.state is JobState.INTERRUPTED:
            return True
        self._elsewhere[job] = (there, ids)
        return False

    def _resume(self, session: Any, job: Job) -> None:
        """(Under the lock.) Our handler of ``job`` has its answers from elsewhere."""
        self._elsewhere.pop(job, None)
        session.resumed(job, monotonic())

    def _give_up(self, ids: Sequence[Id], job: Job) -> None:
        """Give up our calls ``ids``, made by a handler of another connection whose
        ``job`` was answered without it (cancelled by its peer; or its connection closed):
        they fail with ``RequestCancelled``, and our peer is told."""
        why = f"the request it was made for ({job.method!r}) ended: cancelled, or its connection closed"
        self._call(lambda s: [s.cancel(id, monotonic(), RequestCancelled(why)) for id in ids])

    # ---- driving the session (any thread) --------------------------------------------

    def _call(self, action: Callable[[Any], Any]) -> Any:
        """Do ``action(session)`` under the lock, then act on what the session says (in
        the same turn of the lock: one acquisition less per call, which matters when
        many threads share a connection)."""
        return self._kick(action)

    def _kick(self, action: Callable[[Any], Any] | None = None, hold: bool = False) -> Any:
        """Do what the session says until it needs bytes or our output to drain; write
        what it produced (``hold``: unless many calls await answers, see ``submit``);
        keep the loop watching what it should. ``action(session)`` first, if given (its
        result is returned)."""
        session = self._session
        result = None
        while True:
            with self._lock:
                reports = self._reports
                if reports:
                    # (Taken one by one, as a deque's popleft() is atomic: no turn of the
                    # reports' lock; one another thread adds meanwhile is taken too.)
                    now = monotonic()
                    while reports:
                        job, value, failure = reports.popleft()
                        try:
                            if failure is None:
                                session.answer(job, value, now)
                            else:
                                session.fail(job, failure, now)
                        except Exception:  # (a bug: the others' outcomes still count)
                            log.exception("%s: a handler's outcome was refused", self.remote_address)
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
                if (
                    hold
                    and self._aside
                    and self._held < CORK_COUNT
                    and session.output_size < CORK_LIMIT
                    and session.pending_calls > CORK_PENDING
                ):
                    self._deferred = True
                    self._held += 1
                    out = b""
                else:
                    hold = False
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
            again = self._paused
            for ev in events:
                again = again or type(ev) not in _INERT
                self._dispatch(ev)
            if not again:
                # Settling a call, handing a job to a runner, interrupting one: none of
                # it changes the session (what they lead to goes through _call), so
                # there is nothing new to look for: a pass of the lock less per message.
                return result

    def _report(self, job: Job, result: Any, failure: BaseException | None) -> None:
        """Tell the session a handler's outcome: ``result``, or ``failure`` if not None.
        Many workers finishing at once would queue on the connection's lock, each waiting
        for the others' turns (and for the GIL between them): instead each leaves its
        outcome in a queue, and one of them at a time applies all there are, in one turn
        of the lock (pipelined calls to the blocking server, measured interleaved:
        18.5-21.9k -> 23.5-25.0k requests/s). An outcome is a tuple, not a closure, and
        those applied together share one reading of the clock.

        While more of this connection's jobs wait to run, the outcome is held back (up
        to DEFER_COUNT of them), to be applied, and its answer written, with the next
        ones: a write per answer was a send() and a turn of the GIL each, and a turn of
        the lock per outcome cost more than the answer's own work. They are applied as
        soon as no job waits: before a runner runs the last one (which may block), reads
        or leaves; and by the check each RUNNER_GRACE while jobs wait (the handler
        running may block). The floor's client, 64 calls in flight, interleaved medians
        of 6 runs, holding the answers' output back: 46.4k -> 55.1k requests/s, the
        server's CPU 22 -> 19 µs a request (4 answers at most: 55.9k; 16: 47.7k; every
        waiting job's: 37.4k, as the client and server then take turns instead of
        overlapping). Holding the outcomes themselves, not just their output (a turn of the
        lock per 8 answers, not per answer), with the thread-local's defaults: 36.4k ->
        44.0k (interleaved medians of 6, in a slower phase of the machine)."""
        with self._reports_lock:
            self._reports.append((job, result, failure))
            if self._reporting or (self._jobs and len(self._reports) < DEFER_COUNT):
                return  # the worker applying them takes this one before it stops; or held
            self._reporting = True
        try:
            while True:
                self._kick()  # (takes every report in the list)
                with self._reports_lock:
                    if not self._reports:  # (checked and given up in one turn: none is missed)
                        self._reporting = False
                        return
        except BaseException:
            with self._reports_lock:
                self._reporting = False
            raise

    def _flush(self) -> None:
        """Apply the outcomes held back for the jobs after them (see ``_report``), and
        write their answers and the requests held back (see ``submit``)."""
        self._deferred = False
        self._kick()

    def _take_output_locked(self) -> bytes:
        """What this thread is to send, outside the lock (plain sockets and pipes; b"" if
        another thread is sending: it takes this output too before it stops, so that
        many handlers finishing at once make a few large writes, not many small ones).
        A TLS stream is written here, under the lock (its SSL object is shared with the
        reading side)."""
        if self._writing or self._ended:
            return b""
        if not self._combine or self._stream.pending:
            self._write_locked()
            return b""
        data = self._session.data_to_send()
        if data:
            self._writing = True
            self._deferred = False
            self._held = 0
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
                data = b"" if failed is not None or stream.pending else session.data_to_send()
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
            if stream.backlog():
                stream.flush()
                if stream.backlog():
                    return  # (the loop waits for the peer to read: see _wanted_locked)
            # (Also right after a flush that emptied the backlog: what the session made
            # meanwhile has no other writer, and no readiness to wait for. Left there, the
            # last answers to a peer that had been slow to read stayed unsent.)
            data = session.data_to_send()
            if data:
                stream.write(data)
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
            reader = self._caller_reading
            if type(reader) is NextJob and not reader.job and threading.get_ident() == self._reader_ident:
                reader.job = (ev, handler, token)  # (this worker runs it: see _run_jobs)
                return
            self._queue_job((ev, handler, token))
        elif kind is Interrupt:
            if ev.job.context is not None:
                ev.job.context.set()
            if self._elsewhere:
                waits = self._elsewhere.pop(ev.job, None)  # (its handler's, on another connection)
                if waits is not None:
                    waits[0]._give_up(waits[1], ev.job)
        elif kind is Connected:
            if self._hooks.on_connect:
                self._submit(self._connect_hooks)
            else:
                with self._lock:
                    self._session.start(monotonic())
        else:  # Close
            self._closing = True
            self._in_loop(self._finish_writing)

    def _start_thread(self, fn: Callable[[], Any]) -> None:
        def run() -> None:
            _local.ours = True
            fn()

        threading.Thread(target=run, name="ezipc-runner", daemon=True).start()

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

    def _serve_one(self, job: Job, handler: Handler | None, token: threading.Event | None) -> None:
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
        outer, _local.handling = _local.handling, (self, job)  # (for its calls)
        try:
            result = call_handler(handler, job.params, self, token)
            if handler.is_async or (type(result) not in PLAIN_RESULTS and inspect.isawaitable(result)):
                result = _run_awaitable(result)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt too: answered, then raised
            _local.handling = outer
            self._report(job, None, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            _local.handling = outer
            self._report(job, result, None)

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
            self._caller_reading is None  # (most often false: the session's property last)
            and not self._aside
            and not self._paused
            and not self._closing
            and self._session.reading,
            # (Not while a thread sends outside the lock: its bytes count as the stream's
            # backlog meanwhile, and it looks again when done. Watching then woke the loop
            # for nothing, for about one answer in four of a pipelined server.)
            (self._stream.pending if self._combine else self._stream.backlog()) > 0 and not self._writing,
        )

    def _watch(self) -> None:
        """Make the loop watch what it should (from any thread)."""
        with self._lock:
            self._watch_locked()

    def _watch_locked(self) -> None:
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

    def _on_readable(self) -> None:
        if self._ended:
            return
        # The read, and what the session makes of it, in one turn of the lock.
        self._kick(self._read_locked)
        session = self._session
        if self._rereads and session.reading and not self._paused:
            stream = self._stream
            if stream.buffered() or not stream.selectable:
                self._loop.call_soon(self._on_readable)  # (no readiness will tell of it)

    def _read_locked(self, session: Any) -> None:
        """Feed the session what the stream has now (under the lock)."""
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
        elif self._closed_here and self.server is None and isinstance(self._stream, SocketStream):
            # Our client's close(): its calls have failed, and nothing more of the peer's
            # is wanted, so it does not wait for the peer's EOF, as the async adapter does
            # not. (close() took _LINGER, 2 s, whenever the peer still ran a call of ours.)
            # A child over pipes still gets its time to finish (see connect_subprocess).
            with self._lock:
                self._stream.shutdown_write()
            self._end()
        else:
            linger(self._loop, self._stream, self._linger, self._end, self._lock)

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
