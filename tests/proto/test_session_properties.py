"""The session under random interleavings (hypothesis' stateful testing): two sessions,
A and B, wired back to back through a network the test controls (bytes delivered in
random chunks, or held back), each with a driver model that keeps the jobs it was handed
and ends them in random order. The rules: calls (requests, notifications, batches, with
or without timeouts), handlers answering, failing, beginning, cancels, time passing, EOF on
either side, shutdown, close. After every step, and when the run ends:

* every call ends exactly once: each waiter is settled once, with an outcome that agrees
  with what the peer's driver did; at the end (everything drained, both sides closed) no
  call is left unsettled;
* no id is answered twice on the wire, and only ids the peer asked for (what each side
  writes is parsed independently of the core);
* no bound is exceeded (running <= max_concurrency, not counting handlers that wait for
  a call of their own to the peer; queued <= max_queued, pending <= max_pending), and
  work is handed over whenever a bound allows it;
* an answer to a call we wait for is never stuck behind queued work: once its bytes are
  delivered and our output is under ``write_buffer_size``, ``next_event()`` gives its
  ``Settle`` before ``NEED_DATA``; ``PAUSED`` only while our output is over the bound;
* jobs are handed over in arrival order (a request only after the notifications before it
  have begun), never before ``start()``.

``fuzz/run.py`` runs the same machine with many more examples.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ezipc_proto import (
    AUTH_METHOD,
    NEED_DATA,
    PAUSED,
    Close,
    Connected,
    ConnectionClosed,
    Interrupt,
    InvalidResponse,
    Job,
    JobState,
    LimitExceeded,
    Phase,
    RemoteError,
    RequestCancelled,
    Session,
    Settle,
)

from .helpers import same

#: Set to True to make the machine step around three session bugs it once found (fixed
#: since; each has a test in test_session.py): work that may start not handed over after a
#: cancel or an interrupted job's end, a call given up on while its batch reply is half
#: read, and a request accepted after shutdown() and the peer's EOF.
AVOID_KNOWN_BUGS = False

SIDES = ("A", "B")
MAX_MESSAGE_SIZE = 1000  # far above any batch reply here, so that a -32007 error always fits
_CANCEL_KEYS = {"$/cancelRequest": "id", "notifications/cancelled": "requestId"}
_RUN_PHASES = (Phase.OPEN, Phase.DRAINING, Phase.FINISHING)
DIE = st.sampled_from([False] * 9 + [True])  # (shrinks to False: the ends drop out)


class WireLog:
    """Everything one side wrote, parsed as it grows (independently of the core):
    ``messages`` holds (end offset, decoded message)."""

    def __init__(self, framing: str) -> None:
        self.framing = framing
        self.data = bytearray()
        self.parsed = 0
        self.messages: list[tuple[int, Any]] = []

    def add(self, data: bytes) -> list[Any]:
        self.data += data
        new = []
        while True:
            rest = self.data[self.parsed :]
            if self.framing == "ndjson":
                end = rest.find(b"\n")
                if end < 0:
                    break
                body, size = rest[:end], end + 1
            else:
                head, sep, _ = rest.partition(b"\r\n\r\n")
                if not sep:
                    break
                assert head.startswith(b"Content-Length: "), head
                n = int(head[len(b"Content-Length: ") :])
                size = len(head) + 4 + n
                if len(rest) < size:
                    break
                body = rest[len(head) + 4 : size]
            self.parsed += size
            message = json.loads(body)
            self.messages.append((self.parsed, message))
            new.append(message)
        assert self.parsed == len(self.data), "a session wrote part of a message"
        return new


class Side:
    """One session and its driver's memory."""

    def __init__(self, name: str, session: Session, framing: str, capacity: int) -> None:
        self.name = name
        self.s = session
        self.capacity = capacity  # bytes the transport takes before "the socket is full"
        self.log = WireLog(framing)  # everything the session wrote
        self.connected = False
        self.started = False
        self.closed = False  # the Close event was seen: the transport is closed
        self.write_shut = False  # nothing more reaches the peer (EOF sent)
        self.running: list[Job] = []  # handed over, not yet ended by the driver
        self.lenders: list[Job] = []  # jobs that made calls of their own (call_back, wait_elsewhere)
        self.elsewhere: dict[Job, int] = {}  # waiting() not yet resumed(), per job
        self.most_elsewhere = 0  # the most running jobs ever waiting elsewhere at once
        self.calls: dict[Any, Any] = {}  # our calls not yet settled: id -> waiter
        self.made: dict[Any, Any] = {}  # every call made: id -> waiter
        self.kinds: dict[Any, str] = {}  # id -> method
        self.timeouts: set[Any] = set()  # ids of calls made with a deadline
        self.deadlines: dict[Any, float] = {}
        self.cancelled: set[Any] = set()  # ids cancel() returned True for (or given up with their job)
        self.made_for: dict[Any, Job] = {}  # id -> the job a call was made for (call_back)
        self.settles: dict[Any, Settle] = {}
        self.requested: set[Any] = set()  # ids of requests seen on our wire
        self.answered: set[Any] = set()  # ids answered on our wire
        self.outcomes: dict[Any, tuple[str, Any]] = {}  # the peer's id -> what our driver did
        self.last_request_seq = -1  # ordering of the jobs handed over
        self.last_notice_seq = -1
        self.notices: list[Job] = []  # notification jobs handed over
        self.ended: set[Job] = set()  # jobs the driver ended
        self.authenticated = True
        self.late_start = False  # start() waits for the start rule
        self.counter = 0

    def __repr__(self) -> str:
        return f"<{self.name} {self.s!r} running={len(self.running)} calls={sorted(self.calls)}>"


class Link:
    """One direction of the network: bytes in flight, then maybe EOF."""

    def __init__(self) -> None:
        self.inflight = bytearray()
        self.sent = 0  # bytes put on the wire
        self.delivered = 0  # bytes handed to the receiving session
        self.eof = False  # the sender closed: EOF follows the bytes in flight
        self.eof_delivered = False


configs = st.fixed_dictionaries(
    {
        "framing": st.sampled_from(["ndjson", "content-length"]),
        "cancellation": st.sampled_from([("lsp", "lsp"), ("mcp", "mcp"), ("lsp", "mcp"), (None, None)]),
        "max_concurrency": st.tuples(st.integers(1, 3), st.integers(1, 3)),
        "max_queued": st.tuples(st.integers(1, 3), st.integers(1, 3)),
        "max_pending": st.tuples(st.integers(1, 4), st.integers(1, 4)),
        "write_buffer_size": st.tuples(*[st.sampled_from([1 << 20, 300, 40])] * 2),
        "capacity": st.tuples(*[st.sampled_from([1 << 20, 300, 30])] * 2),
        "request_timeout": st.tuples(*[st.sampled_from([None, None, 3.0, 8.0])] * 2),
        "idle_timeout": st.tuples(*[st.sampled_from([None, None, None, 40.0])] * 2),
        "message_timeout": st.tuples(*[st.sampled_from([None, 15.0])] * 2),
        "shutdown_timeout": st.tuples(*[st.sampled_from([0.0, 2.0, 6.0])] * 2),
        "auth": st.booleans(),
        "late_start": st.tuples(*[st.sampled_from([False, False, False, True])] * 2),
    }
)


class SessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # thousands of expected warnings (refusals, drops, crashing handlers): not logged
        self.log_level = logging.getLogger("ezipc").level
        logging.getLogger("ezipc").setLevel(logging.CRITICAL)
        self.now = 0.0
        self.sides: dict[str, Side] = {}
        self.links: dict[str, Link] = {}

    # ---- set up ----------------------------------------------------------------------------

    @initialize(config=configs)
    def setup(self, config: dict[str, Any]) -> None:
        framing = config["framing"]
        for i, name in enumerate(SIDES):
            session = Session(
                framing,
                now=self.now,
                name=name,
                max_message_size=MAX_MESSAGE_SIZE,
                cancellation=config["cancellation"][i],
                max_concurrency=config["max_concurrency"][i],
                max_queued=config["max_queued"][i],
                max_pending=config["max_pending"][i],
                write_buffer_size=config["write_buffer_size"][i],
                request_timeout=config["request_timeout"][i],
                idle_timeout=config["idle_timeout"][i],
                message_timeout=config["message_timeout"][i],
                shutdown_timeout=config["shutdown_timeout"][i],
                auth_token="let me in" if config["auth"] and name == "B" else None,
            )
            self.sides[name] = Side(name, session, framing, config["capacity"][i])
            self.sides[name].late_start = config["late_start"][i]
            self.links[name] = Link()  # what `name` sends
        if config["auth"]:  # A is B's client: it authenticates first, and calls only once admitted
            a = self.sides["A"]
            a.authenticated = False
            self._request(a, AUTH_METHOD, {"token": "let me in"}, None, waiter="auth")

    def peer(self, side: Side) -> Side:
        return self.sides["B" if side.name == "A" else "A"]

    # ---- the driver: events ------------------------------------------------------------------

    def pump(self, side: Side, limit: int | None = None) -> None:
        """Take events up to NEED_DATA or PAUSED (or only ``limit`` of them), as a driver
        does, and check each."""
        s = side.s
        for _ in range(limit or 10_000):
            ev = s.next_event()
            if AVOID_KNOWN_BUGS and (ev is PAUSED or ev is NEED_DATA) and not side.closed:
                s._pump()  # (see AVOID_KNOWN_BUGS)
                s._check_drained()
                if s._events:
                    ev = s._events.popleft()
            if ev is PAUSED:
                assert s.output_size > s.write_buffer_size, (side, s.output_size)
                self.check_quiet(side)
                return
            if ev is NEED_DATA:
                self.check_quiet(side)
                self.check_read_everything(side)
                return
            assert not side.closed, f"{side.name}: {ev!r} after Close"
            kind = type(ev)
            if kind is Connected:
                assert not side.connected
                side.connected = True
                if not side.late_start:  # the connect hooks run at once
                    s.start(self.now)
                    side.started = True
            elif kind is Job:
                self.on_job(side, ev)  # type: ignore[arg-type]
            elif kind is Interrupt:
                job = ev.job  # type: ignore[union-attr]
                # the peer cancelled it: the calls made for it are given up with it
                side.cancelled.update(id for id, j in side.made_for.items() if j is job and id in side.calls)
                if any(j is job for j in side.running):
                    assert job.state is JobState.INTERRUPTED, job
                else:  # the driver ended it after the interrupt was decided, before it took the event
                    assert job.state is JobState.DONE and job in side.ended, job
            elif kind is Settle:
                self.on_settle(side, ev)  # type: ignore[arg-type]
            else:
                assert kind is Close
                self.on_close(side)
        assert limit is not None, f"{side.name}: no NEED_DATA after 10000 events"

    def on_job(self, side: Side, job: Job) -> None:
        s = side.s
        assert side.connected and side.started, f"{side.name}: {job!r} before start()"
        # (a job handed over just before a close() reaches the driver already interrupted)
        assert job.state is JobState.RUNNING or (job.state is JobState.INTERRUPTED and s.phase is Phase.CLOSED)
        assert not any(j is job for j in side.running)
        seq = job.params["seq"] if isinstance(job.params, dict) else None
        assert isinstance(seq, int), job  # every call here carries its place on the wire
        if job.notification:
            # one at a time, in arrival order, and never after a request that came later
            assert seq > side.last_notice_seq and seq > side.last_request_seq, (job, side.last_request_seq)
            assert not any(j.notification for j in side.running if j.state is not JobState.INTERRUPTED)
            side.last_notice_seq = seq
            side.notices.append(job)
        else:
            assert seq > side.last_request_seq, (job, side.last_request_seq)
            # the notifications that came before it have begun (or ended)
            for notice in side.notices:
                if notice.params["seq"] < seq:  # type: ignore[index]
                    assert notice.state is not JobState.RUNNING, (job, notice)
            side.last_request_seq = seq
        side.running.append(job)
        assert len(s._active) - s._lent <= s.max_concurrency + self.returned(side)

    def on_settle(self, side: Side, ev: Settle) -> None:
        assert ev.id in side.made, ev
        assert ev.id not in side.settles, f"{side.name}: call {ev.id} settled twice: {side.settles[ev.id]}, {ev}"
        assert ev.waiter is side.made[ev.id], ev
        side.settles[ev.id] = ev
        del side.calls[ev.id]
        error = ev.error
        did = self.peer(side).outcomes.get(ev.id)
        if ev.id == 1 and not side.authenticated:  # the auth request
            if error is None:
                assert ev.result is True
                side.authenticated = True
            return
        if error is None:
            assert did is not None and did[0] == "result" and same(ev.result, did[1]), (ev, did)
        elif type(error) is RemoteError:
            code = error.code
            if code >= 1000:
                assert did == ("remote", (code, error.message, error.data)), (ev, did)
            elif code == -32007:
                assert did is not None and did[0] == "big", (ev, did)
            elif code == -32603:
                expected = {"unencodable": "Internal error: the result cannot be encoded as JSON",
                            "crash": "Internal error"}
                assert did is not None and expected.get(did[0]) == error.message, (ev, did)
            elif code == -32009:
                assert self.peer(side).s.stats.requests_refused > 0
            elif code == -32031:
                assert self.peer(side).s.phase in (Phase.DRAINING, Phase.CLOSED)
            else:
                raise AssertionError(f"unexpected error answer {ev}")  # -32800 included: we gave up first
        elif type(error) is TimeoutError:
            assert ev.id in side.timeouts
        elif type(error) is RequestCancelled:
            assert ev.id in side.cancelled
        elif type(error) is ConnectionClosed:
            assert side.s.phase is not Phase.OPEN or not side.s.reading, ev
        else:
            assert not isinstance(error, InvalidResponse)
            raise AssertionError(f"unexpected settle {ev}")

    def on_close(self, side: Side) -> None:
        assert not side.calls, f"{side.name} closed with calls unsettled: {side.calls}"
        side.closed = True
        # the driver writes what is left, then closes the transport both ways
        self.write(side, everything=True)
        self.links[side.name].eof = True
        side.write_shut = True

    # ---- the driver: bytes -------------------------------------------------------------------

    def write(self, side: Side, everything: bool = False) -> None:
        link = self.links[side.name]
        if not everything and len(link.inflight) >= side.capacity:
            return  # the transport is full: the session's output waits (and counts)
        data = side.s.data_to_send()
        for message in side.log.add(data):
            self.check_written(side, message)
        if data and not side.write_shut:
            link.inflight += data
            link.sent += len(data)

    def deliver(self, sender: Side, size: int) -> None:
        receiver = self.peer(sender)
        link = self.links[sender.name]
        if receiver.closed:
            link.inflight.clear()  # nobody reads a closed transport
            return
        if receiver.s.output_size > receiver.s.write_buffer_size:
            return  # paused: its driver writes before it reads again
        if link.inflight:
            chunk = bytes(link.inflight[:size])
            del link.inflight[:size]
            link.delivered += len(chunk)
            receiver.s.receive_data(chunk, self.now)
        elif link.eof and not link.eof_delivered:
            link.eof_delivered = True
            receiver.s.receive_data(b"", self.now)

    def check_written(self, side: Side, message: Any) -> None:
        """One message a session wrote: well formed; ids answered once, and only the
        peer's; cancel notices only for our own requests."""
        peer = self.peer(side)
        members = message if isinstance(message, list) else [message]
        assert members, message
        calls = ["method" in m for m in members]
        assert all(calls) or not any(calls), f"a batch mixing calls and answers: {message}"
        for m in members:
            assert m["jsonrpc"] == "2.0", m
            if "method" in m:
                if "id" in m:
                    assert type(m["id"]) is int and m["id"] not in side.requested, m
                    side.requested.add(m["id"])
                elif m["method"] in _CANCEL_KEYS:
                    assert m["params"][_CANCEL_KEYS[m["method"]]] in side.requested, m
                continue
            assert ("result" in m) != ("error" in m), m
            assert m["id"] is not None, f"{side.name} answered a message it could not read: {m}"
            assert m["id"] in peer.requested, f"{side.name} answered id {m['id']}, never asked: {m}"
            assert m["id"] not in side.answered, f"{side.name} answered id {m['id']} twice"
            side.answered.add(m["id"])

    # ---- the checks ---------------------------------------------------------------------------

    def check_quiet(self, side: Side) -> None:
        """At NEED_DATA or PAUSED (no events left): work is handed over whenever the bounds
        allow it (and our output is under its bound), and a drain with nothing left has
        ended."""
        s = side.s
        if not side.started or s.phase not in _RUN_PHASES:
            return
        if s.output_size > s.write_buffer_size:
            return  # nothing starts until our output is written
        line, active, notice = s._line, s._active, s._notice
        if line:
            head = line[0]
            if head.notification:
                assert notice is not None, f"{side.name}: {head!r} waits for nothing"
            else:
                assert len(active) - s._lent >= s.max_concurrency or (
                    notice is not None and notice.state is JobState.RUNNING
                ), f"{side.name}: {head!r} waits with a free slot"
        elif s.phase is not Phase.OPEN:
            assert active or notice is not None, f"{side.name}: {s.phase.name} with nothing left, not closed"

    def check_read_everything(self, side: Side) -> None:
        """At NEED_DATA: every answer delivered to us has settled its call."""
        s = side.s
        if not s.reading:
            assert not side.calls, f"{side.name} stopped reading with calls open: {side.calls}"
            return
        delivered = self.links[self.peer(side).name].delivered
        for end, message in self.peer(side).log.messages:
            if end > delivered:
                break
            for m in message if isinstance(message, list) else [message]:
                if "method" not in m:
                    assert m["id"] not in side.calls, f"{side.name}: the answer to {m['id']} is read, not settled"

    def returned(self, side: Side) -> int:
        """Running jobs whose lent slot came back (their calls have ended)."""
        active = side.s._active
        return sum(1 for j in side.lenders if j in active and not j.waiting)

    @invariant()
    def bounds(self) -> None:
        for side in self.sides.values():
            s = side.s
            # A slot lent comes back when the call ends, though what started in it still
            # runs: only those can take the count over max_concurrency (and everything
            # running stays within max_concurrency + max_pending, plus the jobs lent while
            # they waited for another connection: each a call in flight there).
            assert len(s._active) - s._lent <= s.max_concurrency + self.returned(side), side
            assert len(s._active) <= s.max_concurrency + s.max_pending + side.most_elsewhere, side
            # a job lends its slot exactly while a call made for it awaits its answer, or
            # it waits for one from elsewhere
            waiting = {j: n for j, n in side.elsewhere.items() if n and not j.notification}
            for call in s._calls.values():
                if call.job is not None:
                    waiting[call.job] = waiting.get(call.job, 0) + 1
            assert {j: j.waiting for j in s._active if j.waiting} == {
                j: n for j, n in waiting.items() if j in s._active
            }, side
            assert s._lent == sum(1 for j in s._active if j.waiting), side
            assert len(s._line) <= s.max_queued, side
            assert s.stats.requests_pending <= s.max_pending, side
            not_taken = [ev for ev in s._events if type(ev) is Job and not ev.notification]
            running = [j for j in side.running if not j.notification]
            assert s.stats.handlers_running == len(running) + len(not_taken), side
            assert set(side.calls) <= set(side.made)
            if s.phase is Phase.CLOSED:
                assert s.get_timer() is None

    # ---- the rules: our calls ----------------------------------------------------------------------

    def may_call(self, side: Side) -> bool:
        return side.authenticated and not side.write_shut

    def may_request(self, side: Side) -> bool:
        s = side.s
        return self.may_call(side) and not (AVOID_KNOWN_BUGS and s.phase is Phase.DRAINING and not s.reading)

    def _request(
        self, side: Side, method: str, params: Any, timeout: float | None, waiter: Any, job: Job | None = None
    ) -> None:
        s = side.s
        pending, can = s.stats.requests_pending, s.can_request
        try:
            id = s.request(method, params, now=self.now, timeout=timeout, waiter=waiter, job=job)
        except ConnectionClosed:
            assert not can
            return
        except LimitExceeded:
            assert can and pending + 1 > s.max_pending
            return
        assert can and pending + 1 <= s.max_pending
        self.record_call(side, id, method, waiter, timeout)
        if job is not None:
            side.made_for[id] = job

    def record_call(self, side: Side, id: Any, method: str, waiter: Any, timeout: float | None) -> None:
        assert id not in side.made
        side.made[id] = side.calls[id] = waiter
        side.kinds[id] = method
        timeout = timeout if timeout is not None else side.s.request_timeout
        if timeout is not None:
            side.timeouts.add(id)
            side.deadlines[id] = self.now + timeout

    def seq(self, side: Side) -> int:
        side.counter += 1
        return side.counter

    @rule(name=st.sampled_from(SIDES), timeout=st.sampled_from([None, None, 1.0, 4.0]))
    def request(self, name: str, timeout: float | None) -> None:
        side = self.sides[name]
        if self.may_request(side):
            self._request(side, "work", {"seq": self.seq(side)}, timeout, waiter=object())

    @rule(name=st.sampled_from(SIDES), pick=st.integers(0, 50), timeout=st.sampled_from([None, 1.0]))
    def call_back(self, name: str, pick: int, timeout: float | None) -> None:
        """A running handler calls the peer (its slot is lent until the answer)."""
        side = self.sides[name]
        if not side.running or not self.may_request(side):
            return
        job = side.running[pick % len(side.running)]
        self._request(side, "work", {"seq": self.seq(side)}, timeout, waiter=object(), job=job)
        if all(j is not job for j in side.lenders):
            side.lenders.append(job)

    @rule(name=st.sampled_from(SIDES), pick=st.integers(0, 50))
    def wait_elsewhere(self, name: str, pick: int) -> None:
        """A running handler waits for an answer from another connection (its slot is
        lent until it says it has it)."""
        side = self.sides[name]
        if not side.running:
            return
        job = side.running[pick % len(side.running)]
        notice = job.notification and job is side.s._notice and job.state is JobState.RUNNING
        side.s.waiting(job, self.now)
        if notice:
            assert job.state is JobState.STARTED  # (it has begun: what came after may start)
        side.elsewhere[job] = side.elsewhere.get(job, 0) + 1
        waiting = sum(1 for j, n in side.elsewhere.items() if n and j in side.s._active)
        side.most_elsewhere = max(side.most_elsewhere, waiting)
        if all(j is not job for j in side.lenders):
            side.lenders.append(job)

    @rule(name=st.sampled_from(SIDES), pick=st.integers(0, 50))
    def resume(self, name: str, pick: int) -> None:
        """A handler has the answer it waited for from elsewhere (it may have ended
        meanwhile: then nothing changes)."""
        side = self.sides[name]
        jobs = [j for j, n in side.elsewhere.items() if n]
        if not jobs:
            return
        job = jobs[pick % len(jobs)]
        side.s.resumed(job, self.now)
        side.elsewhere[job] -= 1

    @rule(name=st.sampled_from(SIDES))
    def notify(self, name: str) -> None:
        side = self.sides[name]
        if not self.may_call(side):
            return
        s = side.s
        try:
            s.notify("note", {"seq": self.seq(side)}, now=self.now)
        except ConnectionClosed:
            assert s.phase is Phase.CLOSED

    @rule(
        name=st.sampled_from(SIDES),
        requests=st.integers(0, 3),
        notifications=st.integers(0, 2),
        timeout=st.sampled_from([None, 2.0]),
    )
    def batch(self, name: str, requests: int, notifications: int, timeout: float | None) -> None:
        side = self.sides[name]
        if not (self.may_request(side) if requests else self.may_call(side)) or requests + notifications == 0:
            return
        s = side.s
        calls = [("work", {"seq": self.seq(side)}, object()) for _ in range(requests)]
        notices = [("note", {"seq": self.seq(side)}) for _ in range(notifications)]
        pending, can = s.stats.requests_pending, s.can_request
        try:
            ids = s.batch(calls, notices, now=self.now, timeout=timeout)
        except ConnectionClosed:
            assert not can
            return
        except LimitExceeded:
            assert can and pending + requests > s.max_pending
            return
        assert can and len(ids) == requests
        for id, (method, _, waiter) in zip(ids, calls, strict=True):
            self.record_call(side, id, method, waiter, timeout)

    def giving_up_is_safe(self, side: Side) -> bool:
        return not (AVOID_KNOWN_BUGS and side.s.connection._queue)

    @rule(name=st.sampled_from(SIDES), pick=st.integers(0, 50), open_only=st.booleans())
    def cancel(self, name: str, pick: int, open_only: bool) -> None:
        side = self.sides[name]
        ids = sorted(side.calls if open_only and side.calls else side.made)
        if not ids or not self.giving_up_is_safe(side):
            return
        id = ids[pick % len(ids)]
        if id == 1 and not side.authenticated:
            return
        if side.s.cancel(id, self.now):
            assert id in side.calls
            side.cancelled.add(id)

    # ---- the rules: the driver's handlers ---------------------------------------------------------

    @precondition(lambda self: any(side.running for side in self.sides.values()))
    @rule(
        name=st.sampled_from(SIDES),
        pick=st.integers(0, 50),
        how=st.sampled_from(["result", "result", "remote", "crash", "big", "unencodable", "started"]),
    )
    def end_job(self, name: str, pick: int, how: str) -> None:
        side = self.sides[name]
        if not side.running:
            side = self.peer(side)
            if not side.running:
                return
            name = side.name
        job = side.running[pick % len(side.running)]
        s = side.s
        interrupted = job.state is JobState.INTERRUPTED
        if how == "started":
            if job.notification and job.state is JobState.RUNNING:
                s.started(job, self.now)
                assert job.state is JobState.STARTED
            return
        side.running.remove(job)
        side.ended.add(job)
        before = s.stats.late_results
        counts = s.phase is not Phase.CLOSED  # (a dropped outcome counts unless already closed)
        side.counter += 1
        if how == "result":
            result = {"id": job.id, "by": name, "n": side.counter}
            s.answer(job, result, self.now)
            outcome: tuple[str, Any] = ("result", result)
        elif how == "big":
            s.answer(job, "x" * MAX_MESSAGE_SIZE, self.now)
            outcome = ("big", None)
        elif how == "unencodable":
            s.answer(job, {"not json": {1, 2}}, self.now)
            outcome = ("unencodable", None)
        elif how == "remote":
            error = RemoteError(1000 + side.counter, f"failed {side.counter}", [name])
            s.fail(job, error, self.now)
            outcome = ("remote", (error.code, error.message, error.data))
        else:
            s.fail(job, ValueError("crash"), self.now)
            outcome = ("crash", None)
        assert job.state is JobState.DONE
        if interrupted:
            assert s.stats.late_results == before + counts
        elif not job.notification:
            assert job.id not in side.outcomes
            side.outcomes[job.id] = outcome

    @rule(name=st.sampled_from(SIDES))
    def start(self, name: str) -> None:
        side = self.sides[name]
        if side.connected and not side.started:
            side.s.start(self.now)
            side.started = True

    @rule(name=st.sampled_from(SIDES), limit=st.sampled_from([None, 1, 2]))
    def events(self, name: str, limit: int | None) -> None:
        self.pump(self.sides[name], limit)

    # ---- the rules: the network, the clock, the end ---------------------------------------------

    @rule(
        name=st.sampled_from(SIDES),
        write=st.sampled_from([True, False]),
        size=st.sampled_from([1 << 20, 40, 7, 1]),
        limit=st.sampled_from([None, 1, 0]),
    )
    def flow(self, name: str, write: bool, size: int, limit: int | None) -> None:
        """The network and the peer's reader: ``name``'s driver maybe writes, up to
        ``size`` bytes (or the EOF) reach the peer, whose driver maybe takes its events."""
        side = self.sides[name]
        if write:
            self.write(side)
        self.deliver(side, size)
        if limit != 0:
            self.pump(self.peer(side), limit)

    @rule(dt=st.sampled_from([0.5, 1.0, 2.5, 7.0, 20.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        for side in self.sides.values():
            self.fire_timer(side)

    def fire_timer(self, side: Side) -> None:
        s = side.s
        when = s.get_timer()
        if when is None or when > self.now or not self.giving_up_is_safe(side):
            return
        # busy, but for calls whose deadline has passed (they end first, in this very call)
        busy = bool(s._active or s._line or s._notice) or any(
            side.deadlines.get(id, float("inf")) > self.now for id in s._calls
        )
        s.handle_timer(self.now)
        if s.close_reason == "idle connection timed out":
            assert not busy, side  # idle means no traffic and no work
        after = s.get_timer()
        assert after is None or after > self.now, (side, after, self.now)

    @rule(
        name=st.sampled_from(SIDES),
        how=st.sampled_from(["half_close", "shutdown", "shutdown_now", "close", "abort"]),
        die=DIE,
    )
    def end(self, name: str, how: str, die: bool) -> None:
        """An end, drawn rarely (``die``), or little would happen before it: ``name`` sends
        EOF (its process is done sending: what it writes later is lost), shuts down (with
        the default grace, or none), or closes (``abort``: its unsent output is lost)."""
        if not die:
            return
        side = self.sides[name]
        if how == "half_close":
            if not side.write_shut:
                self.write(side, everything=True)
                side.write_shut = True
                self.links[name].eof = True
        elif how.startswith("shutdown"):
            side.s.shutdown(self.now, 0.0 if how == "shutdown_now" else None)
        else:
            side.s.close("closed by the test", self.now, abort=how == "abort")

    @rule(how=st.sampled_from(["result", "remote", "crash", "big", "unencodable", "started"]))
    def serve(self, how: str) -> None:
        """Both drivers at work: write, deliver, read everything; each ends one job."""
        for side in self.sides.values():
            self.write(side)
            self.deliver(side, 1 << 20)
        for side in self.sides.values():
            self.pump(side)
            if side.running:
                self.end_job(side.name, 0, how)

    # ---- the end: drain everything -------------------------------------------------------------

    def settle_all(self) -> None:
        """Let every side run to quiet: start, end every job, write and deliver everything,
        take every event; time stands still."""
        for _ in range(1000):
            before = self.snapshot()
            for side in self.sides.values():
                if side.connected and not side.started and side.s.phase is not Phase.CLOSED:
                    self.start(side.name)
                self.pump(side)
                while side.running:
                    self.end_job(side.name, 0, "result")
                self.pump(side)
                self.write(side, everything=True)
            for side in self.sides.values():
                while self.links[side.name].inflight or (
                    self.links[side.name].eof and not self.links[side.name].eof_delivered
                ):
                    self.deliver(side, 1 << 20)
                    if self.peer(side).s.output_size > self.peer(side).s.write_buffer_size:
                        self.pump(self.peer(side))
                        self.write(self.peer(side), everything=True)
                    if self.peer(side).closed:
                        self.links[side.name].inflight.clear()
                        break
            if self.snapshot() == before:
                return
        raise AssertionError("the sessions never went quiet")

    def snapshot(self) -> Any:
        return tuple(
            (len(side.log.data), len(side.settles), len(side.running), len(side.ended), side.s.phase,
             side.closed, side.started, side.s.output_size, side.s.stats.messages_in, len(side.s._line),
             self.links[side.name].delivered, self.links[side.name].eof_delivered)
            for side in self.sides.values()
        )

    def teardown(self) -> None:
        try:
            if self.sides:
                self.finish()
        finally:
            logging.getLogger("ezipc").setLevel(self.log_level)

    def finish(self) -> None:
        self.settle_all()
        # All work is finished and everything is delivered: no call may be left waiting.
        for side in self.sides.values():
            assert not side.calls, f"{side.name}: calls never settled: {side.calls} ({self.sides})"
        # Then the end of both sessions: shut down, let every deadline pass.
        for side in self.sides.values():
            side.s.shutdown(self.now)
        for _ in range(10):
            self.now += 100.0
            for side in self.sides.values():
                self.fire_timer(side)
            self.settle_all()
            if all(side.closed for side in self.sides.values()):
                break
        for side in self.sides.values():
            assert side.s.phase is Phase.CLOSED and side.closed, side
            assert not side.calls and set(side.settles) == set(side.made), side
            assert not side.s.busy, side


TestSession = SessionMachine.TestCase
TestSession.settings = settings(
    max_examples=800,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
