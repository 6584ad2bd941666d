"""The session: calls both ways, ordering, bounds, flow control, cancellation, timers, the
auth gate, the life cycle, invalid answers and the state tables. Every test drives sessions
by hand, with the time passed in: no sockets, no threads, no sleeping. What a session writes
is compared byte for byte with what a well-behaved peer would write (compact JSON, the
members in the order the core writes them)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from ezipc_proto import (
    AUTH_METHOD,
    AUTH_TIMEOUT,
    JOB_TRANSITIONS,
    NEED_DATA,
    PAUSED,
    PHASES,
    Close,
    Connected,
    ConnectionClosed,
    ErrorCode,
    Interrupt,
    InvalidResponse,
    Job,
    JobState,
    LimitExceeded,
    LocalProtocolError,
    Phase,
    RemoteError,
    Request,
    RequestCancelled,
    Session,
    Settle,
    Stats,
)

from .helpers import CODECS, STREAM_FRAMINGS, frame, same, unframe

framings = pytest.mark.parametrize("framing", STREAM_FRAMINGS)

# ---- messages as a peer writes them ---------------------------------------------------------


def req(method: str, id: Any, params: Any = None) -> dict[str, Any]:
    if params is None:
        return {"jsonrpc": "2.0", "method": method, "id": id}
    return {"jsonrpc": "2.0", "method": method, "params": params, "id": id}


def note(method: str, params: Any = None) -> dict[str, Any]:
    if params is None:
        return {"jsonrpc": "2.0", "method": method}
    return {"jsonrpc": "2.0", "method": method, "params": params}


def ok(id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "result": result}


def err(id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": id, "error": error}


def lsp_cancel(id: Any) -> dict[str, Any]:
    return note("$/cancelRequest", {"id": id})


def mcp_cancel(id: Any) -> dict[str, Any]:
    return note("notifications/cancelled", {"requestId": id})


def wire(*messages: Any, framing: str = "ndjson") -> bytes:
    """The exact bytes of these messages, framed."""
    return b"".join(frame(m, framing) for m in messages)


BUSY = ErrorCode.SERVER_BUSY
CANCELLED = ErrorCode.REQUEST_CANCELLED
SHUTTING_DOWN = ErrorCode.SHUTTING_DOWN

# ---- driving a session -------------------------------------------------------------------------


def session(framing: str = "ndjson", *, start: bool = True, now: float = 0.0, **options: Any) -> Session:
    """A session whose ``Connected`` was taken (and ``start()`` called, unless told not to)."""
    s = Session(framing, now=now, **options)  # type: ignore[arg-type]
    if options.get("auth_token") is None:
        assert s.next_event() == Connected()
        if start:
            s.start(now)
    return s


def take(s: Session, end: Any = NEED_DATA, limit: int = 1000) -> list[Any]:
    """Every event up to the sentinel, which must be ``end`` (NEED_DATA or PAUSED)."""
    out: list[Any] = []
    for _ in range(limit):
        ev = s.next_event()
        if ev is NEED_DATA or ev is PAUSED:
            assert ev is end, (ev, out)
            return out
        out.append(ev)
    raise AssertionError(f"no NEED_DATA after {limit} events")


def feed(s: Session, *messages: Any, now: float = 0.0, framing: str = "ndjson") -> None:
    s.receive_data(wire(*messages, framing=framing), now)


def job(s: Session) -> Job:
    """The one event available: a job."""
    (ev,) = take(s)
    assert type(ev) is Job, ev
    return ev


def is_job(ev: Any, method: str, id: Any = None, *, notification: bool = False, params: Any = None) -> bool:
    return (
        type(ev) is Job
        and ev.method == method
        and same(ev.id, id)
        and ev.notification is notification
        and same(ev.params, params)
        and ev.state is JobState.RUNNING
    )


def check_settle(
    ev: Any,
    id: Any,
    waiter: Any,
    result: Any = None,
    error: type[BaseException] | None = None,
    text: str = "",
) -> BaseException | None:
    """``ev`` settles call ``id`` with ``result``, or with an ``error`` of exactly that type
    (and ``str``). Returns the error."""
    assert type(ev) is Settle, ev
    assert same(ev.id, id) and ev.waiter == waiter, ev
    if error is None:
        assert ev.error is None and same(ev.result, result), ev
        return None
    assert type(ev.error) is error and ev.result is None, ev
    assert str(ev.error) == text, str(ev.error)
    return ev.error


def check_remote_error(exc: Any, code: int, message: str, data: Any = None) -> None:
    assert type(exc) is RemoteError, exc
    assert exc.code == code and exc.message == message and same(exc.data, data), exc


class Link:
    """Two sessions back to back: ``move(x)`` hands what ``x`` wrote to its peer."""

    def __init__(self, framing: str = "ndjson", **options: Any) -> None:
        self.a = session(framing, name="a", **options)
        self.b = session(framing, name="b", **options)
        self.framing = framing

    def peer(self, s: Session) -> Session:
        return self.b if s is self.a else self.a

    def move(self, sender: Session, now: float = 0.0) -> list[Any]:
        """Deliver what ``sender`` wrote; the messages (decoded independently)."""
        data = sender.data_to_send()
        self.peer(sender).receive_data(data, now)
        return unframe(data, self.framing)


# ---- 1. calls both ways ----------------------------------------------------------------------------


@framings
@pytest.mark.parametrize("codec", CODECS)
def test_request_answered_with_result_both_ways(framing: str, codec: str) -> None:
    link = Link(framing, codec=codec)
    a, b = link.a, link.b
    assert a.request("add", [1, 2], now=0, waiter="w1") == 1
    assert a.output_size == len(wire(req("add", 1, [1, 2]), framing=framing))
    assert a.data_to_send() == wire(req("add", 1, [1, 2]), framing=framing)
    assert a.output_size == 0
    b.receive_data(wire(req("add", 1, [1, 2]), framing=framing), 0)
    got = job(b)
    assert is_job(got, "add", 1, params=[1, 2])
    assert b.stats.handlers_running == 1
    b.answer(got, 3, 1)
    assert got.state is JobState.DONE and b.stats.handlers_running == 0
    assert link.move(b) == [ok(1, 3)]
    (settle,) = take(a)
    check_settle(settle, 1, "w1", 3)
    assert a.stats.requests_pending == 0
    # and the other way, with params by name and a null result
    assert b.request("echo", {"x": None}, now=2, waiter="w2") == 1
    assert link.move(b) == [req("echo", 1, {"x": None})]
    got = job(a)
    assert is_job(got, "echo", 1, params={"x": None})
    a.answer(got, None, 2)
    assert link.move(a) == [ok(1, None)]
    (settle,) = take(b)
    check_settle(settle, 1, "w2", None)
    assert a.stats.as_dict() == {
        **Stats().as_dict(),
        "messages_in": 2,
        "messages_out": 2,
        "bytes_in": a.stats.bytes_in,
        "bytes_out": a.stats.bytes_out,
    }
    assert a.stats.bytes_out == b.stats.bytes_in > 0 and a.stats.bytes_in == b.stats.bytes_out > 0


def test_message_framing() -> None:
    s = session("message")
    s.request("m", [1], now=0, waiter="w")
    assert s.data_to_send() == b'{"jsonrpc":"2.0","method":"m","params":[1],"id":1}'
    s.receive_data(b'{"jsonrpc":"2.0","id":1,"result":2}', 0)
    s.receive_data(b'{"jsonrpc":"2.0","method":"n"}', 0)
    settle, n = take(s)
    check_settle(settle, 1, "w", 2)
    assert is_job(n, "n", notification=True)


def test_log_messages(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ezipc")
    s = session(log_messages=True, name="srv")
    feed(s, req("m", 1, ["x" * 300]))
    s.answer(job(s), "ok", 0)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    received = "received from srv: " + repr(Request("m", ["x" * 300], 1))[:200] + "..."
    assert lines == [received, 'sent to srv: {"jsonrpc":"2.0","id":1,"result":"ok"}']
    caplog.clear()
    quiet = session()
    feed(quiet, req("m", 1))
    quiet.answer(job(quiet), "ok", 0)
    assert not [r for r in caplog.records if r.levelno == logging.DEBUG]


def test_tuple_params_are_sent_as_an_array() -> None:
    s = session()
    s.request("m", (1, "two"), now=0)
    s.notify("n", (3,), now=0)
    assert s.data_to_send() == wire(req("m", 1, [1, "two"]), note("n", [3]))


def test_error_answer_settles_with_remote_error() -> None:
    link = Link()
    a, b = link.a, link.b
    a.request("m", now=0, waiter="w")
    link.move(a)
    got = job(b)
    b.fail(got, RemoteError(4242, "nope", {"why": [1, None]}), 0)
    assert link.move(b) == [err(1, 4242, "nope", {"why": [1, None]})]
    (settle,) = take(a)
    assert type(settle) is Settle and settle.waiter == "w" and settle.result is None
    check_remote_error(settle.error, 4242, "nope", {"why": [1, None]})
    assert b.stats.errors == 1 and a.stats.errors == 0


def test_pending_calls_counts_our_requests_until_each_ends() -> None:
    link = Link()
    a, b = link.a, link.b
    assert a.pending_calls == 0
    first = a.request("m", now=0, waiter=1)
    a.request("m", now=0, waiter=2)
    a.batch([("m", None, 3), ("m", None, 4)], [("n", None)], now=0)
    assert a.pending_calls == 4 and b.pending_calls == 0
    link.move(a)
    jobs = [ev for ev in take(b) if type(ev) is Job and not ev.notification]
    assert len(jobs) == 4
    b.answer(jobs[0], "done", 0)
    link.move(b)
    assert [ev.waiter for ev in take(a)] == [1] and a.pending_calls == 3
    a.cancel(first + 1, 0)
    assert a.pending_calls == 2


@pytest.mark.parametrize("debug", [False, True])
def test_fail_with_another_exception_is_an_internal_error(
    debug: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="ezipc")
    s = session(debug=debug)
    feed(s, req("crash", 7))
    exc = ValueError("secret detail")
    s.fail(job(s), exc, 0)
    expected = err(7, -32603, "Internal error", "ValueError('secret detail')" if debug else None)
    assert s.data_to_send() == wire(expected)
    (record,) = [r for r in caplog.records if r.name == "ezipc"]
    assert record.getMessage() == "handler for 'crash' raised" and record.exc_info[1] is exc  # type: ignore[index]


def test_fail_with_a_remote_error_subclass_answers_its_code() -> None:
    s = session()
    feed(s, req("m", 1))
    s.fail(job(s), InvalidResponse(-32600, "odd"), 0)
    assert s.data_to_send() == wire(err(1, -32600, "odd"))


def test_notifications_are_never_answered(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ezipc")
    s = session()
    feed(s, note("n1", [1]), note("n2"), note("n3"))
    first = job(s)
    assert is_job(first, "n1", None, notification=True, params=[1])
    s.answer(first, "ignored", 0)
    second = job(s)
    assert is_job(second, "n2", None, notification=True)
    s.fail(second, RemoteError(1, "bad"), 0)
    third = job(s)
    s.fail(third, ValueError("x"), 0)
    assert take(s) == []
    assert s.data_to_send() == b"" and s.output_size == 0
    assert s.stats.errors == 0 and s.stats.messages_out == 0 and s.stats.messages_in == 3
    assert [r.getMessage() for r in caplog.records] == [
        "notification 'n2' from peer: [1] bad",
        "notification handler 'n3' raised",
    ]


def test_request_with_a_null_id_is_answered_with_null() -> None:
    s = session()
    feed(s, req("m", None))
    got = job(s)
    assert is_job(got, "m", None) and not got.notification
    s.answer(got, [1], 0)
    assert s.data_to_send() == wire(ok(None, [1]))


def test_batch_we_send() -> None:
    link = Link()
    a, b = link.a, link.b
    ids = a.batch([("x", [1], "wx"), ("y", None, "wy")], [("n", {"k": 1})], now=0)
    assert ids == [1, 2] and a.stats.requests_pending == 2
    assert link.move(a) == [[req("x", 1, [1]), req("y", 2), note("n", {"k": 1})]]
    jobs = take(b)
    assert is_job(jobs[0], "x", 1, params=[1])
    assert is_job(jobs[1], "y", 2)
    assert is_job(jobs[2], "n", notification=True, params={"k": 1})
    b.answer(jobs[1], "Y", 0)
    assert b.data_to_send() == b""  # the batch's answer is one message, written when complete
    b.answer(jobs[2], "ignored", 0)
    b.fail(jobs[0], RemoteError(5, "X"), 0)
    assert link.move(b) == [[ok(2, "Y"), err(1, 5, "X")]]
    settles = take(a)
    check_settle(settles[0], 2, "wy", "Y")
    assert settles[1].id == 1 and settles[1].waiter == "wx"
    check_remote_error(settles[1].error, 5, "X")
    assert a.stats.requests_pending == 0


def test_batch_of_notifications_only() -> None:
    s = session()
    assert s.batch([], [("a", None), ("b", [2])], now=0) == []
    assert s.data_to_send() == wire([note("a"), note("b", [2])])
    with pytest.raises(LocalProtocolError):
        s.batch([], [], now=0)
    assert s.data_to_send() == b""


def test_received_batch_is_answered_member_by_member() -> None:
    """The specification's mixed batch (example 11): an invalid member, a notification,
    a method that is not found; one array answers it, once every member is answered."""
    s = session()
    feed(
        s,
        [
            req("sum", "1", [1, 2, 4]),
            note("notify_hello", [7]),
            req("subtract", "2", [42, 23]),
            {"foo": "boo"},
            req("foo.get", "5", {"name": "myself"}),
            req("get_data", "9"),
        ],
    )
    first = take(s)
    assert is_job(first[0], "sum", "1", params=[1, 2, 4])
    assert is_job(first[1], "notify_hello", notification=True, params=[7])
    assert len(first) == 2  # the requests after the notification wait for it
    assert s.stats.errors == 1  # the invalid member
    s.answer(first[0], 7, 0)
    assert s.data_to_send() == b""
    s.answer(first[1], None, 0)
    rest = take(s)
    assert [(j.method, j.id) for j in rest] == [("subtract", "2"), ("foo.get", "5"), ("get_data", "9")]
    s.answer(rest[0], 19, 0)
    s.answer(rest[2], ["hello", 5], 0)
    assert s.data_to_send() == b""
    s.fail(rest[1], RemoteError(-32601, "Method not found"), 0)
    (reply,) = unframe(s.data_to_send(), "ndjson")
    invalid = reply.pop(0)
    assert invalid["id"] is None and invalid["error"]["code"] == -32600
    assert reply == [ok("1", 7), ok("2", 19), ok("9", ["hello", 5]), err("5", -32601, "Method not found")]
    assert s.stats.messages_out == 1


def test_received_batch_of_notifications_gets_no_answer() -> None:
    s = session()
    feed(s, [note("a"), note("b")])
    s.answer(job(s), None, 0)
    s.answer(job(s), None, 0)
    assert take(s) == [] and s.data_to_send() == b""


# ---- 2. ordering ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["started", "answer", "fail"])
def test_notifications_one_at_a_time_and_requests_behind_them(how: str) -> None:
    s = session()
    feed(s, note("n1"), note("n2"), req("r", 1), note("n3"))
    n1 = job(s)
    assert is_job(n1, "n1", notification=True)
    assert take(s) == []  # n2 waits for n1 to end; r and n3 wait behind n2
    if how == "started":
        s.started(n1, 0)
        assert n1.state is JobState.STARTED
        assert take(s) == []  # a started notification lets requests start, not notifications
        s.answer(n1, None, 0)
    elif how == "answer":
        s.answer(n1, None, 0)
    else:
        s.fail(n1, RuntimeError("boom"), 0)
    n2 = job(s)
    assert is_job(n2, "n2", notification=True)
    assert take(s) == []  # r arrived after n2: it waits until n2 has begun
    s.started(n2, 0)
    r = take(s)
    assert len(r) == 1 and is_job(r[0], "r", 1)
    assert take(s) == []  # n3 waits for n2 to end (a request running does not hold it)
    s.answer(n2, None, 0)
    n3 = job(s)
    assert is_job(n3, "n3", notification=True)
    assert r[0].state is JobState.RUNNING


def test_notification_behind_a_queued_request_keeps_its_place() -> None:
    s = session(max_concurrency=1)
    feed(s, req("r", 1), req("r", 2), note("n"), req("r", 3))
    r1 = job(s)
    assert take(s) == []
    s.answer(r1, None, 0)
    got = take(s)
    # r2 takes the slot, then n (a notification needs no slot); r3 waits for r2
    assert [(j.method, j.id) for j in got] == [("r", 2), ("n", None)]
    s.answer(got[0], None, 0)
    assert take(s) == []  # and for n to begin
    s.started(got[1], 0)
    assert [(j.method, j.id) for j in take(s)] == [("r", 3)]


def test_requests_start_in_arrival_order_within_max_concurrency() -> None:
    s = session(max_concurrency=2)
    feed(s, *[req("r", i) for i in range(1, 7)])
    first = take(s)
    assert [j.id for j in first] == [1, 2]
    assert s.stats.handlers_running == 2
    s.answer(first[1], None, 0)
    (third,) = take(s)
    assert third.id == 3
    s.fail(first[0], RemoteError(1, "x"), 0)
    (fourth,) = take(s)
    assert fourth.id == 4
    s.answer(third, None, 0)
    s.answer(fourth, None, 0)
    assert [j.id for j in take(s)] == [5, 6]
    assert s.stats.handlers_running == 2


def test_request_arriving_later_starts_at_once_when_a_slot_is_free() -> None:
    s = session(max_concurrency=2)
    feed(s, req("r", 1))
    r1 = job(s)
    feed(s, req("r", 2))
    r2 = job(s)
    assert (r1.id, r2.id) == (1, 2)
    feed(s, req("r", 3))
    assert take(s) == []


def test_a_handler_waiting_for_the_peer_lends_its_slot_to_the_peers_next_requests() -> None:
    """A calls back, needed for the answer A's handler waits for, must not wait behind
    that handler's slot (docs/limits.md, flow control rule 1)."""
    s = session(max_concurrency=1)
    feed(s, req("outer", 1), req("other", 2), req("back", 3))
    outer = job(s)
    assert take(s) == []  # one slot, held
    mine = s.request("ask", now=0, waiter="w", job=outer)  # outer's handler calls the peer
    other = job(s)  # its slot is lent: the next in line starts
    assert other.id == 2 and s.stats.handlers_running == 2
    assert take(s) == []  # one slot's worth runs: outer waits, other runs
    s.request("ask", now=0, waiter="w2", job=outer)  # a second call lends nothing more
    assert take(s) == []
    s.answer(other, None, 0)
    back = job(s)
    assert back.id == 3
    feed(s, ok(mine, 1))
    (settle,) = take(s)
    assert settle.waiter == "w"
    assert outer.waiting == 1  # still waiting for its second call: the slot stays lent
    s.answer(back, None, 0)
    s.answer(outer, None, 0)  # it ended with a call in flight: that call no longer counts
    assert s.stats.handlers_running == 0
    feed(s, req("r", 4), req("r", 5))
    assert [j.id for j in take(s)] == [4]  # one slot again
    feed(s, ok(mine + 1, 2))
    assert [type(ev) for ev in take(s)] == [Settle]
    assert [j.id for j in take(s)] == []


@pytest.mark.parametrize("end", ["error", "timeout", "cancel", "eof"])
def test_a_lent_slot_comes_back_however_the_call_ends(end: str) -> None:
    s = session(max_concurrency=1)
    feed(s, req("outer", 1), req("r", 2))
    outer = job(s)
    id = s.request("ask", now=0, waiter="w", job=outer, timeout=5)
    r2 = job(s)
    if end == "error":
        feed(s, err(id, -1, "no"))
    elif end == "timeout":
        s.handle_timer(5)
    elif end == "cancel":
        s.cancel(id, 0)
    else:
        s.receive_data(b"", 0)
    assert [type(ev) for ev in take(s)] == [Settle]
    assert outer.waiting == 0
    if end != "eof":
        s.answer(r2, None, 0)
        feed(s, req("r", 3))
        assert take(s) == []  # outer holds the one slot again
        s.answer(outer, None, 0)
        assert [j.id for j in take(s)] == [3]


def test_a_notification_handler_that_calls_its_peer_has_begun() -> None:
    """A request waits for the notifications before it to begin; a plain function begins
    when it returns, unless it calls its peer first: then the requests after it (a call
    back among them) may start."""
    s = session()
    feed(s, note("n"), req("back", 1))
    n = job(s)
    assert take(s) == []
    s.request("ask", now=0, waiter="w", job=n)
    assert n.state is JobState.STARTED
    (back,) = take(s)
    assert back.id == 1
    feed(s, note("n2"))
    assert take(s) == []  # notifications still run one at a time
    s.answer(n, None, 0)
    assert [j.method for j in take(s)] == ["n2"]


def test_only_a_running_request_of_this_session_lends_its_slot() -> None:
    s = session(max_concurrency=1)
    other = session(max_concurrency=1)
    feed(other, req("elsewhere", 1))
    foreign = job(other)
    feed(s, note("n"), req("r", 1), req("r", 2))
    n = job(s)
    s.request("ask", now=0, waiter="w", job=n)  # a notification has no slot to lend
    (r1,) = take(s)  # (it has begun, though: see the test above)
    s.request("ask", now=0, waiter="w", job=foreign)  # nor another session's request
    assert take(s) == []
    s.answer(n, None, 0)
    assert r1.id == 1 and take(s) == [] and s.stats.handlers_running == 1


def test_a_handler_waiting_for_another_connection_lends_its_slot_until_it_resumes() -> None:
    """A's handler calls B, whose handler calls A over A's connection: the driver says
    so (waiting/resumed), as the session cannot see a call made on another session."""
    s = session(max_concurrency=1)
    elsewhere = session(max_concurrency=1)
    feed(s, req("relay", 1), req("back", 2), req("r", 3))
    relay = job(s)
    elsewhere.request("ask", now=0, waiter="w", job=relay)  # not that session's to lend
    assert take(s) == [] and relay.waiting == 0
    s.waiting(relay, 0)
    back = job(s)  # relay's slot is lent: the call back starts
    assert back.id == 2 and relay.waiting == 1
    s.waiting(relay, 0)  # a second wait lends nothing more
    s.answer(back, None, 0)
    (r3,) = take(s)
    s.resumed(relay, 0)
    assert relay.waiting == 1  # still waits: the slot stays lent
    s.resumed(relay, 0)
    assert relay.waiting == 0
    s.answer(r3, None, 0)
    feed(s, req("r", 4))
    assert take(s) == []  # relay holds the one slot again
    s.waiting(relay, 0)
    (r4,) = take(s)
    s.answer(relay, None, 0)  # it ended waiting: the wait no longer counts
    s.resumed(relay, 0)  # (a no-op for a job that has ended)
    assert relay.waiting == 0 and s.stats.handlers_running == 1
    s.answer(r4, None, 0)
    feed(s, req("r", 5), req("r", 6))
    assert [j.id for j in take(s)] == [5]  # one slot, as before


def test_a_notification_handler_waiting_for_another_connection_has_begun() -> None:
    s = session()
    feed(s, note("n"), req("back", 1))
    n = job(s)
    assert take(s) == []
    s.waiting(n, 0)
    assert n.state is JobState.STARTED
    assert [j.id for j in take(s)] == [1]
    s.resumed(n, 0)
    assert n.waiting == 0


def test_a_request_cancelled_by_the_peer_gives_up_the_calls_made_for_it() -> None:
    """So that a chain of calls back unwinds at once, on the blocking driver too (whose
    handler cannot be stopped, but whose wait then ends)."""
    s = session()
    feed(s, req("down", 1), req("other", 2))
    down, other = take(s)
    s.data_to_send()
    mine = s.request("up", now=0, waiter="w1", job=down)
    s.request("up", now=0, waiter="w2", job=down)
    theirs = s.request("up", now=0, waiter="w3", job=other)
    plain = s.request("ask", now=0, waiter="w4")
    s.data_to_send()
    feed(s, lsp_cancel(1))
    interrupt, *settles = take(s)
    assert type(interrupt) is Interrupt and interrupt.job is down
    assert [(ev.waiter, type(ev.error)) for ev in settles] == [("w1", RequestCancelled), ("w2", RequestCancelled)]
    assert "was cancelled with 'down'" in str(settles[0].error)
    assert down.waiting == 0
    written = [json.loads(line) for line in s.data_to_send().splitlines()]
    assert written[0]["id"] == 1 and written[0]["error"]["code"] == CANCELLED
    assert [m["params"]["id"] for m in written[1:]] == [mine, mine + 1]  # the peer is told
    assert set(s._calls) == {theirs, plain}  # the others' calls go on


def test_nothing_is_handed_over_before_start() -> None:
    s = Session()
    feed(s, note("n"), req("r", 1))
    assert take(s) == [Connected()]
    assert take(s) == []
    assert s.busy
    s.start(1)
    got = take(s)
    assert len(got) == 1 and is_job(got[0], "n", notification=True)
    s.started(got[0], 1)
    assert is_job(job(s), "r", 1)


def test_connected_comes_first() -> None:
    s = Session()
    s.request("m", now=0, waiter="w")
    assert s.next_event() == Connected()
    feed(s, ok(1, 2))
    (settle,) = take(s)
    check_settle(settle, 1, "w", 2)  # our calls need no start()


# ---- 3. bounds ------------------------------------------------------------------------------------


def test_max_queued_request_is_refused_server_busy(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ezipc")
    s = session(max_concurrency=1, max_queued=2)
    feed(s, req("r", 1), req("r", 2), req("r", 3), req("r", 4))
    r1 = job(s)
    assert s.data_to_send() == wire(err(4, BUSY, "Server busy: 2 calls are queued"))
    assert s.stats.requests_refused == 1 and s.stats.errors == 1
    assert [r.getMessage() for r in caplog.records] == ["peer: refusing 'r': 2 calls are queued (max_queued)"]
    # id 4 is no longer in use: the peer may send it again, and it queues once there is room
    s.answer(r1, "one", 0)
    (r2,) = take(s)
    assert r2.id == 2
    feed(s, req("r", 4))
    assert take(s) == []
    assert s.data_to_send() == wire(ok(1, "one"))
    s.answer(r2, None, 0)
    assert [j.id for j in take(s)] == [3]
    assert s.stats.requests_refused == 1


def test_max_queued_counts_before_start() -> None:
    s = session(start=False, max_queued=1)
    feed(s, req("r", 1), req("r", 2), note("n"))
    assert take(s) == []
    assert s.data_to_send() == wire(err(2, BUSY, "Server busy: 1 calls are queued"))
    assert s.stats.requests_refused == 1 and s.stats.notifications_dropped == 1


def test_max_queued_notification_is_dropped_and_logged_once_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ezipc")
    s = session(max_queued=1)
    feed(s, note("n0"), note("n1"), now=0)
    n0 = job(s)  # n0 runs, n1 waits: the line is full
    for i, now in enumerate([0.0, 0.5, 0.99, 1.0, 1.5, 2.2], start=2):
        feed(s, note(f"n{i}"), now=now)
        assert take(s) == []
    assert s.stats.notifications_dropped == 6
    assert s.data_to_send() == b"" and s.stats.errors == 0
    assert [r.getMessage() for r in caplog.records] == [
        "peer: dropped notification 'n2': 1 calls are queued (max_queued); 1 dropped in all",
        "peer: dropped notification 'n5': 1 calls are queued (max_queued); 4 dropped in all",
        "peer: dropped notification 'n7': 1 calls are queued (max_queued); 6 dropped in all",
    ]
    s.answer(n0, None, 3)
    assert is_job(job(s), "n1", notification=True)
    assert take(s) == []


def test_max_pending_raises_and_sends_nothing() -> None:
    s = session(max_pending=2)
    s.request("a", now=0)
    s.batch([("b", None, None)], now=0)
    sent = s.data_to_send()
    for call in (
        lambda: s.request("c", now=0),
        lambda: s.batch([("c", None, None)], [("n", None)], now=0),
    ):
        with pytest.raises(LimitExceeded, match=r"2 requests already await an answer \(max_pending=2\)"):
            call()
        assert s.data_to_send() == b"" and s.stats.requests_pending == 2
    s.notify("n", now=0)  # notifications are not limited
    assert s.data_to_send() == wire(note("n"))
    feed(s, ok(1, None))
    take(s)
    with pytest.raises(LimitExceeded):
        s.batch([("c", None, None), ("d", None, None)], now=0)
    s.request("c", now=0)
    assert unframe(sent + s.data_to_send(), "ndjson") == [req("a", 1), [req("b", 2)], req("c", 3)]


def test_nothing_over_max_message_size_is_sent() -> None:
    s = session(max_message_size=100)
    big = ["x" * 100]
    with pytest.raises(LimitExceeded, match="exceeds max_message_size"):
        s.request("m", big, now=0, waiter="w")
    with pytest.raises(LimitExceeded, match="exceeds max_message_size"):
        s.notify("n", big, now=0)
    with pytest.raises(LimitExceeded, match="exceeds max_message_size"):
        s.batch([("m", ["x" * 40], None), ("m", ["x" * 40], None)], now=0)
    assert s.data_to_send() == b"" and s.output_size == 0
    assert s.stats.requests_pending == 0 and s.stats.messages_out == 0
    assert not s.busy and s.get_timer() is None
    s.request("m", ["x" * 40], now=0)  # at most 100 bytes: sent
    (sent,) = unframe(s.data_to_send(), "ndjson")
    assert sent["params"] == ["x" * 40]


def test_result_over_max_message_size_becomes_an_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="ezipc")
    s = session(max_message_size=120)
    feed(s, req("big", 1))
    fits = "x" * (120 - len(b'{"jsonrpc":"2.0","id":1,"result":""}'))
    s.answer(job(s), fits, 0)
    assert s.data_to_send() == wire(ok(1, fits))  # exactly at the limit: sent
    feed(s, req("big", 2))
    s.answer(job(s), fits + "x", 0)
    assert s.data_to_send() == wire(err(2, -32007, "Result too large: over max_message_size (120 bytes)"))
    assert s.stats.errors == 1
    assert [r.getMessage() for r in caplog.records] == [
        "the answer to 'big' is too large to send: answer of 121 bytes exceeds max_message_size (120)"
    ]
    # a handler's error too large to send is replaced the same way
    feed(s, req("big", 3))
    s.fail(job(s), RemoteError(1, "m", "d" * 200), 0)
    assert s.data_to_send() == wire(err(3, -32007, "Result too large: over max_message_size (120 bytes)"))


def _json_refusal(value: Any) -> str:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError as exc:
        return str(exc)
    raise AssertionError(f"json encodes {value!r}")


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize(
    ("result", "why"),
    [
        (object(), "Object of type object is not JSON serializable"),
        # (the stdlib's own words: Python 3.12 added the value, ": nan")
        (float("nan"), _json_refusal(float("nan"))),
        ({1: {2, 3}}, "Object of type set is not JSON serializable"),
    ],
    ids=["object", "nan", "set"],
)
def test_unencodable_result_is_an_internal_error(result: Any, why: str, debug: bool) -> None:
    s = session(debug=debug)
    feed(s, req("m", 1))
    s.answer(job(s), result, 0)
    data = f"cannot encode as JSON: {why}" if debug else None
    expected = err(1, -32603, "Internal error: the result cannot be encoded as JSON", data)
    assert s.data_to_send() == wire(expected)
    assert s.stats.errors == 1 and s.stats.handlers_running == 0


def test_unencodable_error_data_is_an_internal_error() -> None:
    s = session()
    feed(s, req("m", 1))
    s.fail(job(s), RemoteError(1, "m", object()), 0)
    assert s.data_to_send() == wire(err(1, -32603, "Internal error: the result cannot be encoded as JSON"))


def test_unencodable_params_raise_and_send_nothing() -> None:
    s = session()
    with pytest.raises(LocalProtocolError):
        s.request("m", [object()], now=0)
    with pytest.raises(LocalProtocolError):
        s.request("m", "not params", now=0)
    with pytest.raises(LocalProtocolError):
        s.request("rpc.reserved", now=0)
    with pytest.raises(LocalProtocolError):
        s.notify("m", [float("inf")], now=0)
    assert s.data_to_send() == b"" and s.stats.requests_pending == 0


def test_limits_must_be_positive() -> None:
    for name in ("max_concurrency", "max_queued", "max_pending", "write_buffer_size"):
        with pytest.raises(ValueError, match="limits must be positive"):
            Session(**{name: 0})  # type: ignore[arg-type]


# ---- 4. flow control --------------------------------------------------------------------------


def test_paused_while_output_is_over_write_buffer_size() -> None:
    answer = wire(ok(1, "x" * 40))
    s = session(write_buffer_size=len(answer), request_timeout=5)
    feed(s, req("r", 1))
    s.answer(job(s), "x" * 40, 0)
    assert s.output_size == len(answer) == s.write_buffer_size
    feed(s, req("r", 2))
    r2 = job(s)  # at the bound: reading goes on
    s.answer(r2, "y", 0)
    assert s.output_size > s.write_buffer_size
    feed(s, req("r", 3))
    assert s.next_event() is PAUSED
    assert s.next_event() is PAUSED  # and stays so until written
    # events already decided are still given while paused
    s.request("m", now=0, waiter="w")
    s.handle_timer(5)
    (settle,) = take(s, end=PAUSED)
    check_settle(settle, 1, "w", error=TimeoutError, text="request 'm' timed out after 5s")
    data = s.data_to_send()
    assert unframe(data, "ndjson") == [ok(1, "x" * 40), ok(2, "y"), req("m", 1), lsp_cancel(1)]
    assert s.output_size == 0
    got = take(s)
    assert len(got) == 1 and is_job(got[0], "r", 3)


def test_invalid_messages_replies_can_pause_reading() -> None:
    s = session(write_buffer_size=10)
    feed(s, {"foo": 1}, req("r", 1))
    assert take(s, end=PAUSED) == []
    assert unframe(s.data_to_send(), "ndjson")[0]["error"]["code"] == -32600
    assert is_job(job(s), "r", 1)


def test_nothing_starts_while_output_is_over_write_buffer_size() -> None:
    s = session(max_concurrency=1, write_buffer_size=20)
    feed(s, req("r", 1), req("r", 2))
    r1 = job(s)  # r2 waits for the slot
    s.answer(r1, "x" * 30, 0)  # frees the slot, and puts our output over its bound
    assert take(s, end=PAUSED) == []
    assert s.data_to_send() == wire(ok(1, "x" * 30))
    assert is_job(job(s), "r", 2)


@framings
@pytest.mark.parametrize("rest_comes", [False, True])
def test_the_slow_message_clock_does_not_count_while_reading_is_paused(framing: str, rest_comes: bool) -> None:
    """A half-received message is the peer's delay only while we read. Once we say PAUSED
    (the peer does not read our output), the rest cannot come in: until the peer's next
    bytes, the clock starts again at each deadline; from those bytes, it runs again."""
    s = session(framing, message_timeout=10, write_buffer_size=20)
    second = wire(req("r", 2), framing=framing)
    s.receive_data(wire(req("r", 1), framing=framing) + second[:5], 0)
    r1 = job(s)
    assert s.get_timer() == 10  # the slow-message clock, from 0
    s.answer(r1, "x" * 30, 1)  # our output is over its bound
    assert take(s, end=PAUSED) == []
    s.handle_timer(10)
    assert s.phase is Phase.OPEN and s.get_timer() == 20
    assert s.data_to_send() == wire(ok(1, "x" * 30), framing=framing)  # the driver writes it
    assert take(s) == []  # (the peer may not have read it yet: nothing tells)
    s.handle_timer(20)  # no byte since we paused
    assert s.phase is Phase.OPEN and s.get_timer() == 30
    s.receive_data(second[5:8], 25)  # bytes again: the clock runs from them
    assert take(s) == [] and s.get_timer() == 35
    if rest_comes:
        s.receive_data(second[8:], 30)
        assert is_job(job(s), "r", 2)
        assert s.get_timer() is None
    else:
        s.handle_timer(34.9)
        assert s.phase is Phase.OPEN
        s.handle_timer(35)
        assert take(s) == [Close("half-received message timed out")]


@pytest.mark.parametrize("paused", [False, True])
def test_answer_to_our_call_is_read_behind_a_full_line(paused: bool) -> None:
    """However much work is queued, an answer to our call is read: only our own unsent
    output stops reading."""
    s = session(max_concurrency=1, max_queued=3, write_buffer_size=10 if paused else 1 << 20)
    ours = s.request("ping", now=0, waiter="w")
    s.data_to_send()
    feed(s, *[req("r", f"r{i}") for i in range(1, 6)], ok(ours, "pong"))
    if paused:
        # the refusal of r5 puts our output over the bound: reading pauses until it is written
        got = take(s, end=PAUSED)
        assert len(got) == 1 and is_job(got[0], "r", "r1")
        assert s.data_to_send() == wire(err("r5", BUSY, "Server busy: 3 calls are queued"))
        (settle,) = take(s)
    else:
        r1, settle = take(s)
        assert is_job(r1, "r", "r1")
        assert s.data_to_send() == wire(err("r5", BUSY, "Server busy: 3 calls are queued"))
    check_settle(settle, ours, "w", "pong")
    assert s.stats.requests_refused == 1 and len(s._line) == 3


def test_data_to_send_takes_everything_once() -> None:
    s = session()
    assert s.data_to_send() == b""
    s.notify("a", now=0)
    s.notify("b", now=0)
    assert s.output_size == len(wire(note("a"), note("b")))
    assert s.data_to_send() == wire(note("a"), note("b"))
    assert s.data_to_send() == b"" and s.output_size == 0
    assert s.stats.messages_out == 2 and s.stats.bytes_out == len(wire(note("a"), note("b")))


def test_message_framing_gives_one_message_per_line() -> None:
    """A WebSocket or HTTP driver splits data_to_send() at newlines, one message each;
    the counters count the messages' bytes, not the separators."""
    s = session("message")
    s.notify("a", now=0)
    assert s.data_to_send() == frame(note("a"), "message")  # alone: no separator
    s.notify("a", now=0)
    s.notify("b", now=0)
    data = s.data_to_send()
    assert data.split(b"\n") == [frame(note("a"), "message"), frame(note("b"), "message")]
    assert s.stats.bytes_out == len(data) - 1 + len(frame(note("a"), "message"))


# ---- 5. cancellation ----------------------------------------------------------------------------


@pytest.mark.parametrize("cancel", [lsp_cancel, mcp_cancel], ids=["lsp", "mcp"])
def test_peer_cancels_a_queued_request(cancel: Any) -> None:
    s = session(max_concurrency=1)
    feed(s, req("r", 1), req("r", 2), req("r", 3))
    r1 = job(s)
    feed(s, cancel(2))
    assert take(s) == []  # no Interrupt: it never ran
    lsp = cancel is lsp_cancel
    assert s.data_to_send() == (wire(err(2, CANCELLED, "Request cancelled")) if lsp else b"")
    s.answer(r1, None, 0)
    (r3,) = take(s)  # r2 is never handed over
    assert r3.id == 3
    assert s.data_to_send() == wire(ok(1, None))
    assert s.stats.late_results == 0


@pytest.mark.parametrize("cancel", [lsp_cancel, mcp_cancel], ids=["lsp", "mcp"])
@pytest.mark.parametrize("outcome", ["answer", "fail"])
def test_peer_cancels_a_running_request(cancel: Any, outcome: str) -> None:
    s = session()
    feed(s, req("r", 1))
    r1 = job(s)
    feed(s, cancel(1), now=1)
    assert take(s) == [Interrupt(r1)]
    assert r1.state is JobState.INTERRUPTED
    lsp = cancel is lsp_cancel
    assert s.data_to_send() == (wire(err(1, CANCELLED, "Request cancelled")) if lsp else b"")
    assert s.stats.handlers_running == 1  # it still runs
    feed(s, cancel(1), now=1)  # a second cancel: nothing more
    assert take(s) == [] and s.data_to_send() == b""
    if outcome == "answer":
        s.answer(r1, "too late", 2)
    else:
        s.fail(r1, ValueError("too late"), 2)
    assert s.data_to_send() == b""
    assert s.stats.late_results == 1 and s.stats.handlers_running == 0
    assert r1.state is JobState.DONE
    # the id is free again
    feed(s, req("r", 1), now=3)
    assert is_job(job(s), "r", 1)


def test_queued_work_starts_when_a_cancelled_job_ends() -> None:
    s = session(max_concurrency=1)
    feed(s, req("r", 1), req("r", 2))
    r1 = job(s)
    feed(s, lsp_cancel(1))
    assert take(s) == [Interrupt(r1)]
    s.answer(r1, None, 1)  # its outcome is dropped, and its slot is free
    got = take(s)
    assert len(got) == 1 and is_job(got[0], "r", 2)


def test_cancel_of_an_unknown_or_answered_id_does_nothing() -> None:
    s = session()
    feed(s, req("r", 1))
    s.answer(job(s), None, 0)
    s.data_to_send()
    feed(s, lsp_cancel(1), lsp_cancel(99), mcp_cancel("x"))
    assert take(s) == [] and s.data_to_send() == b""
    assert s.stats.errors == 0 and s.stats.late_results == 0


def test_malformed_cancel_is_a_plain_notification() -> None:
    s = session()
    feed(s, note("$/cancelRequest", {"ID": 1}))
    assert is_job(job(s), "$/cancelRequest", notification=True, params={"ID": 1})


@pytest.mark.parametrize(
    ("profile", "notice"),
    [("lsp", wire(lsp_cancel(1))), ("mcp", wire(mcp_cancel(1))), (None, b"")],
)
def test_our_cancel_tells_the_peer_and_settles(profile: Any, notice: bytes) -> None:
    s = session(cancellation=profile)
    s.request("slow", now=0, waiter="w", timeout=10)
    s.data_to_send()
    assert s.cancel(1, 1) is True
    assert s.data_to_send() == notice
    (settle,) = take(s)
    check_settle(settle, 1, "w", error=RequestCancelled, text="request 'slow' was cancelled")
    assert s.cancel(1, 1) is False and take(s) == []
    assert s.cancel(12345, 1) is False
    assert s.get_timer() is None  # its deadline went with it
    s.handle_timer(10)
    assert take(s) == []
    # the late answer is dropped and counted; nothing is sent back
    feed(s, ok(1, "late"), now=2)
    assert take(s) == [] and s.data_to_send() == b""
    assert s.stats.late_responses == 1 and s.stats.errors == 0


def test_our_cancel_with_a_given_error() -> None:
    s = session()
    s.request("m", now=0, waiter="w")
    error = KeyError("mine")
    assert s.cancel(1, 0, error)
    (settle,) = take(s)
    assert settle.error is error
    feed(s, err(1, 5, "late error"))
    assert take(s) == [] and s.stats.late_responses == 1 and s.stats.errors == 0


def test_cancel_end_to_end() -> None:
    link = Link()
    a, b = link.a, link.b
    a.request("slow", now=0, waiter="w")
    link.move(a)
    running = job(b)
    a.cancel(1, 1)
    assert link.move(a) == [lsp_cancel(1)]
    (settle,) = take(a)
    check_settle(settle, 1, "w", error=RequestCancelled, text="request 'slow' was cancelled")
    assert take(b) == [Interrupt(running)]
    assert link.move(b) == [err(1, CANCELLED, "Request cancelled")]
    b.answer(running, "done anyway", 2)
    assert b.data_to_send() == b"" and b.stats.late_results == 1
    assert take(a) == [] and a.stats.late_responses == 1


# ---- 6. timers ---------------------------------------------------------------------------------


def test_request_timeout() -> None:
    s = session()
    s.request("m", now=2, timeout=5, waiter="w")
    s.data_to_send()
    assert s.get_timer() == 7
    s.handle_timer(6.99)
    assert take(s) == [] and s.data_to_send() == b""
    s.handle_timer(7)
    (settle,) = take(s)
    check_settle(settle, 1, "w", error=TimeoutError, text="request 'm' timed out after 5s")
    assert s.data_to_send() == wire(lsp_cancel(1))
    assert s.get_timer() is None and s.stats.requests_pending == 0
    feed(s, ok(1, "late"), now=8)
    assert take(s) == [] and s.stats.late_responses == 1


def test_request_timeout_default_and_override() -> None:
    s = session(request_timeout=3, now=1)
    s.request("a", now=1, waiter="a")
    s.request("b", now=1, timeout=1.5, waiter="b")
    s.batch([("c", None, "c"), ("d", None, "d")], now=1, timeout=10)
    assert s.get_timer() == 2.5
    s.handle_timer(4)  # a and b are both overdue: settled in deadline order
    b, a = take(s)
    check_settle(b, 2, "b", error=TimeoutError, text="request 'b' timed out after 1.5s")
    check_settle(a, 1, "a", error=TimeoutError, text="request 'a' timed out after 3s")
    assert s.get_timer() == 11
    feed(s, ok(3, "C"), now=5)
    (c,) = take(s)
    check_settle(c, 3, "c", "C")
    assert s.get_timer() == 11
    s.handle_timer(11)
    (d,) = take(s)
    check_settle(d, 4, "d", error=TimeoutError, text="request 'd' timed out after 10s")
    assert s.get_timer() is None


def test_answered_call_leaves_no_deadline() -> None:
    s = session()
    s.request("m", now=0, timeout=5)
    s.request("m", now=0, timeout=9)
    feed(s, ok(1, None))
    take(s)
    assert s.get_timer() == 9


def test_get_timer_is_the_earliest_deadline() -> None:
    s = session(idle_timeout=20, message_timeout=7, shutdown_timeout=30)
    assert s.get_timer() == 20  # idle only
    s.request("m", now=1, timeout=30)
    assert s.get_timer() == 21  # a request is activity
    s.request("m", now=1, timeout=12)
    assert s.get_timer() == 13
    s.receive_data(b'{"jsonrpc":', 2)
    assert take(s) == []
    assert s.get_timer() == 9  # the half-received message
    s.receive_data(b'"2.0","method":"n"}\n', 3)
    got = take(s)
    assert len(got) == 1 and got[0].notification
    assert s.get_timer() == 13
    s.shutdown(4, grace=5)
    assert s.get_timer() == 9  # the grace period
    s.answer(got[0], None, 4.5)  # nothing runs now: closed (our calls settled)
    assert s.phase is Phase.CLOSED and s.get_timer() is None


def test_no_timer_when_nothing_is_pending() -> None:
    s = session()
    assert s.get_timer() is None  # message_timeout is set, but no message is half-received
    s.request("m", now=0)
    assert s.get_timer() is None  # no timeout
    feed(s, req("r", 1))
    job(s)
    assert s.get_timer() is None
    s.handle_timer(1e9)
    assert take(s) == [] and s.phase is Phase.OPEN


def test_idle_timeout_closes_only_when_not_busy(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ezipc")
    s = session(idle_timeout=5)
    assert s.get_timer() == 5
    feed(s, req("r", 1), now=1)
    r1 = job(s)
    assert s.get_timer() == 6
    s.handle_timer(6)  # busy: a handler runs
    assert take(s) == [] and s.phase is Phase.OPEN
    assert s.get_timer() == 11
    s.answer(r1, None, 7)
    s.data_to_send()  # writing is activity too
    assert s.get_timer() == 12
    s.request("m", now=8)  # our call pending: busy
    s.handle_timer(12)
    assert take(s) == [] and s.phase is Phase.OPEN
    feed(s, ok(1, None), now=13)
    take(s)
    assert s.get_timer() == 18
    s.handle_timer(17.9)
    assert take(s) == []
    s.handle_timer(18)
    assert take(s) == [Close("idle connection timed out")]
    assert s.phase is Phase.CLOSED and s.close_reason == "idle connection timed out"
    assert not s.reading and s.get_timer() is None
    assert "peer: closing idle connection (timeout)" in [r.getMessage() for r in caplog.records]


@framings
def test_message_timeout_closes_on_a_half_received_message(framing: str) -> None:
    s = session(framing, message_timeout=10)
    message = wire(req("r", 1), framing=framing)
    s.request("m", now=0, waiter="w")
    s.data_to_send()
    s.receive_data(message[:5], 1)
    assert take(s) == []
    assert s.get_timer() == 11
    s.receive_data(message[5:-1], 9)  # more bytes, still not whole: the clock keeps running
    assert take(s) == [] and s.get_timer() == 11
    s.receive_data(message[-1:] + message[:3], 10)  # whole; and the next one begins
    r = job(s)
    assert is_job(r, "r", 1)
    assert s.get_timer() == 20
    s.handle_timer(19.9)
    assert take(s) == []
    s.handle_timer(20)
    settle, interrupt, close = take(s)
    check_settle(settle, 1, "w", error=ConnectionClosed, text="peer: half-received message timed out")
    assert interrupt == Interrupt(r)
    assert close == Close("half-received message timed out")
    assert s.data_to_send() == b""


def test_message_timeout_stops_once_the_message_is_whole() -> None:
    s = session(message_timeout=10)
    s.receive_data(b'{"jsonrpc":"2.0",', 0)
    assert take(s) == [] and s.get_timer() == 10
    s.receive_data(b'"method":"n"}\n', 5)
    assert len(take(s)) == 1
    assert s.get_timer() is None
    s.handle_timer(100)
    assert s.phase is Phase.OPEN


def test_auth_timeout(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ezipc")
    s = Session(auth_token="t", now=100)
    assert s.get_timer() == 100 + AUTH_TIMEOUT
    s.handle_timer(100 + AUTH_TIMEOUT - 0.01)
    assert take(s) == []
    s.handle_timer(100 + AUTH_TIMEOUT)
    assert take(s) == [Close("not authenticated")]  # no Connected, ever
    assert s.data_to_send() == b""
    assert [r.getMessage() for r in caplog.records] == ["peer did not authenticate within 10.0s: closing"]


def test_shutdown_grace_period() -> None:
    s = session(shutdown_timeout=4)
    feed(s, req("r", 1))
    r1 = job(s)
    s.shutdown(10)
    assert s.get_timer() == 14
    s.handle_timer(13.9)
    assert take(s) == [] and s.phase is Phase.DRAINING
    s.handle_timer(14)
    assert take(s) == [Interrupt(r1), Close("server shut down")]
    assert s.data_to_send() == wire(err(1, SHUTTING_DOWN, "Server is shutting down"))


# ---- 7. the auth gate ----------------------------------------------------------------------------


def test_auth_with_the_right_token() -> None:
    s = Session(auth_token="s3cret", now=0)
    s.request("hello", now=0, waiter="w")  # we may call before the peer is admitted
    assert s.data_to_send() == wire(req("hello", 1))
    assert take(s) == [] and not s.admitted and s.phase is Phase.AUTHENTICATING
    with pytest.raises(LocalProtocolError, match="start"):
        s.start(0)
    feed(s, req(AUTH_METHOD, "a", {"token": "s3cret"}), req("r", 1), now=1)
    assert take(s) == [Connected()]
    assert s.data_to_send() == wire(ok("a", True))
    assert s.admitted and s.phase is Phase.OPEN
    assert s.get_timer() is None  # the auth deadline is gone
    s.start(2)
    assert is_job(job(s), "r", 1)
    feed(s, ok(1, "hi"), now=3)
    (settle,) = take(s)
    check_settle(settle, 1, "w", "hi")


@pytest.mark.parametrize(
    "first",
    [
        req(AUTH_METHOD, 1, {"token": "wrong"}),
        req(AUTH_METHOD, 1, {"token": "s3cret "}),
        req(AUTH_METHOD, 1, {"token": 1}),
        req(AUTH_METHOD, 1, ["s3cret"]),
        req(AUTH_METHOD, 1),
        req("other", 1, {"token": "s3cret"}),
    ],
    ids=["wrong", "padded", "number", "by-position", "no-params", "other-method"],
)
def test_auth_failure_is_answered_and_closes(first: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ezipc")
    s = Session(auth_token="s3cret", now=0)
    s.request("hello", now=0, waiter="w")
    s.data_to_send()
    feed(s, first, req(AUTH_METHOD, 2, {"token": "s3cret"}), now=1)
    settle, close = take(s)
    check_settle(settle, 1, "w", error=ConnectionClosed, text="peer: authentication failed")
    assert close == Close("authentication failed")
    assert s.data_to_send() == wire(err(1, -32030, "Unauthorized"))  # and nothing for the second
    assert s.phase is Phase.CLOSED and not s.reading
    assert f"peer failed to authenticate (first request: {first['method']!r})" in [
        r.getMessage() for r in caplog.records
    ]


def test_a_peer_that_failed_authentication_is_not_admitted() -> None:
    s = Session(auth_token="t", now=0)
    feed(s, req(AUTH_METHOD, 1, {"token": "wrong"}))
    assert take(s) == [Close("authentication failed")]
    assert not s.admitted


def test_auth_notification_first_closes_without_an_answer() -> None:
    s = Session(auth_token="t", now=0)
    feed(s, note(AUTH_METHOD, {"token": "t"}), req(AUTH_METHOD, 1, {"token": "t"}))
    assert take(s) == [Close("authentication failed")]
    assert s.data_to_send() == b""


def test_auth_token_with_a_lone_surrogate_is_refused() -> None:
    s = Session(auth_token="t", now=0)
    s.receive_data(b'{"jsonrpc":"2.0","method":"$/authenticate","params":{"token":"\\ud800"},"id":1}\n', 0)
    assert take(s) == [Close("authentication failed")]
    assert s.data_to_send() == wire(err(1, -32030, "Unauthorized"))


def test_shutdown_before_authentication_closes_at_once() -> None:
    s = Session(auth_token="t", now=0)
    s.shutdown(1)
    assert take(s) == [Close("server shut down")]


# ---- 8. the life cycle ----------------------------------------------------------------------------


def test_eof_settles_our_calls_and_finishes_the_peers_work(caplog: pytest.LogCaptureFixture) -> None:
    s = session(max_concurrency=1, name="srv")
    s.request("ping", now=0, waiter="w")
    s.data_to_send()
    feed(s, req("a", 1), req("b", 2), now=1)
    s.receive_data(b"", 1)
    a, settle = take(s)
    assert is_job(a, "a", 1)
    check_settle(settle, 1, "w", error=ConnectionClosed, text="srv: closed by the peer")
    assert s.phase is Phase.FINISHING and not s.reading and not s.can_request
    with pytest.raises(ConnectionClosed, match="srv: closed by the peer"):
        s.request("more", now=1)
    with pytest.raises(ConnectionClosed):
        s.batch([("more", None, None)], now=1)
    s.notify("still", now=1)  # the peer may still read
    s.receive_data(b"late bytes", 1)  # ignored: EOF was seen
    s.answer(a, "A", 2)
    b = job(s)
    assert is_job(b, "b", 2)
    s.fail(b, RemoteError(3, "B"), 3)
    assert take(s) == [Close("closed by the peer")]
    assert s.data_to_send() == wire(note("still"), ok(1, "A"), err(2, 3, "B"))
    assert s.phase is Phase.CLOSED and s.close_reason == "closed by the peer"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_eof_with_nothing_to_finish_closes_at_once() -> None:
    s = session()
    s.receive_data(b"", 0)
    assert take(s) == [Close("closed by the peer")]
    assert s.phase is Phase.CLOSED


def test_eof_before_start_finishes_the_queued_work() -> None:
    s = Session()
    feed(s, req("r", 1))
    s.receive_data(b"", 0)
    assert take(s) == [Connected()]
    assert s.phase is Phase.FINISHING
    s.start(0)
    r = job(s)
    s.answer(r, 1, 0)
    assert take(s) == [Close("closed by the peer")]
    assert s.data_to_send() == wire(ok(1, 1))


def test_eof_in_the_middle_of_a_message_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ezipc")
    s = session()
    s.receive_data(b'{"jsonrpc"', 0)
    s.receive_data(b"", 0)
    assert take(s) == [Close("closed by the peer")]
    assert [r.getMessage() for r in caplog.records] == [
        "peer closed in the middle of a message (10 bytes lost)"
    ]


def test_eof_grace_period_ends_unanswered_work() -> None:
    s = session(shutdown_timeout=5)
    feed(s, req("r", 1))
    r = job(s)
    s.receive_data(b"", 1)
    assert take(s) == []
    assert s.get_timer() == 6
    s.handle_timer(6)
    assert take(s) == [Interrupt(r), Close("closed by the peer")]
    assert s.data_to_send() == b""  # nobody reads it: not answered
    s.answer(r, "late", 7)  # after the close: ignored, not counted
    assert s.data_to_send() == b"" and s.stats.late_results == 0


def test_shutdown_refuses_new_and_queued_requests_and_lets_running_ones_finish() -> None:
    s = session(max_concurrency=1)
    s.request("ours", now=0, waiter="w")
    s.data_to_send()
    feed(s, req("r", 1), req("r", 2), note("n"))
    r1 = job(s)  # r2 waits for the slot, n behind it
    assert take(s) == []
    s.shutdown(1, grace=10)
    assert s.phase is Phase.DRAINING and s.can_request
    assert s.data_to_send() == wire(err(2, SHUTTING_DOWN, "Server is shutting down"))
    n = job(s)  # the queued notification still runs, and needs no slot
    assert is_job(n, "n", notification=True)
    feed(s, req("r", 3), now=2)
    assert take(s) == []  # not a job
    assert s.data_to_send() == wire(err(3, SHUTTING_DOWN, "Server is shutting down"))
    s.shutdown(2)  # again: ignored
    s.answer(n, None, 3)
    assert take(s) == [] and s.phase is Phase.DRAINING
    s.answer(r1, "one", 4)
    settle, close = take(s)
    check_settle(settle, 1, "w", error=ConnectionClosed, text="peer: server shut down")
    assert close == Close("server shut down")
    assert s.data_to_send() == wire(ok(1, "one"))


def test_shutdown_grace_over_answers_and_interrupts_running_work() -> None:
    s = session(max_concurrency=2)
    feed(s, req("r", 1), req("r", 2), note("n"))
    r1, r2, n = take(s)
    feed(s, lsp_cancel(2))
    assert take(s) == [Interrupt(r2)]
    s.data_to_send()
    s.shutdown(0, grace=3)
    s.handle_timer(3)
    assert take(s) == [Interrupt(r1), Interrupt(n), Close("server shut down")]
    assert s.data_to_send() == wire(err(1, SHUTTING_DOWN, "Server is shutting down"))
    for j in (r1, r2, n):
        s.answer(j, "late", 4)
    assert s.data_to_send() == b""


def test_a_handler_failing_with_connection_closed_while_draining_is_answered_shutting_down() -> None:
    """A connection closed under a handler while we shut down (a hub's other connection,
    closed by the same shutdown) is what the caller is told: -32031, not -32603. Before
    the shutdown, it is an internal error as any other exception."""
    s = session(max_concurrency=2)
    feed(s, req("r", 1), req("r", 2))
    r1, r2 = take(s)
    s.fail(r1, ConnectionClosed("B: closed by the peer"), 1)
    assert s.data_to_send() == wire(err(1, -32603, "Internal error"))
    s.shutdown(2, grace=10)
    s.fail(r2, ConnectionClosed("B: server shut down"), 3)
    assert s.data_to_send() == wire(err(2, SHUTTING_DOWN, "Server is shutting down"))
    assert take(s) == [Close("server shut down")]


def test_shutdown_with_nothing_running_closes_at_once() -> None:
    s = session()
    s.shutdown(0)
    assert take(s) == [Close("server shut down")]


def test_shutdown_after_eof() -> None:
    s = session(max_concurrency=1, shutdown_timeout=100)
    feed(s, req("r", 1), req("r", 2))
    r1 = job(s)
    s.receive_data(b"", 0)
    take(s)
    assert s.phase is Phase.FINISHING
    s.shutdown(1, grace=2)
    assert s.phase is Phase.DRAINING and s.get_timer() == 3
    assert s.data_to_send() == wire(err(2, SHUTTING_DOWN, "Server is shutting down"))
    s.answer(r1, None, 2)
    assert take(s) == [Close("server shut down")]


@pytest.mark.parametrize("abort", [False, True])
def test_close_settles_every_call_with_a_fresh_exception(abort: bool) -> None:
    s = session(max_concurrency=1, name="srv")
    s.request("a", now=0, waiter="wa")
    s.batch([("b", None, "wb"), ("c", None, "wc")], now=0, timeout=5)
    feed(s, req("r", 1), note("n"), req("r", 2))
    r1, n = take(s)
    (queued,) = s._line
    s.close("bye", 1, abort=abort)
    events = take(s)
    assert events[3:] == [Interrupt(r1), Interrupt(n), Close("bye")]
    errors = [
        check_settle(ev, call_id, w, error=ConnectionClosed, text="srv: bye")
        for ev, call_id, w in zip(events[:3], [1, 2, 3], ["wa", "wb", "wc"], strict=True)
    ]
    assert len({id(e) for e in errors}) == 3  # a shared exception would grow one traceback
    assert (r1.state, n.state, queued.state) == (JobState.INTERRUPTED, JobState.INTERRUPTED, JobState.DONE)
    assert s.phase is Phase.CLOSED and s.close_reason == "bye" and not s.reading
    assert s.get_timer() is None
    assert s.busy and s.stats.handlers_running == 1  # until the driver's handlers end
    if abort:
        assert s.data_to_send() == b"" and s.output_size == 0
    else:
        assert unframe(s.data_to_send(), "ndjson") == [req("a", 1), [req("b", 2), req("c", 3)]]
    # after the close: ignored, or refused
    s.close("again", 2)
    assert take(s) == [] and s.close_reason == "bye"
    s.receive_data(wire(req("r", 9)), 2)
    s.handle_timer(100)
    s.answer(r1, "late", 2)
    s.answer(n, None, 2)
    assert take(s) == [] and s.data_to_send() == b""
    assert s.stats.late_results == 0 and s.stats.messages_in == 3
    assert not s.busy and s.stats.handlers_running == 0
    with pytest.raises(ConnectionClosed, match="srv: bye"):
        s.request("x", now=2)
    with pytest.raises(ConnectionClosed, match="srv: bye"):
        s.notify("x", now=2)


def test_close_interrupts_the_running_notification_and_drops_queued_work() -> None:
    s = session(max_concurrency=1)
    feed(s, note("n1"), note("n2"), req("r", 1))
    n1 = job(s)
    s.close("bye", 0)
    assert take(s) == [Interrupt(n1), Close("bye")]
    assert s.data_to_send() == b""  # the queued request is not answered: the connection ends


def test_close_with_abort_after_the_close_still_drops_the_output() -> None:
    s = session()
    s.notify("n", now=0)
    s.close("bye", 0)
    assert s.output_size > 0
    s.close("lost", 0, abort=True)
    assert s.data_to_send() == b"" and s.close_reason == "bye"


def test_protocol_error_writes_an_error_and_closes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ezipc")
    s = session("content-length")
    s.request("m", now=0, waiter="w")
    s.data_to_send()
    s.receive_data(b"Content-Length: abc\r\n\r\n{}", 1)
    settle, close = take(s)
    reason = "protocol error: malformed Content-Length b'abc'"
    check_settle(settle, 1, "w", error=ConnectionClosed, text=f"peer: {reason}")
    assert close == Close(reason)
    expected = err(None, -32700, "malformed Content-Length b'abc'")
    assert s.data_to_send() == wire(expected, framing="content-length")
    assert s.stats.errors == 1 and s.phase is Phase.CLOSED and not s.reading
    assert f"peer broke the protocol: {reason[len('protocol error: ') :]}" in [
        r.getMessage() for r in caplog.records
    ]


def test_invalid_messages_are_answered_and_the_session_goes_on() -> None:
    s = session()
    s.receive_data(b"not json\n" + wire({"jsonrpc": "2.0", "method": 1}, req("r", 1)), 0)
    assert is_job(job(s), "r", 1)
    replies = unframe(s.data_to_send(), "ndjson")
    assert [(m["id"], m["error"]["code"]) for m in replies] == [(None, -32700), (None, -32600)]
    assert s.stats.errors == 2 and s.phase is Phase.OPEN


def test_error_with_a_null_id_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ezipc")
    s = session()
    s.request("m", now=0, waiter="w")
    s.data_to_send()
    feed(s, err(None, -32700, "Parse error"))
    assert take(s) == [] and s.data_to_send() == b""
    assert s.stats.errors == 1 and s.stats.requests_pending == 1
    assert [r.getMessage() for r in caplog.records] == ["peer reported an error: [-32700] Parse error"]


# ---- 9. invalid answers end the call -------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (
            {"jsonrpc": "2.0", "id": 1, "result": 1, "error": {"code": 1, "message": "m"}},
            "both result and error",
        ),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": "1", "message": "m"}}, "malformed error object"),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": 1}}, "malformed error object"),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": 1.5, "message": "m"}}, "malformed error object"),
        ({"jsonrpc": "2.0", "id": 1, "error": "boom"}, "malformed error object"),
        ({"jsonrpc": "2.0", "id": 1}, "neither result nor error"),
        ({"id": 1, "result": 1}, 'jsonrpc must be "2.0"'),
        ({"jsonrpc": "1.0", "id": 1, "result": 1}, 'jsonrpc must be "2.0"'),
    ],
    ids=[
        "both",
        "code-str",
        "no-message",
        "code-float",
        "not-object",
        "neither",
        "no-jsonrpc",
        "jsonrpc-1.0",
    ],
)
def test_invalid_answer_ends_the_call(answer: Any, why: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ezipc")
    s = session()
    s.request("m", now=0, waiter="w", timeout=5)
    s.request("other", now=0, waiter="o")
    s.data_to_send()
    feed(s, answer, ok(2, "fine"))
    settle, other = take(s)
    error = check_settle(
        settle, 1, "w", error=InvalidResponse, text=f"[-32600] Invalid response: {why} (to 'm')"
    )
    assert isinstance(error, RemoteError) and error.code == -32600  # type: ignore[attr-defined]
    assert error.message == f"Invalid response: {why} (to 'm')"  # type: ignore[attr-defined]
    assert error.data is None  # type: ignore[attr-defined]
    check_settle(other, 2, "o", "fine")
    assert s.data_to_send() == b""  # nothing is sent back
    assert s.stats.errors == 1 and s.stats.requests_pending == 0 and s.get_timer() is None
    assert [r.getMessage() for r in caplog.records] == [
        f"peer sent an invalid message: Invalid response: {why}"
    ]
    feed(s, ok(1, "again"))  # the call is over: a second answer is unknown
    assert take(s) == []
    assert s.data_to_send() == b""


def test_invalid_answer_to_a_cancelled_call_is_a_late_answer() -> None:
    s = session()
    s.request("m", now=0)
    s.cancel(1, 0)
    take(s)
    feed(s, {"jsonrpc": "2.0", "id": 1})
    assert take(s) == [] and s.stats.late_responses == 1 and s.stats.errors == 0


def test_answer_to_an_unknown_id_is_dropped() -> None:
    s = session()
    feed(s, ok(5, 1), err(6, 1, "m"))
    assert take(s) == []
    assert s.data_to_send() == b""
    assert s.stats.errors == 2


# ---- 10. the tables --------------------------------------------------------------------------------


def test_phases_table() -> None:
    # The phases only move forward, every phase can close, and the end is the end.
    order = [Phase.AUTHENTICATING, Phase.OPEN, Phase.FINISHING, Phase.DRAINING, Phase.CLOSED]
    assert all(order.index(after) >= order.index(before) for (before, _), after in PHASES.items())
    assert all(PHASES[phase, "close"] is Phase.CLOSED for phase in order[:-1])
    assert not [key for key in PHASES if key[0] is Phase.CLOSED]
    # Only a peer's credentials open a session that waits for them; only draining ends one.
    assert [key for key, after in PHASES.items() if after is Phase.OPEN] == [
        (Phase.AUTHENTICATING, "authenticated")
    ]
    assert {
        action
        for (before, action), after in PHASES.items()
        if after is Phase.CLOSED and before in (Phase.OPEN, Phase.FINISHING, Phase.DRAINING)
    } == {"close", "drained"}
    # An EOF lets the work in flight finish; a shutdown drains it.
    assert PHASES[Phase.OPEN, "eof"] is Phase.FINISHING and PHASES[Phase.OPEN, "shutdown"] is Phase.DRAINING


def test_job_transitions_table() -> None:
    queued, running, started = JobState.QUEUED, JobState.RUNNING, JobState.STARTED
    interrupted, done = JobState.INTERRUPTED, JobState.DONE
    assert JOB_TRANSITIONS == {
        (queued, "run"): running,
        (queued, "refuse"): done,
        (running, "started"): started,
        (running, "end"): done,
        (started, "end"): done,
        (running, "interrupt"): interrupted,
        (started, "interrupt"): interrupted,
        (interrupted, "end"): done,
    }


def test_job_repr_and_context() -> None:
    s = session()
    feed(s, req("m", 3), note("n"))
    r, n = take(s)
    assert repr(r) == "<Job 'm' request id=3 RUNNING>"
    assert repr(n) == "<Job 'n' notification RUNNING>"
    assert r.context is None
    r.context = "driver's"
    assert r.context == "driver's"
    assert repr(s) == "<Session peer OPEN calls=0 running=1 queued=0>"


def test_answer_twice_raises_and_changes_nothing() -> None:
    s = session()
    feed(s, req("m", 1))
    r = job(s)
    s.answer(r, 1, 0)
    sent = s.data_to_send()
    for again in (lambda: s.answer(r, 2, 0), lambda: s.fail(r, ValueError(), 0)):
        with pytest.raises(
            LocalProtocolError, match=r"<Job 'm' request id=1 DONE>: no outcome is expected in state DONE"
        ):
            again()
    assert s.data_to_send() == b"" and sent == wire(ok(1, 1))
    assert r.state is JobState.DONE and s.stats.late_results == 0


def test_outcome_of_a_queued_job_raises() -> None:
    s = session(max_concurrency=1)
    feed(s, req("m", 1), req("m", 2))
    r1 = job(s)
    (queued,) = s._line
    with pytest.raises(LocalProtocolError, match="no outcome is expected in state QUEUED"):
        s.answer(queued, None, 0)
    with pytest.raises(LocalProtocolError, match="no outcome is expected in state QUEUED"):
        s.fail(queued, ValueError(), 0)
    assert queued.state is JobState.QUEUED and s.data_to_send() == b""
    s.answer(r1, None, 0)
    assert job(s) is queued


def test_start_twice_raises() -> None:
    s = session()
    with pytest.raises(LocalProtocolError, match=r"start\(\) in phase OPEN: once, after Connected"):
        s.start(0)


def test_start_after_the_close_is_ignored() -> None:
    s = Session()
    s.close("bye", 0)
    s.start(0)
    assert take(s) == [Connected(), Close("bye")]


def test_started_is_for_running_notifications_only() -> None:
    s = session()
    feed(s, req("m", 1), note("n"))
    r, n = take(s)
    with pytest.raises(LocalProtocolError, match="started\\(\\) is for notifications"):
        s.started(r, 0)
    s.started(n, 0)
    with pytest.raises(LocalProtocolError, match="cannot started in state STARTED"):
        s.started(n, 0)
    s.answer(n, None, 0)
    with pytest.raises(LocalProtocolError, match="cannot started in state DONE"):
        s.started(n, 0)
    assert r.state is JobState.RUNNING


def test_a_call_the_phase_does_not_allow_raises() -> None:
    s = session()
    with pytest.raises(LocalProtocolError, match="cannot authenticated in phase OPEN"):
        s._move("authenticated")
    assert s.phase is Phase.OPEN


# ---- session bugs found while writing this suite, fixed since --------------------------------------


@pytest.mark.parametrize(
    "how",
    [
        "cancel",
        "shutdown",
    ],
)
def test_notification_behind_a_removed_request_starts(how: str) -> None:
    s = session(max_concurrency=1)
    feed(s, req("r", 1), req("r", 2), note("n"))
    r1 = job(s)  # r2 waits for the slot, n waits behind r2
    assert take(s) == []
    if how == "cancel":
        feed(s, lsp_cancel(2))
    else:
        s.shutdown(0, grace=10)
    got = take(s)  # n needs no slot: nothing holds it back now
    if how == "cancel":
        assert s.data_to_send() == wire(err(2, CANCELLED, "Request cancelled"))
    else:
        assert s.data_to_send() == wire(err(2, SHUTTING_DOWN, "Server is shutting down"))
    assert len(got) == 1 and is_job(got[0], "n", notification=True)
    assert r1.state is JobState.RUNNING


def test_no_request_once_the_peer_has_closed_during_a_drain() -> None:
    s = session()
    feed(s, req("r", 1))
    job(s)
    s.shutdown(0, grace=10)
    s.receive_data(b"", 1)
    assert take(s) == []
    assert s.phase is Phase.DRAINING and not s.reading
    assert not s.can_request  # "the peer not at EOF"
    with pytest.raises(ConnectionClosed):
        s.request("m", now=1)  # nobody can answer it: it would wait for the drain to end
    assert s.data_to_send() == b""


@pytest.mark.parametrize("ending", ["shutdown", "eof"])
def test_drain_ends_when_an_interrupted_job_ends(ending: str) -> None:
    s = session(shutdown_timeout=100)
    feed(s, req("r", 1))
    r1 = job(s)
    feed(s, lsp_cancel(1))
    assert take(s) == [Interrupt(r1)]
    if ending == "shutdown":
        s.shutdown(1)
    else:
        s.receive_data(b"", 1)
    assert take(s) == []
    s.answer(r1, None, 2)
    assert take(s) == [Close("server shut down" if ending == "shutdown" else "closed by the peer")]


@pytest.mark.parametrize("how", ["cancel", "timeout"])
@pytest.mark.parametrize(
    "answer", [ok(2, "B"), err(2, 1, "B"), {"jsonrpc": "2.0", "id": 2}], ids=["result", "error", "invalid"]
)
def test_call_given_up_on_while_its_batch_reply_is_read(how: str, answer: Any) -> None:
    s = session()
    s.batch([("a", None, "wa"), ("b", None, "wb")], now=0, timeout=5)
    s.data_to_send()
    feed(s, [ok(1, "A"), answer], now=5)
    check_settle(s.next_event(), 1, "wa", "A")
    if how == "cancel":
        assert s.cancel(2, 5)
    else:
        s.handle_timer(5)
    (settle,) = take(s)  # settled once, by giving up; the answer read later is a late one
    assert settle.id == 2 and type(settle.error) is (RequestCancelled if how == "cancel" else TimeoutError)
    assert s.stats.late_responses == 1 and s.stats.errors == 0


@pytest.mark.parametrize("case", ["batch-reply", "tiny-limit"])
def test_an_answer_that_cannot_be_sent_never_raises(case: str) -> None:
    """Even when a -32007 error does not fit either, the request ends: a short error
    without data (at most 256 bytes) is always sent, so that the peer learns why."""
    if case == "batch-reply":
        s = session(max_message_size=200)
        feed(s, [req("m", 1), req("m", 2), req("m", 3)])
        j1, j2, j3 = take(s)
        s.answer(j1, "x" * 40, 0)
        s.answer(j2, "x" * 40, 0)
        last = j3  # its answer makes the batch's reply too large, and so would a -32007 error
    else:
        s = session(max_message_size=60)
        feed(s, req("m", 1))
        last = job(s)
    s.answer(last, "y" * 100, 0)
    assert last.state is JobState.DONE and s.stats.handlers_running == 0
    limit = s.connection.max_message_size
    data = s.data_to_send()
    assert b'"code":-32007' in data and b"y" * 100 not in data
    assert all(len(line) <= limit + 256 for line in data.split(b"\n"))


def test_an_error_we_send_does_not_restart_the_slow_message_clock() -> None:
    s = session(message_timeout=10)
    s.receive_data(wire(req("r", 1)) + b'{"jsonrpc"', 0)
    r1 = job(s)
    assert s.get_timer() == 10
    s.receive_data(b':"2.0"', 5)  # more of the same slow message
    assert take(s) == [] and s.get_timer() == 10
    s.fail(r1, ValueError("x"), 6)
    assert take(s) == []
    assert s.get_timer() == 10
