"""The session: everything one peer's connection decides, as a state machine with time
passed in.

A :class:`Connection` knows the protocol: framing, validation, ids. A :class:`Session`
wraps one and adds the policy of a live connection, the same for every driver: the calls
we made (each with its deadline and its cancel notice), the requests and notifications we
received (when each may start, their order, their bounds), cancellation both ways, the
authentication gate, draining and shutting down, EOF, the idle and slow-message timeouts,
late answers, flow control and the counters.

Like aioquic's ``QuicConnection`` it does no I/O and reads no clock. The driver owns the
bytes, the handlers and the time, and the session tells it what to do:

* bytes in: ``receive_data(data, now)`` (``b""`` at EOF);
* events out: ``next_event()`` gives a :class:`Job` (run this request or notification),
  :class:`Interrupt` (stop that handler: it has been answered already),
  :class:`Settle` (a call we made has ended: its result or its error), :class:`Connected`
  (run the connect hooks, then call :meth:`Session.start`) or :class:`Close` (write what
  is left, then close), ``NEED_DATA`` (read more) or ``PAUSED`` (our output is over
  ``write_buffer_size``: write it before reading more);
* bytes out: ``data_to_send()``; take it when the transport can take more, so that what
  waits counts against ``write_buffer_size``;
* time: ``get_timer()`` says when the session next needs ``handle_timer(now)``;
* handlers report back: ``answer(job, result, now)`` or ``fail(job, exc, now)``
  (and, for a notification whose handler has begun, ``started(job, now)``);
* our calls: ``request``, ``batch``, ``notify``, ``cancel``; and ``shutdown``, ``close``.

Flow control (docs/limits.md): reading pauses only while our own unsent output is over
``write_buffer_size``, so an answer to a call we wait for is always read, however much
work is queued. A request beyond ``max_queued`` waiting ones is answered
``SERVER_BUSY`` at once; a notification beyond it is dropped and logged. Every answer we
write is within ``max_message_size``.

Not thread-safe: a driver with threads holds one lock around every call.
"""

from __future__ import annotations

import enum
import heapq
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import count
from typing import Any, Literal

from ._codec import Codec
from ._connection import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    Cancellation,
    Connection,
    Framing,
)
from ._errors import (
    ConnectionClosed,
    ErrorCode,
    InvalidResponse,
    LimitExceeded,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
    RequestCancelled,
)
from ._events import (
    NEED_DATA,
    Cancel,
    Closed,
    Error,
    Id,
    InvalidMessage,
    NeedData,
    Notification,
    Params,
    Request,
    Response,
    _error,
    _notification,
    _request,
    _response,
)

__all__ = [
    "Session",
    "Phase",
    "JobState",
    "PHASES",
    "JOB_TRANSITIONS",
    "Job",
    "Settle",
    "Interrupt",
    "Connected",
    "Close",
    "SessionEvent",
    "Paused",
    "PAUSED",
    "Stats",
    "AUTH_METHOD",
    "AUTH_TIMEOUT",
    "FLUSH_TIMEOUT",
]

log = logging.getLogger("ezipc")

#: The request a client sends first when the server has ``auth_token`` set.
AUTH_METHOD = "$/authenticate"
#: Seconds a client has to authenticate.
AUTH_TIMEOUT = 10.0
#: Seconds a driver spends writing what is left once a session has closed.
FLUSH_TIMEOUT = 2.0
#: While notifications are being dropped, one log line per this many seconds.
_DROP_LOG_INTERVAL = 1.0

_SHUTTING_DOWN = "Server is shutting down"
_CANCELLED = "Request cancelled"


class Paused(enum.Enum):
    """The type of :data:`PAUSED`."""

    PAUSED = "PAUSED"

    def __repr__(self) -> str:
        return "PAUSED"


#: Returned by :meth:`Session.next_event` while our unsent output is over
#: ``write_buffer_size``: write ``data_to_send()`` before asking again.
PAUSED: Literal[Paused.PAUSED] = Paused.PAUSED


class Phase(enum.Enum):
    """Where a session is in its life (see :data:`PHASES`)."""

    AUTHENTICATING = "AUTHENTICATING"  #: a server with ``auth_token``: only the token is taken
    OPEN = "OPEN"  #: calls flow both ways
    DRAINING = "DRAINING"  #: shutting down: running work finishes, new requests are refused
    FINISHING = "FINISHING"  #: the peer sent EOF: what it asked for finishes, then we close
    CLOSED = "CLOSED"  #: over: every call has ended; the driver writes what is left and closes

    __hash__ = object.__hash__


#: The session's phases: (phase, what happens) -> next phase. Anything else raises
#: :class:`LocalProtocolError` (a driver's mistake), except where the docs say it is
#: ignored (a handler's outcome after the close, a close after the close).
PHASES: dict[tuple[Phase, str], Phase] = {
    (Phase.AUTHENTICATING, "authenticated"): Phase.OPEN,
    (Phase.AUTHENTICATING, "eof"): Phase.CLOSED,
    (Phase.AUTHENTICATING, "shutdown"): Phase.CLOSED,
    (Phase.OPEN, "eof"): Phase.FINISHING,
    (Phase.OPEN, "shutdown"): Phase.DRAINING,
    (Phase.FINISHING, "shutdown"): Phase.DRAINING,
    (Phase.DRAINING, "eof"): Phase.DRAINING,
    (Phase.DRAINING, "drained"): Phase.CLOSED,
    (Phase.FINISHING, "drained"): Phase.CLOSED,
    **{(phase, "close"): Phase.CLOSED for phase in Phase if phase is not Phase.CLOSED},
}

#: What each phase lets us send: a request needs a peer that can still answer.
_CAN_REQUEST = frozenset((Phase.AUTHENTICATING, Phase.OPEN, Phase.DRAINING))
_CAN_NOTIFY = frozenset((Phase.AUTHENTICATING, Phase.OPEN, Phase.DRAINING, Phase.FINISHING))
#: Phases in which received work may start (once the connect hooks have run).
_CAN_RUN = frozenset((Phase.OPEN, Phase.DRAINING, Phase.FINISHING))


class JobState(enum.Enum):
    """Where a :class:`Job` is (see :data:`JOB_TRANSITIONS`)."""

    QUEUED = "QUEUED"  #: received, waiting for a slot (or for the notifications before it)
    RUNNING = "RUNNING"  #: handed to the driver
    STARTED = "STARTED"  #: a notification whose handler has begun: later requests may start
    INTERRUPTED = "INTERRUPTED"  #: answered without it (cancelled, shut down, closed); still running
    DONE = "DONE"

    __hash__ = object.__hash__


#: A job's life: (state, what happens) -> next state. Anything else raises
#: :class:`LocalProtocolError`.
JOB_TRANSITIONS: dict[tuple[JobState, str], JobState] = {
    (JobState.QUEUED, "run"): JobState.RUNNING,
    (JobState.QUEUED, "refuse"): JobState.DONE,  # cancelled or shut down before it ran
    (JobState.RUNNING, "started"): JobState.STARTED,
    (JobState.RUNNING, "end"): JobState.DONE,
    (JobState.STARTED, "end"): JobState.DONE,
    (JobState.RUNNING, "interrupt"): JobState.INTERRUPTED,
    (JobState.STARTED, "interrupt"): JobState.INTERRUPTED,
    (JobState.INTERRUPTED, "end"): JobState.DONE,  # its outcome is dropped
}


class Job:
    """A request (or notification) from the peer, for the driver to run.

    ``method``, ``params``; ``id`` (a request's; ``None`` for a notification, and for a
    request whose id is null: ``notification`` tells them apart). ``state`` is the
    session's. ``context`` is the driver's own slot (its cancel scope, its cancellation
    token...): the session never reads it. ``waiting``: calls of ours to the peer, made
    for this job (``request(..., job=)``), still awaiting their answers, and waits for
    answers from elsewhere (:meth:`Session.waiting`) not yet :meth:`Session.resumed`.
    """

    __slots__ = ("method", "params", "id", "notification", "state", "context", "waiting")

    def __init__(self, method: str, params: Params, id: Id, notification: bool) -> None:
        self.method = method
        self.params = params
        self.id = id
        self.notification = notification
        self.state = JobState.QUEUED
        self.context: Any = None
        self.waiting = 0

    def __repr__(self) -> str:
        what = "notification" if self.notification else f"request id={self.id!r}"
        return f"<Job {self.method!r} {what} {self.state.name}>"

    def _to(self, happening: str) -> None:
        state = JOB_TRANSITIONS.get((self.state, happening))
        if state is None:
            raise LocalProtocolError(f"{self!r}: cannot {happening} in state {self.state.name}")
        self.state = state


@dataclass(frozen=True, slots=True)
class Settle:
    """A call we made has ended: ``result``, or ``error`` (``RemoteError``,
    ``InvalidResponse``, ``TimeoutError``, ``RequestCancelled``, ``ConnectionClosed``).
    ``waiter`` is what the driver passed to ``request``. Each call is settled once."""

    id: Id
    waiter: Any
    result: Any
    error: BaseException | None


class _RawSettle:
    __slots__ = Settle.__slots__


def _settled(id: Id, waiter: Any, result: Any) -> Settle:
    """``Settle(id, waiter, result, None)``, as the events' fast constructors build theirs
    (see ``_events._request``): a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, 0.69 -> 0.14 µs a call here, on every answer a client reads."""
    ev: Any = _RawSettle()
    ev.id = id
    ev.waiter = waiter
    ev.result = result
    ev.error = None
    ev.__class__ = Settle
    return ev  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Stop ``job``'s handler if you can: it has been answered already (the peer
    cancelled it, the server shut down, or the connection closed). Its outcome, when
    you report it, is dropped."""

    job: Job


@dataclass(frozen=True, slots=True)
class Connected:
    """The peer is admitted (authenticated, if the server asks for it): run the connect
    hooks, then call ``start()``. Nothing the peer asks for runs before that."""


@dataclass(frozen=True, slots=True)
class Close:
    """The session is over (every call has ended, every handler has been interrupted).
    Write what ``data_to_send()`` still gives (for up to ``FLUSH_TIMEOUT`` seconds), then
    close the transport."""

    reason: str


SessionEvent = Job | Settle | Interrupt | Connected | Close


@dataclass
class Stats:
    """Per-connection counters (``remote.stats`` in the adapters)."""

    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    errors: int = 0  #: malformed input received, and error answers sent
    late_responses: int = 0  #: answers to requests we had given up on, dropped
    requests_pending: int = 0  #: our requests awaiting an answer
    handlers_running: int = 0  #: request handlers running (interrupted ones included)
    calls_queued: int = 0  #: requests and notifications received, waiting to start
    requests_refused: int = 0  #: requests answered SERVER_BUSY (over ``max_queued``)
    notifications_dropped: int = 0  #: notifications dropped (over ``max_queued``)
    late_results: int = 0  #: handler outcomes dropped: the request was answered already

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class _Call:
    """One of our requests awaiting its answer."""

    __slots__ = ("method", "waiter", "job")

    def __init__(self, method: str, waiter: Any) -> None:
        self.method = method
        self.waiter = waiter
        self.job: Job | None = None  # the peer's request it was made for (see _lend)


def _as_params(params: Any) -> Params:
    """Params as sent: a tuple becomes a list (JSON has no tuples); the rest as given."""
    return list(params) if type(params) is tuple else params


def _outgoing(method: str, params: Any, id: Id, notification: bool) -> Request | Notification:
    """A call to send: built by the unchecked constructor when its types are plainly
    right (the id comes from ``next_id``), else validated."""
    params = _as_params(params)
    if type(method) is str and (params is None or type(params) is dict or type(params) is list):
        return _notification(method, params) if notification else _request(method, params, id)
    return Notification(method, params) if notification else Request(method, params, id)


class Session:
    """One peer's connection: a :class:`Connection` plus the policy of a live one.

    ``framing``, ``max_message_size``, ``max_batch_size``, ``codec``, ``cancellation``:
    as for :class:`Connection`. ``max_concurrency``: request handlers running at once,
    not counting those waiting for an answer from this peer (see ``request``'s ``job``);
    ``max_queued``: requests and notifications waiting to start (one more request is
    answered ``SERVER_BUSY``, one more notification is dropped); ``max_pending``: our
    requests awaiting answers (one more raises ``LimitExceeded``);
    ``write_buffer_size``: unsent bytes above which reading pauses. Timeouts in seconds
    (None: never): ``request_timeout`` (our requests' default), ``idle_timeout`` (no
    traffic and no work), ``message_timeout`` (a message half-received; not counted
    from a ``PAUSED`` until the peer's next bytes),
    ``shutdown_timeout`` (how long work may finish after a shutdown or the peer's EOF).
    ``auth_token``: the peer must first send ``$/authenticate`` with it (a server's
    gate). ``debug``: an internal error's answer carries the exception's repr.
    ``log_messages``: log every message at DEBUG. ``name`` names the peer in log lines.
    ``now``: the time, in the driver's clock, as for every method that takes it.
    """

    def __init__(
        self,
        framing: Framing = "ndjson",
        *,
        now: float = 0.0,
        name: str = "peer",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        codec: str | Codec = "json",
        cancellation: Cancellation = "lsp",
        max_concurrency: int = 64,
        max_queued: int = 1024,
        max_pending: int = 1024,
        write_buffer_size: int = 1024 * 1024,
        request_timeout: float | None = None,
        idle_timeout: float | None = None,
        message_timeout: float | None = 60.0,
        shutdown_timeout: float = 5.0,
        auth_token: str | None = None,
        debug: bool = False,
        log_messages: bool = False,
    ) -> None:
        for limit in (max_concurrency, max_queued, max_pending, write_buffer_size):
            if limit < 1:
                raise ValueError("limits must be positive")
        self.connection = self._conn = Connection(
            framing,
            max_message_size=max_message_size,
            max_batch_size=max_batch_size,
            codec=codec,
            cancellation=cancellation,
        )
        self.name = name
        self.max_concurrency = max_concurrency
        self.max_queued = max_queued
        self.max_pending = max_pending
        self.write_buffer_size = write_buffer_size
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.message_timeout = message_timeout
        self.shutdown_timeout = shutdown_timeout
        self.auth_token = auth_token
        self.debug = debug
        self.log_messages = log_messages
        self.phase = Phase.AUTHENTICATING if auth_token is not None else Phase.OPEN
        self._admitted = auth_token is None
        self._peer_eof = False
        #: Why the session closed (or "" while it has not).
        self.close_reason = ""
        self._stats = Stats()
        self._now = now
        self._events: deque[SessionEvent] = deque()
        self._out: list[bytes] = []
        self._out_size = 0
        self._separator = b"\n" if framing == "message" else b""
        self._reading = True  # False once EOF (or a broken framing) was seen, or closed
        # Our calls, and their deadlines: (when, seq, id, call, timeout) with lazy deletion.
        self._calls: dict[Id, _Call] = {}
        self._deadlines: list[tuple[float, int, Id, _Call, float]] = []
        self._seq = count()
        # The peer's calls: requests owed (queued or running) by id, for its cancels.
        self._owed: dict[Id, Job] = {}
        self._line: deque[Job] = deque()  # received, not started, in arrival order
        self._active: dict[Job, None] = {}  # request jobs handed to the driver, not ended
        self._lent = 0  # of those, the ones waiting for the peer (job.waiting): no slot held
        self._notice: Job | None = None  # the notification job handed over, not ended
        self._started = False  # the connect hooks have run: work may start
        # Timers (None: not set).
        self._auth_deadline = now + AUTH_TIMEOUT if auth_token is not None else None
        self._drain_deadline: float | None = None
        self._last_activity = now
        self._last_rx = now
        self._message_since: float | None = None
        self._received = 0  # messages received (valid or not)
        self._seen = 0  # ... when the slow-message clock was last looked at
        self._rx_new = False  # bytes came since it was last looked at
        self._held_back = False  # we said PAUSED, and no byte has come since
        self._late = 0  # late answers the connection could not tell were late (see _on_error)
        self._dropped_logged = 0  # notifications_dropped when that was last logged
        self._drop_log_at = -1e18
        if auth_token is None:
            self._events.append(Connected())

    def __repr__(self) -> str:
        return (
            f"<Session {self.name} {self.phase.name} calls={len(self._calls)} "
            f"running={len(self._active)} queued={len(self._line)}>"
        )

    # ---- introspection ---------------------------------------------------------------

    @property
    def stats(self) -> Stats:
        """The counters (a live object; the derived ones are refreshed here)."""
        stats = self._stats
        stats.requests_pending = len(self._calls)
        stats.handlers_running = len(self._active)
        stats.calls_queued = len(self._line)
        stats.late_responses = self._conn.late_responses + self._late
        return stats

    @property
    def framing(self) -> str:
        return self._conn.framing

    @property
    def can_request(self) -> bool:
        """Can a request still be answered (the connection is up, the peer not at EOF)?"""
        return self.phase in _CAN_REQUEST and not self._peer_eof

    @property
    def reading(self) -> bool:
        """Does the session still want bytes (no EOF, no broken framing, not closed)?"""
        return self._reading

    @property
    def admitted(self) -> bool:
        """Has the peer passed the authentication gate (if there is one)?"""
        return self._admitted

    @property
    def output_size(self) -> int:
        """Bytes produced and not yet taken by ``data_to_send()``."""
        return self._out_size

    @property
    def pending_calls(self) -> int:
        """How many of our requests await an answer."""
        return len(self._calls)

    @property
    def busy(self) -> bool:
        """Is anything in progress: a call awaiting, a job queued or running?"""
        return bool(self._calls or self._active or self._line or self._notice is not None)

    # ---- the driver's side: bytes, time, events -------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes read from the peer; ``b""`` means EOF. Ignored once closed."""
        self._now = now
        if not self._reading:
            return
        self._last_activity = self._last_rx = now
        self._stats.bytes_in += len(data)
        self._rx_new = True
        self._conn.receive_data(data)

    def data_to_send(self) -> bytes:
        """Everything there is to write to the peer now (``b""`` if nothing). With
        ``framing="message"`` the messages are one per line: a message transport
        (WebSocket, HTTP) splits them at ``b"\\n"``, which JSON text never holds raw."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else self._separator.join(out)
        out.clear()
        self._stats.bytes_out += self._out_size  # (the messages: separators are not sent)
        self._out_size = 0
        self._last_activity = self._now
        return data

    def get_timer(self) -> float | None:
        """When ``handle_timer`` should next be called (None: not until something else
        happens)."""
        if self.phase is Phase.CLOSED:
            return None
        # (Asked after every action of a driver, so written out: no call, no tuple; with
        # 64 calls awaiting answers, 250 -> 170 ns.)
        heap, at = self._deadlines, None
        if heap:
            calls = self._calls
            while calls.get(heap[0][2]) is not heap[0][3]:
                heapq.heappop(heap)  # settled meanwhile
                if not heap:
                    break
            else:
                at = heap[0][0]
        when = self._auth_deadline
        if when is not None and (at is None or when < at):
            at = when
        when = self._drain_deadline
        if when is not None and (at is None or when < at):
            at = when
        if self._message_since is not None and self.message_timeout is not None:
            when = self._message_since + self.message_timeout
            at = when if at is None or when < at else at
        if self.idle_timeout is not None:
            when = self._last_activity + self.idle_timeout
            at = when if at is None or when < at else at
        return at

    def handle_timer(self, now: float) -> None:
        """Act on every deadline that has passed by ``now``."""
        self._now = now
        if self.phase is Phase.CLOSED:
            return
        heap, calls = self._deadlines, self._calls
        while heap and heap[0][0] <= now:
            _, _, id, call, timeout = heapq.heappop(heap)
            if calls.get(id) is call:
                error = TimeoutError(f"request {call.method!r} timed out after {timeout:g}s")
                self._abandon(id, error)
        if self._auth_deadline is not None and now >= self._auth_deadline:
            log.warning("%s did not authenticate within %ss: closing", self.name, AUTH_TIMEOUT)
            self.close("not authenticated", now)
            return
        if (
            self._message_since is not None
            and self.message_timeout is not None
            and now >= self._message_since + self.message_timeout
        ):
            if self._held_back:
                # We paused reading (the peer did not read our output) and no byte has
                # come since: the rest could not come. The clock starts again, and again
                # from the first bytes we read (see _watch_slow_message).
                self._message_since = now
            else:
                log.warning("%s: closing %s (timeout)", self.name, "half-received message")
                self.close("half-received message timed out", now)
                return
        if self.idle_timeout is not None and now >= self._last_activity + self.idle_timeout:
            if self.busy:
                self._last_activity = now  # working, not idle
            else:
                log.warning("%s: closing %s (timeout)", self.name, "idle connection")
                self.close("idle connection timed out", now)
                return
        if self._drain_deadline is not None and now >= self._drain_deadline:
            self._drain_deadline = None
            self._end_drain()

    def next_event(self) -> SessionEvent | NeedData | Paused:
        """The next thing for the driver to do, ``NEED_DATA`` (read more bytes) or
        ``PAUSED`` (write ``data_to_send()`` first: our output is over
        ``write_buffer_size``)."""
        events = self._events
        if events:
            return events.popleft()
        if self._out_size > self.write_buffer_size:
            self._pause()
            return PAUSED
        if self._line:  # (held back while our output was over its bound)
            self._pump()
            if events:
                return events.popleft()
        if not self._reading:
            return NEED_DATA
        conn, stats = self._conn, self._stats
        while True:
            try:
                ev = conn.next_event()
            except RemoteProtocolError as exc:
                log.warning("%s broke the protocol: %s", self.name, exc)
                stats.errors += 1
                self._write(conn.send(Error(None, exc.error_code, str(exc))))
                self._reading = False
                self.close(f"protocol error: {exc}", self._now)
                return events.popleft()
            if ev is NEED_DATA:
                # (Nothing it looks at changes until bytes come: a driver asks again after
                # every action, and need not pay for this each time.)
                if self._rx_new and self.message_timeout is not None:
                    self._rx_new = False
                    self._watch_slow_message()
                return NEED_DATA
            kind = type(ev)
            if self.log_messages and kind is not InvalidMessage:
                log.debug("received from %s: %s", self.name, _shorten(repr(ev)))
            self._received += 1
            if kind is Response:
                stats.messages_in += 1
                call = self._calls.pop(ev.id, None)  # type: ignore[union-attr]
                if call is not None:
                    if call.job is not None:
                        self._unlend(call)
                    return _settled(ev.id, call.waiter, ev.result)  # type: ignore[union-attr]
                self._late += 1  # given up on while the rest of its batch was read
                continue
            if kind is Request:
                stats.messages_in += 1
                job = self._on_request(ev)  # type: ignore[arg-type]
            elif kind is Notification:
                stats.messages_in += 1
                job = self._on_notification(ev)  # type: ignore[arg-type]
            elif kind is Error:
                stats.messages_in += 1
                self._on_error(ev)  # type: ignore[arg-type]
                job = None
            elif kind is Cancel:
                stats.messages_in += 1
                self._on_cancel(ev.id)  # type: ignore[union-attr]
                job = None
            elif kind is InvalidMessage:
                self._on_invalid(ev)  # type: ignore[arg-type]
                job = None
            else:  # Closed
                self._on_eof(ev)  # type: ignore[arg-type]
                job = None
            if job is not None:
                return job
            if events:
                return events.popleft()
            if not self.reading:  # (EOF; the property: the attribute's check above is stale)
                return NEED_DATA
            if self._out_size > self.write_buffer_size:  # (replies to invalid messages)
                self._pause()
                return PAUSED

    def events(self) -> Iterator[SessionEvent]:
        """Every event available now (up to ``NEED_DATA`` or ``PAUSED``)."""
        while True:
            ev = self.next_event()
            if ev is NEED_DATA or ev is PAUSED:
                return
            yield ev

    # ---- the driver's side: handlers -------------------------------------------------

    def start(self, now: float) -> None:
        """The connect hooks have run (after :class:`Connected`): the peer's calls may
        start. Ignored once closed."""
        self._now = now
        if self.phase is Phase.CLOSED:
            return
        if self._started or self.phase is Phase.AUTHENTICATING:
            raise LocalProtocolError(f"start() in phase {self.phase.name}: once, after Connected")
        self._started = True
        self._pump()
        self._check_drained()

    def started(self, job: Job, now: float) -> None:
        """A notification's handler has begun (an async one, at its first step): requests
        that came after it may start now. Without this call they start once it has
        ended, as for a plain function."""
        self._now = now
        if not job.notification:
            raise LocalProtocolError(f"{job!r}: started() is for notifications")
        if job.state is JobState.INTERRUPTED:
            return
        job._to("started")
        self._pump()

    def answer(self, job: Job, result: Any, now: float) -> None:
        """``job``'s handler returned ``result`` (ignored for a notification)."""
        self._now = now
        if job.state is JobState.RUNNING and not job.notification and self.phase is Phase.OPEN:
            # The common case, shortened (as _respond, then _ended, do it): ~15% of a call.
            self._owed.pop(job.id, None)
            try:
                data = self._conn.send(_response(job.id, result))
            except LocalProtocolError:
                self._respond(job, _response(job.id, result), job.method)  # (says why, instead)
            else:
                self._write(data)
            job.state = JobState.DONE
            del self._active[job]
            if job.waiting:
                self._unlend_all(job)
            if self._line:
                self._pump()
            return
        if self._outcome_dropped(job):
            return
        if not job.notification:
            self._respond(job, _response(job.id, result), job.method)
        self._ended(job)

    def fail(self, job: Job, exc: BaseException, now: float) -> None:
        """``job``'s handler raised ``exc``. A :class:`RemoteError` is answered as it is;
        anything else is logged and answered -32603 (no detail unless ``debug``)."""
        self._now = now
        if self._outcome_dropped(job):
            return
        if job.notification:
            if isinstance(exc, RemoteError):
                log.warning("notification %r from %s: %s", job.method, self.name, exc)
            else:
                log.error("notification handler %r raised", job.method, exc_info=exc)
        else:
            self._respond(job, self._error_answer(job, exc), job.method)
        self._ended(job)

    def _outcome_dropped(self, job: Job) -> bool:
        """A handler's outcome is in: True if it is to be dropped (the job was answered
        without it, or the session has closed). Raises LocalProtocolError if the job is
        not running at all."""
        if job.state is JobState.INTERRUPTED or self.phase is Phase.CLOSED:
            if job.state is JobState.INTERRUPTED and self.phase is not Phase.CLOSED:
                self._stats.late_results += 1
            job.state = JobState.DONE
            self._free(job)
            self._pump()
            self._check_drained()
            return True
        if (job.state, "end") not in JOB_TRANSITIONS:
            raise LocalProtocolError(f"{job!r}: no outcome is expected in state {job.state.name}")
        return False

    def _ended(self, job: Job) -> None:
        job._to("end")
        self._free(job)
        self._pump()
        self._check_drained()

    def _free(self, job: Job) -> None:
        if job.notification:
            if self._notice is job:
                self._notice = None
        elif job in self._active:
            del self._active[job]
            if job.waiting:
                self._unlend_all(job)

    def waiting(self, job: Job, now: float) -> None:
        """``job``'s handler waits for an answer from elsewhere (a call on another
        connection, which may need this peer's next requests: A's handler calls B, whose
        handler calls here): until :meth:`resumed`, it holds no slot, as while a call
        made here for it (``request(..., job=)``) awaits its answer. Calls made here
        need no such word. Each ``waiting`` is to be matched by one ``resumed``; either
        is a no-op for a job that has ended. ``next_event`` may then have a
        :class:`Job` for the driver."""
        self._now = now
        self._lend_job(job)

    def resumed(self, job: Job, now: float) -> None:
        """``job``'s handler has the answer it was :meth:`waiting` for: it holds a slot
        again (once nothing else of its waits)."""
        self._now = now
        self._unlend_job(job)

    def _lend(self, job: Job, call: _Call) -> None:
        """``call`` is made for ``job``: while it awaits its answer, ``job`` holds no
        slot, so that the peer's next requests may start. They may be calls back, needed
        for that answer (A's handler calls B, whose handler calls A...): with every slot
        held by a handler waiting for the peer, they would wait in the queue for good.
        What runs is still bounded: by ``max_concurrency`` plus ``max_pending`` (plus the
        jobs waiting elsewhere: see :meth:`waiting`)."""
        if self._lend_job(job):
            call.job = job

    def _lend_job(self, job: Job) -> bool:
        """``job`` waits for an answer (see :meth:`_lend`): True if a slot is lent."""
        if job.notification:
            if job is self._notice and job.state is JobState.RUNNING:
                # A notification's handler waiting for its peer has begun, as an async one
                # has at its first step: what came after it may start (calls back too).
                job._to("started")
                self._pump()
            return False
        if job not in self._active:
            return False  # (not one of this session's running requests: done, or another's)
        job.waiting += 1
        if job.waiting == 1:
            self._lent += 1
            if self._line:
                self._pump()
        return True

    def _unlend(self, call: _Call) -> None:
        """``call`` has ended: its job holds a slot again once none of its calls waits."""
        job = call.job
        if job is not None:
            self._unlend_job(job)

    def _unlend_job(self, job: Job) -> None:
        if job.waiting:  # (0 once it has ended: see _unlend_all)
            job.waiting -= 1
            if not job.waiting:
                self._lent -= 1

    def _unlend_all(self, job: Job) -> None:
        """``job`` has ended with calls of its in flight: they no longer count."""
        job.waiting = 0
        self._lent -= 1

    def _error_answer(self, job: Job, exc: BaseException) -> Error:
        if isinstance(exc, RemoteError):
            return _error(job.id, exc.code, str(exc.message), exc.data)
        if isinstance(exc, ConnectionClosed) and self.phase is Phase.DRAINING:
            # A connection closed under the handler while we shut down (most often one
            # the shutdown closed: a hub's handler waiting on another of its peers): that
            # is what the caller is told, not an internal error, and it is no bug to log.
            log.debug("handler for %r ended by the shutdown: %s", job.method, exc)
            return _error(job.id, ErrorCode.SHUTTING_DOWN, _SHUTTING_DOWN, None)
        log.error("handler for %r raised", job.method, exc_info=exc)
        data = repr(exc) if self.debug else None
        return _error(job.id, ErrorCode.INTERNAL_ERROR, "Internal error", data)

    # ---- our calls --------------------------------------------------------------------

    def request(
        self,
        method: str,
        params: Any = None,
        *,
        now: float,
        timeout: float | None = None,
        waiter: Any = None,
        job: Job | None = None,
    ) -> Id:
        """Send a request; returns its id. It ends with a :class:`Settle` carrying
        ``waiter``. Raises ``ConnectionClosed`` (the peer can no longer answer),
        ``LimitExceeded`` (``max_pending``, or over ``max_message_size``; nothing sent)
        or ``LocalProtocolError`` (not a valid request).

        ``job``: the peer's request whose handler makes this call, if any. Until the
        answer comes, that handler does not count against ``max_concurrency``, so the
        peer's calls back (needed for the answer, at any depth) can start: ``next_event``
        may then have a :class:`Job` for the driver. A notification's handler that calls
        has begun (as with :meth:`started`): the requests after it may start."""
        self._now = self._last_activity = now
        if self.phase is not Phase.OPEN or self._peer_eof or len(self._calls) >= self.max_pending:
            self._can_call(1)  # (raises, or allows a request while authenticating or draining)
        conn = self._conn
        id = conn.next_id()
        try:
            data = conn.send(_outgoing(method, params, id, False))
        except LocalProtocolError as exc:
            raise self._not_sent(exc) from None
        call = self._calls[id] = _Call(method, waiter)
        if timeout is not None or self.request_timeout is not None:
            self._add_deadline(id, call, timeout, now)
        self._write(data)
        if job is not None:
            self._lend(job, call)
        return id

    def batch(
        self,
        requests: Iterable[tuple[str, Any, Any]],
        notifications: Iterable[tuple[str, Any]] = (),
        *,
        now: float,
        timeout: float | None = None,
        job: Job | None = None,
    ) -> list[Id]:
        """Send ``requests`` (``(method, params, waiter)``) and ``notifications``
        (``(method, params)``) as one batch; returns the requests' ids, in order.
        ``job``: as for :meth:`request`."""
        self._now = now
        requests = list(requests)
        self._can_call(len(requests))
        conn = self._conn
        events: list[Request | Notification] = []
        calls: list[tuple[Id, _Call]] = []
        for method, params, waiter in requests:
            new = conn.next_id()  # (never one in flight, nor one given before)
            events.append(_outgoing(method, params, new, False))
            calls.append((new, _Call(method, waiter)))
        events += [_outgoing(method, params, None, True) for method, params in notifications]
        data = self._encode_call(lambda: conn.send_batch(events))
        for id, call in calls:
            self._add_call(id, call, timeout, now)
        self._write(data)
        if job is not None:
            for _, call in calls:
                self._lend(job, call)
        return [id for id, _ in calls]

    def notify(self, method: str, params: Any = None, *, now: float) -> None:
        """Send a notification. Allowed until the session closes (after the peer's EOF
        too: it may still read)."""
        self._now = now
        if self.phase not in _CAN_NOTIFY:
            raise ConnectionClosed(f"{self.name}: {self.close_reason or 'closed'}")
        conn = self._conn
        self._write(self._encode_call(lambda: conn.send(_outgoing(method, params, None, True))))

    def cancel(self, id: Id, now: float, error: BaseException | None = None) -> bool:
        """Give up on our request ``id``: the peer is told (per the cancellation
        profile) and the call is settled with ``error`` (default ``RequestCancelled``).
        False if it had ended already."""
        self._now = now
        call = self._calls.get(id)
        if call is None:
            return False
        self._abandon(id, error or RequestCancelled(f"request {call.method!r} was cancelled"))
        return True

    def _can_call(self, n: int) -> None:
        if self.phase not in _CAN_REQUEST or self._peer_eof:
            peer_eof = self._peer_eof
            reason = self.close_reason or ("closed by the peer" if peer_eof else "closed")
            raise ConnectionClosed(f"{self.name}: {reason}")
        if len(self._calls) + n > self.max_pending:
            raise LimitExceeded(
                f"{len(self._calls)} requests already await an answer (max_pending={self.max_pending})"
            )

    def _encode_call(self, send: Any) -> bytes:
        try:
            return send()  # type: ignore[no-any-return]
        except LocalProtocolError as exc:
            raise self._not_sent(exc) from None

    @staticmethod
    def _not_sent(exc: LocalProtocolError) -> Exception:
        """What to raise when a call cannot be sent: too large is a limit."""
        if exc.error_code == ErrorCode.MESSAGE_TOO_LARGE:
            return LimitExceeded(f"{exc}: nothing was sent")
        return exc

    def _add_call(self, id: Id, call: _Call, timeout: float | None, now: float) -> None:
        self._calls[id] = call
        self._add_deadline(id, call, timeout, now)

    def _add_deadline(self, id: Id, call: _Call, timeout: float | None, now: float) -> None:
        if timeout is None:
            timeout = self.request_timeout
        if timeout is not None:
            heapq.heappush(self._deadlines, (now + timeout, next(self._seq), id, call, timeout))

    def _abandon(self, id: Id, error: BaseException) -> None:
        call = self._calls.pop(id)
        self._unlend(call)
        if self.phase is not Phase.CLOSED:
            self._write(self._conn.send(Cancel(id)))
        self._events.append(Settle(id, call.waiter, None, error))

    # ---- life cycle ------------------------------------------------------------------

    def shutdown(self, now: float, grace: float | None = None) -> None:
        """Shut down gracefully: requests not started are answered ``SHUTTING_DOWN``
        (and so are new ones); running work has ``grace`` seconds (default
        ``shutdown_timeout``) to finish, then is answered ``SHUTTING_DOWN`` too and
        interrupted; then the session closes. Ignored once draining or closed."""
        self._now = now
        if self.phase is Phase.CLOSED or self.phase is Phase.DRAINING:
            return
        if PHASES[self.phase, "shutdown"] is Phase.CLOSED:  # not admitted yet: nothing to finish
            self._close("server shut down", "shutdown")
            return
        self._move("shutdown")
        self._refuse_queued(ErrorCode.SHUTTING_DOWN, _SHUTTING_DOWN)
        self._drain_deadline = now + (self.shutdown_timeout if grace is None else grace)
        self._check_drained()

    def close(self, reason: str, now: float, *, abort: bool = False) -> None:
        """Close now: every call we made is settled with ``ConnectionClosed``, running
        handlers are interrupted, queued work is dropped. What is queued for the peer is
        kept for the driver to write, unless ``abort`` (the connection is lost). Ignored
        once closed (but for ``abort``, which still drops the output)."""
        self._now = now
        if self.phase is Phase.CLOSED:
            if abort:
                self._discard_output()
            return
        self._close(reason, "close", abort=abort)

    def _move(self, happening: str) -> Phase:
        phase = PHASES.get((self.phase, happening))
        if phase is None:
            raise LocalProtocolError(f"cannot {happening} in phase {self.phase.name}")
        self.phase = phase
        return phase

    def _close(self, reason: str, happening: str, *, abort: bool = False) -> None:
        if self._move(happening) is not Phase.CLOSED:
            raise LocalProtocolError(f"{happening} does not close the session")
        self.close_reason = reason
        self._reading = False
        self._auth_deadline = self._drain_deadline = self._message_since = None
        calls = list(self._calls.items())
        self._calls.clear()
        self._deadlines.clear()
        events = self._events
        unseen = [ev for ev in events if type(ev) is Job]  # not handed out yet: never run
        if unseen:
            for job in unseen:
                job.state = JobState.DONE
                self._free(job)
            kept = [
                ev
                for ev in events
                if type(ev) is not Job and not (type(ev) is Interrupt and ev.job in unseen)
            ]
            events.clear()
            events.extend(kept)
        for id, call in calls:  # a fresh exception each: a shared one would grow its traceback
            self._unlend(call)
            events.append(Settle(id, call.waiter, None, ConnectionClosed(f"{self.name}: {reason}")))
        running = list(self._active)
        if self._notice is not None:
            running.append(self._notice)
        for job in running:
            if job.state is not JobState.INTERRUPTED:
                self._interrupt(job)
        for job in self._line:
            job.state = JobState.DONE
        self._line.clear()
        self._owed.clear()
        if abort:
            self._discard_output()
        events.append(Close(reason))

    def _discard_output(self) -> None:
        self._out.clear()
        self._out_size = 0

    def _on_eof(self, ev: Closed) -> None:
        if ev.unfinished:
            log.warning("%s closed in the middle of a message (%d bytes lost)", self.name, len(ev.unfinished))
        self._reading = False
        self._peer_eof = True
        self._message_since = None
        if self.phase is Phase.CLOSED:
            return
        if PHASES[self.phase, "eof"] is Phase.CLOSED:
            self._close("closed by the peer", "eof")
            return
        self._move("eof")
        # Nobody will answer our calls now; what the peer asked for still gets answers.
        for id, call in list(self._calls.items()):
            del self._calls[id]
            self._unlend(call)
            error = ConnectionClosed(f"{self.name}: closed by the peer")
            self._events.append(Settle(id, call.waiter, None, error))
        if self._drain_deadline is None:
            self._drain_deadline = self._now + self.shutdown_timeout
        self._check_drained()

    def _check_drained(self) -> None:
        """DRAINING or FINISHING, and nothing left to finish: close."""
        phase = self.phase
        if phase is not Phase.DRAINING and phase is not Phase.FINISHING:
            return
        if self._active or self._notice is not None or self._line:
            return
        self._close("server shut down" if phase is Phase.DRAINING else "closed by the peer", "drained")

    def _end_drain(self) -> None:
        """The grace period is over: answer what still runs with SHUTTING_DOWN (or, after
        the peer's EOF, let it go unanswered), then close."""
        draining = self.phase is Phase.DRAINING
        if draining:
            self._refuse_queued(ErrorCode.SHUTTING_DOWN, _SHUTTING_DOWN)
            for job in list(self._active):
                if job.state is not JobState.INTERRUPTED:
                    answer = _error(job.id, ErrorCode.SHUTTING_DOWN, _SHUTTING_DOWN, None)
                    self._respond(job, answer, job.method)
                    self._interrupt(job)
        self._close("server shut down" if draining else "closed by the peer", "close")

    def _refuse_queued(self, code: int, message: str) -> None:
        """Answer every queued request with this error (notifications stay queued)."""
        kept: deque[Job] = deque()
        for job in self._line:
            if job.notification:
                kept.append(job)
            else:
                job._to("refuse")
                self._respond(job, _error(job.id, code, message, None), job.method)
        self._line = kept

    # ---- the peer's calls --------------------------------------------------------------

    def _on_request(self, ev: Request) -> Job | None:
        phase = self.phase
        if phase is not Phase.OPEN:
            if phase is Phase.AUTHENTICATING:
                self._authenticate(ev)
                return None
            if phase is Phase.DRAINING:
                self._answer_now(ev, ErrorCode.SHUTTING_DOWN, _SHUTTING_DOWN)
                return None
        job = Job(ev.method, ev.params, ev.id, False)
        self._owed[ev.id] = job
        if (
            self._started
            and not self._line
            and len(self._active) - self._lent < self.max_concurrency
            and (self._notice is None or self._notice.state is JobState.STARTED)
        ):
            job.state = JobState.RUNNING
            self._active[job] = None
            return job
        if len(self._line) >= self.max_queued:
            del self._owed[ev.id]
            self._stats.requests_refused += 1
            queued = len(self._line)
            log.warning("%s: refusing %r: %d calls are queued (max_queued)", self.name, ev.method, queued)
            self._answer_now(ev, ErrorCode.SERVER_BUSY, f"Server busy: {len(self._line)} calls are queued")
            return None
        self._line.append(job)
        return None

    def _on_notification(self, ev: Notification) -> Job | None:
        if self.phase is Phase.AUTHENTICATING:
            log.warning("%s sent a notification before authenticating: closing", self.name)
            self.close("authentication failed", self._now)
            return None
        job = Job(ev.method, ev.params, None, True)
        if self._started and not self._line and self._notice is None and self.phase in _CAN_RUN:
            job.state = JobState.RUNNING
            self._notice = job
            return job
        if len(self._line) >= self.max_queued:
            self._drop(job)
            return None
        self._line.append(job)
        return None

    def _drop(self, job: Job) -> None:
        stats = self._stats
        stats.notifications_dropped += 1
        if self._now - self._drop_log_at >= _DROP_LOG_INTERVAL:
            self._drop_log_at = self._now
            log.warning(
                "%s: dropped notification %r: %d calls are queued (max_queued); %d dropped in all",
                self.name,
                job.method,
                len(self._line),
                stats.notifications_dropped,
            )

    def _on_cancel(self, id: Id) -> None:
        job = self._owed.get(id)
        if job is None:
            return
        if job.state is JobState.QUEUED:
            self._line.remove(job)
            job._to("refuse")
            self._respond(job, _error(id, ErrorCode.REQUEST_CANCELLED, _CANCELLED, None), job.method)
            self._pump()  # (what waited behind it may start)
            self._check_drained()
        elif job.state is JobState.RUNNING:
            self._respond(job, _error(id, ErrorCode.REQUEST_CANCELLED, _CANCELLED, None), job.method)
            self._interrupt(job)
            if job.waiting:
                # Its handler's calls to the peer, made for it, are given up too (the peer
                # is told), so that a chain of calls back unwinds at once on every driver:
                # a blocking handler cannot be stopped, but its wait ends. (The async
                # driver's cancelled task gives them up anyway.)
                for call_id, call in [(i, c) for i, c in self._calls.items() if c.job is job]:
                    why = f"request {call.method!r} was cancelled with {job.method!r}"
                    self._abandon(call_id, RequestCancelled(why))

    def _interrupt(self, job: Job) -> None:
        job._to("interrupt")
        self._events.append(Interrupt(job))

    def _on_error(self, ev: Error) -> None:
        call = self._calls.pop(ev.id, None)
        if call is not None:
            self._unlend(call)
            self._events.append(Settle(ev.id, call.waiter, None, RemoteError(ev.code, ev.message, ev.data)))
            return
        if ev.id is not None:  # given up on while the rest of its batch was read
            self._late += 1
            return
        self._stats.errors += 1  # id null: the peer could not read something we sent
        log.warning("%s reported an error: [%d] %s", self.name, ev.code, ev.message)

    def _on_invalid(self, ev: InvalidMessage) -> None:
        call = self._calls.pop(ev.error.id, None) if ev.ends_request else None
        if ev.ends_request and call is None:  # given up on while the rest of its batch was read
            self._late += 1
            return
        self._stats.errors += 1
        log.warning("%s sent an invalid message: %s", self.name, ev.error.message)
        self._write(ev.reply)
        if call is not None:
            self._unlend(call)
            error = InvalidResponse(ErrorCode.INVALID_REQUEST, f"{ev.error.message} (to {call.method!r})")
            self._events.append(Settle(ev.error.id, call.waiter, None, error))

    def _authenticate(self, ev: Request) -> None:
        """Fail closed: anything but the right token first ends the connection."""
        import hmac  # (here: it loads OpenSSL, ~4 MiB, which only this needs)

        expected = self.auth_token
        assert expected is not None
        token = ev.params.get("token") if isinstance(ev.params, dict) else None
        if (
            ev.method == AUTH_METHOD
            and isinstance(token, str)
            and hmac.compare_digest(token.encode("utf-8", "surrogatepass"), expected.encode())
        ):
            self._write(self._conn.send(_response(ev.id, True)))
            self.phase = PHASES[self.phase, "authenticated"]
            self._admitted = True
            self._auth_deadline = None
            self._events.append(Connected())
            return
        log.warning("%s failed to authenticate (first request: %r)", self.name, _shorten(ev.method, 60))
        self._answer_now(ev, ErrorCode.UNAUTHORIZED, "Unauthorized")
        self.close("authentication failed", self._now)

    def _pump(self) -> None:
        """Hand the driver what may start now, in arrival order: a request when a slot
        is free and the notifications before it have started; a notification when the
        one before it has ended."""
        if not self._started or self.phase not in _CAN_RUN or self._out_size > self.write_buffer_size:
            return  # (nothing starts while our output is over its bound: next_event resumes)
        line, active, events = self._line, self._active, self._events
        while line:
            job = line[0]
            if job.notification:
                if self._notice is not None:
                    return
                self._notice = job
            else:
                if len(active) - self._lent >= self.max_concurrency:
                    return
                if self._notice is not None and self._notice.state is not JobState.STARTED:
                    return
                active[job] = None
            line.popleft()
            job._to("run")
            events.append(job)

    # ---- answering ----------------------------------------------------------------------

    def _answer_now(self, ev: Request, code: int, message: str) -> None:
        """Answer a request that never became a job."""
        self._stats.errors += 1
        log.info("%s: %s answered with error %d: %s", self.name, _shorten(ev.method, 60), code, message)
        self._write(self._conn.send(_error(ev.id, code, message, None)))

    def _respond(self, job: Job, answer: Response | Error, method: str) -> None:
        """Write ``job``'s answer: if it cannot be sent (not JSON, or over
        ``max_message_size``), an error saying so instead."""
        self._owed.pop(job.id, None)
        conn = self._conn
        try:
            data = conn.send(answer)
        except LocalProtocolError as exc:
            if exc.error_code == ErrorCode.MESSAGE_TOO_LARGE:
                log.error("the answer to %r is too large to send: %s", method, exc)
                answer = _error(
                    job.id,
                    ErrorCode.MESSAGE_TOO_LARGE,
                    f"Result too large: over max_message_size ({conn.max_message_size} bytes)",
                    None,
                )
            else:
                log.error("result of %r cannot be sent as JSON: %s", method, exc)
                answer = _error(
                    job.id,
                    ErrorCode.INTERNAL_ERROR,
                    "Internal error: the result cannot be encoded as JSON",
                    str(exc) if self.debug else None,
                )
            data = conn.send(answer)
        if type(answer) is Error:
            self._stats.errors += 1
            log.info(
                "%s: %s answered with error %d: %s",
                self.name,
                _shorten(method, 60),
                answer.code,
                answer.message,
            )
        self._write(data)

    def _write(self, data: bytes) -> None:
        if data:
            self._out.append(data)
            self._out_size += len(data)
            self._stats.messages_out += 1
            if self.log_messages:
                log.debug("sent to %s: %s", self.name, _shorten(data))

    def _watch_slow_message(self) -> None:
        """The slow-message clock runs from the last complete message while one is
        partly received; after a pause (``_pause``), from the first bytes read again."""
        held_back, self._held_back = self._held_back, False
        if not self._conn.in_message:
            self._message_since = None
            return
        seen = self._received
        if self._message_since is None or seen != self._seen or held_back:
            self._message_since = self._last_rx
        self._seen = seen

    def _pause(self) -> None:
        """We say PAUSED: the driver stops reading until our output drains. Until bytes
        come again, the slow-message clock cannot blame the peer (``handle_timer``
        starts it again): the bytes already received are not news any more."""
        self._held_back = True
        self._rx_new = False


def _shorten(data: bytes | str, limit: int = 200) -> str:
    """A message for a log line: decoded, cut to ``limit`` characters."""
    text = data[: limit + 1].decode("utf-8", "replace") if isinstance(data, bytes) else data[: limit + 1]
    text = text.rstrip("\r\n")
    return text[:limit] + "..." if len(text) > limit else text
