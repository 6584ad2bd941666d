"""``submit``'s future is a ``concurrent.futures.Future`` whose condition is made only when a
thread first needs it (to wait, cancel, add a callback, or in ``concurrent.futures.wait``).
A settle that finds none sets the state itself. These races, run many times, must end
as the plain Future's do: no wait is left hanging, and a cancel and a settle never both
win."""

from __future__ import annotations

import concurrent.futures
import threading
from concurrent.futures import CancelledError
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest

from ezipc_adapters._blocking_callers import CallFuture

pytestmark = pytest.mark.timeout(60)

ROUNDS = 500


class FakeRemote:
    """What a CallFuture asks of its Remote, with no connection: nobody reads for it, so
    ``result()`` waits on the condition, and a cancel is only counted."""

    _caller_may_read = False
    _aside = False
    _deferred = False
    _loop = SimpleNamespace(ident=0)

    def __init__(self) -> None:
        self.cancels: list[Any] = []

    def _as_caller(self, wait: Any, id: Any) -> Any:
        return wait()

    def _cancel(self, id: Any) -> None:
        self.cancels.append(id)

    def _submit(self, fn: Any, *args: Any) -> None:
        fn(*args)


def race(first: Any, second: Any) -> None:
    """Run ``first`` and ``second`` in two threads released together."""
    barrier = threading.Barrier(2)

    def run(fn: Any) -> None:
        barrier.wait()
        fn()

    threads = [threading.Thread(target=run, args=(fn,)) for fn in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()


def waiter(future: CallFuture, how: str, got: list[Any]) -> Any:
    """A thread's way to wait for ``future``'s result (into ``got``)."""
    if how == "result":
        return lambda: got.append(future.result(timeout=5))
    if how == "exception":
        return lambda: got.append(future.exception(timeout=5) or future.result())
    if how == "wait":
        return lambda: got.append(
            not concurrent.futures.wait([future], timeout=5).not_done and future.result()
        )
    return lambda: future.add_done_callback(lambda f: got.append(f.result()))


@pytest.mark.parametrize("how", ["result", "exception", "wait", "callback"])
def test_a_settle_racing_a_waiter_always_wakes_it(how: str) -> None:
    remote = FakeRemote()
    for n in range(ROUNDS):
        future = CallFuture(remote, None)  # type: ignore[arg-type]
        got: list[Any] = []
        race(waiter(future, how, got), partial(future._settle, n, None))
        assert got == [n], f"round {n}"


def test_a_settle_and_a_cancel_never_both_win() -> None:
    remote = FakeRemote()
    cancelled = 0
    for n in range(ROUNDS):
        future = CallFuture(remote, None)  # type: ignore[arg-type]
        won: list[bool] = []
        race(partial(lambda f, into: into.append(f.cancel()), future, won), partial(future._settle, n, None))
        assert future.done()
        if won == [True]:
            cancelled += 1
            assert future.cancelled()
            with pytest.raises(CancelledError):
                future.result(timeout=0)
        else:
            assert not future.cancelled() and future.result(timeout=0) == n
    assert len(remote.cancels) == cancelled  # (the peer is told once per cancel that won)


def test_a_future_settled_before_anyone_looked_behaves_as_a_plain_future() -> None:
    remote = FakeRemote()
    ok, bad = CallFuture(remote, None), CallFuture(remote, None)  # type: ignore[arg-type]
    ok._settle(7, None)
    bad._settle(None, ValueError("no"))
    ok._settle(8, None)  # (a second settle changes nothing, as set_result would refuse it)
    assert ok.done() and not ok.cancelled() and not ok.running()
    assert ok.result() == 7 and ok.exception() is None
    assert isinstance(bad.exception(), ValueError)
    with pytest.raises(ValueError):
        bad.result()
    assert ok.cancel() is False and ok.result() == 7
    late: list[Any] = []
    ok.add_done_callback(late.append)  # (runs at once: done already)
    assert late == [ok]
    assert concurrent.futures.wait([ok, bad], timeout=0).not_done == set()
    assert list(concurrent.futures.as_completed([ok, bad], timeout=1)) != []
    assert "finished" in repr(ok)
    with pytest.raises(AttributeError):
        ok.no_such_attribute  # noqa: B018
