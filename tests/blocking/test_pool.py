"""The worker pool: jobs that wait on later jobs must not starve while it has room."""

from __future__ import annotations

import threading

import pytest

from ezipc_adapters._blocking import _Pool

pytestmark = pytest.mark.timeout(30)


def test_a_job_waiting_on_a_later_one_gets_a_new_worker() -> None:
    pool = _Pool(4, "test")
    warm = threading.Event()
    pool.submit(warm.set)
    assert warm.wait(5)
    wait_for_worker_to_be_free = threading.Event()
    pool.submit(wait_for_worker_to_be_free.set)
    assert wait_for_worker_to_be_free.wait(5)
    later, done = threading.Event(), threading.Event()
    pool.submit(lambda: later.wait(5) and done.set())  # takes the free worker and blocks
    pool.submit(later.set)  # must start a new worker, not wait behind the blocked one
    assert done.wait(5)
    pool.close()


def test_the_pool_is_bounded_and_runs_jobs_in_order() -> None:
    pool = _Pool(2, "test")
    release = threading.Event()
    order: list[int] = []
    finished = threading.Semaphore(0)

    def job(i: int) -> None:
        if i < 2:
            release.wait(5)
        order.append(i)
        finished.release()

    for i in range(6):
        pool.submit(job, i)
    assert len(pool._threads) == 2  # the rest wait: the bound holds
    release.set()
    for _ in range(6):
        assert finished.acquire(timeout=5)
    assert sorted(order) == list(range(6))
    pool.close()
    with pytest.raises(RuntimeError):
        pool.submit(job, 9)
