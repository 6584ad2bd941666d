"""A blocking connection's runners: the pool threads that run its handlers.

A pool task per request would make a thread for each one that finds no idle thread: 64
pipelined requests made 32 threads (the whole pool) for handlers that take microseconds,
+6 MiB of memory and no faster. Instead a connection's jobs wait in a queue, and its
runners (pool tasks) take them in turn: the first starts with the first job, and one
more joins when a job has waited RUNNER_GRACE with every runner inside a handler (which
may block, or wait for its peer). 64 pipelined calls, blocking client and server,
interleaved runs: 19-21k -> 34k calls/s; the server's threads 34 -> 4, its peak RSS
24.2 -> 18.7 MiB. Eight threads calling 1 ms handlers still run 4.4x one thread's rate.

A handler that waits for an answer from a peer holds its pool thread, and the answer
may need a peer's next request to run here (a call back: A's handler calls B, whose
handler calls A, over this connection or another of this pool's). With every pool
thread held so, that request would wait for a thread for good. So while handlers of
this pool wait for answers and this connection's jobs wait for a thread the pool cannot
give (its queue is not empty), one more runner joins on a thread of its own, outside
the pool: at most one per handler so waiting, counted across the pool.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ._blocking_callers import NextJob, Peek, Waiter
from ._blocking_io import Loop, monotonic

if TYPE_CHECKING:
    from ezipc_proto import Job

    from ._blocking_callers import CallFuture
    from ._registry import Handler

RUNNER_GRACE = 0.001  # how long jobs wait, every runner busy, before one more joins
WORKER_GRACE = 0.001  # how long a runner with no job reads for the next request

Item = tuple["Job", "Handler | None", "threading.Event | None"]


class Pool(ThreadPoolExecutor):
    """A server's or client's threads for handlers, with two counts across its
    connections (see the module's docstring).

    It makes a thread only when its tasks outnumber its threads. ThreadPoolExecutor
    decides by a semaphore of idle threads, which loses count from Python 3.12: a
    thread that has just finished a task takes the next queued one at once, while the
    idle thread whose count the submit took for it stays idle, and is never counted
    again. Runners that linger for their connection's next request hit that: 300
    connections made one after another grew a server's pool to 32 threads on 3.12.1
    (2 on 3.11), and `test_connections_leak_neither_descriptors_nor_threads` failed."""

    def __init__(self, max_workers: int, prefix: str, initializer: Callable[[], None]) -> None:
        super().__init__(max_workers, prefix, initializer=initializer)
        self.counts_lock = threading.Lock()
        self.calling = 0  # handlers waiting for an answer from a peer (each holds a thread)
        self.overflow = 0  # runners on threads of their own
        self.tasks = 0  # submitted and not yet done (queued or running)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self.counts_lock:
            self.tasks += 1
        try:
            return super().submit(self._counted, fn, args, kwargs)
        except BaseException:
            self._done()
            raise

    def _counted(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            self._done()

    def _done(self) -> None:
        with self.counts_lock:
            self.tasks -= 1

    def _adjust_thread_count(self) -> None:
        # (Called by submit, the task queued already.) A thread for every task: none
        # more. Else a new one, as the base class makes it, its semaphore emptied first
        # so that it does (it is not asked otherwise).
        if len(self._threads) >= self.tasks:
            return
        while self._idle_semaphore.acquire(timeout=0):
            pass
        super()._adjust_thread_count()


class Runners:
    """What runs a ``Remote``'s jobs (mixed into it)."""

    _pool: Pool
    _loop: Loop
    _caller_may_read: bool
    _caller_reading: Waiter | CallFuture | NextJob | Peek | None
    _ended: bool
    _reports: deque[Any]  # handlers' outcomes, some held back for the jobs after them (see Remote._report)

    def _submit(self, fn: Any, *args: Any) -> None:
        raise NotImplementedError

    def _serve_one(self, job: Job, handler: Handler | None, token: threading.Event | None) -> None:
        raise NotImplementedError

    def _read_for(self, waiter: Any, deadline: float | None = None, linger: bool = True) -> None:
        raise NotImplementedError

    def _io_over(self) -> bool:
        raise NotImplementedError

    def _start_thread(self, fn: Any) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        raise NotImplementedError

    def _init_runners(self) -> None:
        self._jobs: deque[tuple[Item, float]] = deque()  # waiting, with when they came
        self._jobs_lock = threading.Lock()
        self._runners = 0  # started (in the pool, or running)
        self._free = 0  # of those, the ones not inside a handler
        self._check_due = False  # a check is set (see _check_runners)
        self._unstarted = 0  # of the runners, those still in the pool's queue
        # (ThreadPoolExecutor's queue of tasks not yet taken: work for other threads waits
        # there, so a runner with no job goes back; a pool without it: no reading)
        self._pool_queue: Any = getattr(self._pool, "_work_queue", None)

    def _queue_job(self, item: Item) -> None:
        """A job for this connection's runners. The first runner starts with the first
        job; while jobs wait, a check each RUNNER_GRACE adds a runner if the oldest has
        waited that long with every runner in a handler."""
        now = monotonic()
        with self._jobs_lock:
            self._jobs.append((item, now))
            start = self._runners == 0
            if start:
                self._runners = self._free = self._unstarted = 1
            check = not self._check_due
            self._check_due = True
        if start:
            self._submit(self._run_jobs)
        if check:
            self._loop.call_at(now + RUNNER_GRACE, self._check_runners)

    def _check_runners(self, now: float) -> None:
        """If the oldest job has waited RUNNER_GRACE and every runner is inside a handler
        (which may block, or wait for its peer): one more runner. Again in RUNNER_GRACE
        while jobs wait. Handlers' outcomes held back for the jobs after them are applied
        and their answers written (see ``Remote._report``): the handler running now may
        block."""
        if self._reports:
            self._flush()
        with self._jobs_lock:
            self._check_due = bool(self._jobs) and not self._ended  # (ended: runners drain)
            if not self._check_due:
                return
            waited = self._jobs[0][1] <= now - RUNNER_GRACE
            stuck = not self._free and waited
            if stuck:
                self._runners += 1
                self._free += 1
                self._unstarted += 1
            # Every free runner still waits for a pool thread, while handlers hold
            # theirs waiting for an answer: the pool may never give one.
            overflow = (
                not stuck
                and waited
                and self._free == self._unstarted
                and self._pool_queue is not None
                and self._pool_queue.qsize() > 0
                and self._take_overflow()
            )
            if overflow:
                self._runners += 1
                self._free += 1
        if stuck:
            self._submit(self._run_jobs)
        if overflow:
            self._start_thread(self._run_overflow)
        self._loop.call_at(now + RUNNER_GRACE, self._check_runners)

    def _take_overflow(self) -> bool:
        """May one more runner start outside the pool? (Counted if so.)"""
        pool = self._pool
        with pool.counts_lock:
            if pool.calling <= pool.overflow:
                return False
            pool.overflow += 1
            return True

    def _run_overflow(self) -> None:
        """A runner on a thread of its own (see the module's docstring)."""
        try:
            self._run_jobs(pooled=False)
        finally:
            pool = self._pool
            with pool.counts_lock:
                pool.overflow -= 1

    def _calls_peer(self, waiting: bool) -> None:
        """A handler of this connection begins (or ends) waiting for an answer, from
        this connection's peer or another's (its thread is held meanwhile)."""
        pool = self._pool
        with pool.counts_lock:
            pool.calling += 1 if waiting else -1

    def _run_jobs(self, pooled: bool = True) -> None:
        """A runner (in the pool): run this connection's jobs in order while there are
        any. With none, if the pool has nothing waiting and nobody reads the
        connection, read it for the next request (for WORKER_GRACE at most) and run
        that too: a sequential peer's requests then take no thread hop and no turn of
        the GIL between the I/O thread and a worker (sequential calls: 140-160 -> 125 µs
        here; futex calls per request, by strace: 9 -> 0.6)."""
        lock = self._jobs_lock
        read_in_vain = False
        busy = False  # in a job: not counted free (counted again at the next turn of the lock)
        if pooled:
            with lock:
                self._unstarted -= 1
        try:
            while True:
                # Outcomes held back for the jobs after them (see Remote._report) are
                # applied, and their answers written, once there are none: before this
                # runner reads or leaves, and before it runs the last (which may block).
                if self._reports and not self._jobs:
                    self._flush()
                with lock:
                    if busy:
                        busy = False
                        self._free += 1
                    if self._jobs:
                        item = self._jobs.popleft()[0]
                        self._free -= 1
                    elif read_in_vain or not self._may_read_next():
                        self._runners -= 1
                        self._free -= 1
                        return
                    else:
                        item = None
                if item is None:
                    waiter = NextJob()
                    self._read_for(waiter, monotonic() + WORKER_GRACE)
                    if waiter.job is None:
                        read_in_vain = True  # (what the read queued is taken, then it leaves)
                        continue
                    read_in_vain = False
                    item = waiter.job
                    with lock:
                        self._free -= 1
                busy = True
                if self._reports and not self._jobs:
                    self._flush()
                self._serve_one(*item)
        except BaseException:  # (SystemExit from a handler: answered, then raised)
            with lock:
                self._runners -= 1
                if not busy:
                    self._free -= 1
                orphaned = bool(self._jobs) and not self._free
                if orphaned:
                    self._runners += 1
                    self._free += 1
                    self._unstarted += 1
            if orphaned:
                self._submit(self._run_jobs)
            raise

    def _may_read_next(self) -> bool:
        """May a runner with no job read the connection for the next request?"""
        queue = self._pool_queue
        return (
            self._caller_may_read
            and self._caller_reading is None
            and queue is not None
            and not queue.qsize()
            and not self._io_over()
        )
