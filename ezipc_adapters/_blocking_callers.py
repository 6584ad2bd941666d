"""The blocking driver's shortcut: a thread that waits for an answer reads the socket
itself, instead of sleeping until the I/O thread reads it and wakes it (a thread hop and
a turn of the GIL less per call). A caller of ``request``, the ``result()`` of a future
from ``submit``, and a worker that has just answered (waiting for its connection's next
request, to run it itself) each read this way, one at a time per connection; meanwhile
the I/O thread does not watch the socket. A thread that takes settled results (a
pipelining loop) keeps it aside too, and looks for what has come itself (``Peek``,
``_collected``). On plain sockets only (TLS and pipes go
through the I/O thread). Every decision is still the session's: the reader feeds it
through the connection's own ``_on_readable``.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout  # (3.10: not the builtin)
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from typing import TYPE_CHECKING, Any

from ezipc_proto import Job, Session

from ._blocking_io import Loop, SocketStream, Stream, capped, monotonic, quietly, signal_cap
from ._registry import Handler

if TYPE_CHECKING:
    from ._blocking import Remote

GRACE = 0.001  # how long the loop stays aside after a caller read for itself
# ... or after it took an answer read already (``result()`` of a settled future). A
# pipelining loop reads a chunk of answers, then takes them for a few ms: before, the
# loop took the socket back meanwhile, and the two threads took turns at the GIL (64
# pipelined submits to the floor's server: the loop read 2216 times in a run, now 13;
# 17k -> 20-24k calls/s). Such a thread reads what has come at most GRACE after its last
# read (a non-blocking look), so a message from the peer still waits about GRACE at most.


_DONE = frozenset((CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED))  # a future's states once done


class Waiter:
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


class Peek:
    """A thread that takes settled answers looks for what has come, without waiting (see
    ``CallerReads._collected``)."""

    __slots__ = ("wake",)

    def __init__(self) -> None:
        self.wake: Callable[[], None] | None = None

    def _finished(self) -> bool:
        return False


class NextJob:
    """A worker that has answered waits, reading the connection itself, for the next
    request, to run it at once (see ``Runners._run_jobs``)."""

    __slots__ = ("job", "wake")

    def __init__(self) -> None:
        self.job: tuple[Job, Handler | None, threading.Event | None] | None = None
        self.wake: Callable[[], None] | None = None

    def _finished(self) -> bool:
        return self.job is not None


# A future's threading.Condition is made when a thread first needs it (see CallFuture):
# this lock orders that against a settle that finds none.
_CONDITION_MADE = threading.Lock()
# What Future.__init__ sets (the same from Python 3.6 to 3.13): CallFuture sets it itself,
# all but the condition; a Python whose Future sets more gets the plain __init__.
_LAZY_CONDITION = set(vars(Future())) == {
    "_condition",
    "_state",
    "_result",
    "_exception",
    "_waiters",
    "_done_callbacks",
}


class CallFuture(Future[Any]):
    """What ``submit`` returns: a ``concurrent.futures.Future`` whose ``result()`` (and
    ``exception()``) reads the answer itself when it can, as a caller of ``request``
    does; ``callback`` runs in a worker.

    Its ``_condition`` is made only when a thread first asks for it (``__getattr__``):
    to wait, cancel, add a callback, or in ``concurrent.futures.wait``. A pipelining
    loop's futures, settled before their ``result()``, never need one: a Condition
    was the costliest part of a submit() after the request itself (1.4 of 2.4 µs to
    make a future here), and its settle took two turns of its lock. A settle that finds
    no condition sets the state itself; both decide under ``_CONDITION_MADE``, so a
    thread that made the condition first is woken by the settle under it."""

    def __init__(self, remote: Remote, callback: Callable[[Future[Any]], Any] | None) -> None:
        if _LAZY_CONDITION:
            self._state = PENDING
            self._result = None
            self._exception = None
            self._waiters = []  # (concurrent.futures.wait's)
            self._done_callbacks: list[Callable[[Future[Any]], object]] = []
        else:
            super().__init__()
        self._remote = remote
        self._callback = callback
        self._id: Any = None  # the request's (set by submit before it returns the future)
        self._claimed = False  # a cancel() is telling the peer
        self.wake: Callable[[], None] | None = None

    def cancel(self) -> bool:
        """Cancel the call: the peer is told to cancel too, and ``callback`` runs (once,
        however many times, and from however many threads, it is cancelled)."""
        with self._condition:
            first = self._state == PENDING and not self._claimed
            self._claimed = self._claimed or first
        if not super().cancel():
            return False
        if first:
            self._remote._cancel(self._id)
            if self._callback is not None:
                self._remote._submit(self._callback, self)
        return True

    def __getattr__(self, name: str) -> Any:
        if name != "_condition":
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        with _CONDITION_MADE:
            condition = self.__dict__.get("_condition")
            if condition is None:
                condition = self.__dict__["_condition"] = threading.Condition()
        return condition

    def _finished(self) -> bool:
        return self._state in _DONE  # (done() without its lock: once done, it stays done)

    def _settle(self, result: Any, error: BaseException | None) -> None:
        with _CONDITION_MADE:
            # No condition: no thread has looked at this future under its lock, so none
            # waits on it, cancelled it or added a callback (each would have made it).
            quiet = "_condition" not in self.__dict__
            if quiet:
                if self._state != PENDING:
                    return  # (settled already: as set_result would refuse it)
                self._result, self._exception = result, error
                self._state = FINISHED  # (last: a reader that sees it sees the rest)
        if not quiet:
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
        if self._state == FINISHED and self._exception is None:
            # Settled with a result (final: no lock needed to read it), as a pipelining
            # loop finds most: five calls and four turns of the future's lock less.
            if self._remote._aside:
                self._remote._collected()
            return self._result
        get = super().result
        return self._remote._as_caller(lambda: self._result_of(get, timeout), self._id)

    def _result_of(self, get: Callable[[float | None], Any], timeout: float | None) -> Any:
        timeout = self._read(timeout)
        if self._state == FINISHED and self._exception is None:
            return self._result  # (it read its answer itself: as above, a dozen calls less)
        return self._wait(get, timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        get = super().exception
        return self._remote._as_caller(lambda: self._wait(get, self._read(timeout)), self._id)  # type: ignore[no-any-return]

    def _wait(self, get: Callable[[float | None], Any], timeout: float | None) -> Any:
        """``get(timeout)`` (the base class's ``result`` or ``exception``); on the main
        thread in slices of SIGNAL_CHECK (see there)."""
        cap = signal_cap()
        if cap is None:
            return get(timeout)
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            try:
                return get(capped(None if deadline is None else max(0.0, deadline - monotonic()), cap))
            except FutureTimeout:
                # (The call's own TimeoutError, once it has failed so, is the same class
                # from Python 3.11 on: it is raised at once. It was taken for a slice
                # that ran out: result() on the main thread spun, for ever without a
                # timeout.)
                if self._state in _DONE or (deadline is not None and monotonic() >= deadline):
                    raise

    def _read(self, timeout: float | None) -> float | None:
        """Read for it (if it may); the time left of ``timeout``."""
        remote = self._remote
        if self._state in _DONE:
            if remote._aside:
                remote._collected()
            return timeout
        if remote._deferred:
            remote._flush()  # (submits held back: see Remote.submit)
        if not remote._caller_may_read or threading.get_ident() == remote._loop.ident:
            return timeout
        deadline = None if timeout is None else monotonic() + timeout
        remote._read_for(self, deadline)
        return None if deadline is None else max(0.0, deadline - monotonic())


class CallerReads:
    """What lets the threads of a ``Remote`` read for themselves (mixed into it)."""

    _lock: threading.Lock
    _session: Session
    _stream: Stream
    _loop: Loop
    _ended: bool
    _deferred: bool

    def _flush(self) -> None:
        raise NotImplementedError

    def _watch(self) -> None:
        raise NotImplementedError

    def _watch_locked(self) -> None:
        raise NotImplementedError

    def _on_readable(self) -> None:
        raise NotImplementedError

    def _init_reading(self, stream: Stream) -> None:
        # A caller of request() may read its own answer (a plain socket; one caller at a
        # time): a thread hop less, about 50 µs of a sequential call here.
        self._caller_may_read = type(stream) is SocketStream
        self._caller_reading: Waiter | CallFuture | NextJob | Peek | None = None
        # After a caller's read, the loop stays aside for GRACE (the next call's caller
        # likely reads too): the I/O thread neither takes the socket back nor competes
        # for the GIL meanwhile (64 pipelined submits: 19.6k -> 21.3k calls/s). What comes
        # then with no caller reading (a server's request) waits at most that long.
        self._aside = False
        self._give_back_due = False
        self._last_read = 0.0  # when a caller last read for itself
        self._last_collect = 0.0  # when a caller last took a settled answer (see _collected)
        self._reader_ident = 0
        self._wake_pipe: tuple[int, int] | None = None
        self._poller: Any = None  # (select.poll: made once)

    def _stand_aside(self) -> None:
        """A thread is about to wait for an answer (``submit``): the loop stands aside,
        for GRACE at most, so that the waiter reads it."""
        with self._lock:
            schedule = not self._io_over() and self._stand_aside_locked()
            self._watch_locked()
        if schedule:
            self._loop.call_at(self._last_read + GRACE, self._give_back)

    def _collected(self) -> None:
        """A thread took a settled answer while the loop stands aside: it likely reads the
        next one too, so the loop stays aside; and once GRACE has passed since the last
        read, this thread reads what has come meanwhile, without waiting."""
        now = monotonic()
        self._last_collect = now
        if (
            now >= self._last_read + GRACE
            and self._caller_reading is None
            and self._caller_may_read
            and threading.get_ident() != self._loop.ident
        ):
            if self._deferred:
                self._flush()  # (as CallFuture._read)
            self._read_for(Peek(), now)

    def _read_for(
        self, waiter: Waiter | CallFuture | NextJob | Peek, deadline: float | None = None, linger: bool = True
    ) -> None:
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
            if not self._aside:  # (aside, the loop does not read it already)
                self._watch_locked()  # the loop stops reading this socket
        waiter.wake = self._wake_reader
        cap = signal_cap()  # (see SIGNAL_CHECK)
        try:
            while not waiter._finished():
                if deadline is None:
                    wait = cap
                else:  # (capped(), written out: two calls less per wait)
                    wait = deadline - monotonic()
                    wait = 0.0 if wait < 0.0 else wait if cap is None or wait < cap else cap
                ready = poller.poll(None if wait is None else wait * 1000)
                for fd, _ in ready:
                    if fd == wake_r:
                        os.read(wake_r, 64)
                    else:
                        self._on_readable()
                if waiter._finished() or self._io_over():
                    break  # (settled; or by the close: the lock says so)
                if deadline is not None and monotonic() >= deadline:
                    break  # (the time given is up, though a busy peer's bytes keep coming)
        finally:
            waiter.wake = None
            schedule = False
            with self._lock:
                self._caller_reading = None
                if self._io_over():  # (nobody will wake a reader now)
                    self._close_wake_pipe()
                elif linger:
                    schedule = self._stand_aside_locked()
                self._watch_locked()  # (the loop reads again, if the connection is going away)
            if schedule:
                self._loop.call_at(self._last_read + GRACE, self._give_back)

    def _stand_aside_locked(self) -> bool:
        """The loop leaves the socket to callers for the next GRACE; True if the timer
        that gives it back is to be set."""
        self._aside = True
        self._last_read = monotonic()
        schedule, self._give_back_due = not self._give_back_due, True
        return schedule

    def _give_back(self, now: float) -> None:
        """The loop reads again once no caller has read for GRACE, nor taken a settled
        answer (see ``_collected``): checked at most once per GRACE, one timer at a time."""
        with self._lock:
            until = max(self._last_read, self._last_collect) + GRACE
            if self._caller_reading is not None or now < until:
                again = max(now, until) if self._caller_reading is None else now + GRACE
            else:
                again = None
                self._give_back_due = self._aside = False
        if self._deferred:
            self._flush()  # (submits held back at most GRACE: see Remote.submit)
        if again is not None:
            self._loop.call_at(again, self._give_back)
            return
        self._watch()

    def _io_over(self) -> bool:
        return self._ended or not self._session.reading

    def _wake_reader(self) -> None:
        """The caller reading for itself waits in poll(): its call was settled elsewhere."""
        if threading.get_ident() == self._reader_ident:
            return  # (it settled it itself)
        with self._lock:
            if self._wake_pipe is not None:
                quietly(os.write, self._wake_pipe[1], b"x")

    def _close_wake_pipe(self) -> None:  # under the lock
        if self._wake_pipe is not None:
            for fd in self._wake_pipe:
                quietly(os.close, fd)
            self._wake_pipe = self._poller = None
