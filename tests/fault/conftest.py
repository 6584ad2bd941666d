"""Fault and load tests of the async adapter: shared server, helpers and post-conditions.

Every scenario runs inside ``harness(server)``: it serves on loopback with tracemalloc on,
lets the test run a warm-up round, takes a baseline (``await h.baseline()``), runs the
scenario, and ends with ``await h.check()``, which asserts the same post-conditions
everywhere:

* the server is alive and answers a normal client correctly, in each framing it speaks;
* ``server.remotes`` is empty within ``SETTLE`` seconds once the clients have gone;
* every pending call ended: no ``Call`` object alive is unfinished, and no ``Remote``
  object is alive at all (each was freed: no handler, waiter or task kept it);
* no task left behind: as many running tasks as at the baseline;
* no socket left behind: as many open file descriptors as at the baseline;
* memory back to its baseline: traced memory after ``gc.collect()`` has grown by less
  than ``MEMORY_BOUND`` (a leak of one small object per connection of a 1,000-connection
  scenario would exceed it).

The ezipc logger's records are counted and stopped by a filter for these tests: pytest's
log capture keeps every record (and each one's traceback, frames and all), which would
read as a leak.
"""

from __future__ import annotations

import collections
import gc
import json
import linecache
import logging
import os
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from ezipc_adapters import Call, ErrorCode, Remote, RemoteError, Server, connect
from ezipc_proto import _framing as ezipc_framing

from ..aio.conftest import RawPeer, anyio_backend, raw_connect, serving

__all__ = [
    "MEMORY_BOUND",
    "SETTLE",
    "App",
    "Harness",
    "LogCounter",
    "RawPeer",
    "anyio_backend",
    "buffered",
    "cl_frame",
    "harness",
    "nd_frame",
    "raw_connect",
    "read_answers",
]

MiB = 1024 * 1024
#: Traced memory a scenario may leave behind once everything is collected.
MEMORY_BOUND = int(os.environ.get("EZIPC_FAULT_MEMORY_BOUND", MiB))
#: Seconds within which the server must have forgotten every client that went away.
SETTLE = 10.0
#: Where each check's measurements are appended (one JSON line), if set.
REPORT = os.environ.get("EZIPC_FAULT_REPORT")


class LogCounter(logging.Filter):
    """Counts the ezipc logger's records by level and message template, then stops them:
    installed as a filter of the logger itself, it sees each record before any handler
    (pytest's capture handlers included) and lets none through. Each record is formatted
    first, tracebacks included, so that formatting is exercised too."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        self._formatter.format(record)
        self.counts[record.levelname, str(record.msg)] += 1
        return False

    def total(self, level: str = "ERROR") -> int:
        return sum(n for (lvl, _), n in self.counts.items() if lvl == level)


@pytest.fixture(autouse=True)
def ezipc_log() -> Iterator[LogCounter]:
    logger = logging.getLogger("ezipc")
    counter = LogCounter()
    saved = logger.level
    logger.addFilter(counter)
    logger.setLevel(logging.WARNING)
    try:
        yield counter
    finally:
        logger.removeFilter(counter)
        logger.setLevel(saved)


class App:
    """A server with the handlers the scenarios use, counting what its handlers saw."""

    def __init__(self, **options: Any) -> None:
        self.server = server = Server(**options)
        self.hangs_started = 0
        self.hangs_ended = 0
        self.hang_started = anyio.Event()

        server.hook_request("echo", lambda value=None: value)
        server.hook_request("sum", lambda *xs: sum(xs))
        server.hook_request("blob", lambda n: "x" * n)

        @server.method
        async def aecho(value: Any = None) -> Any:
            await anyio.sleep(0)
            return value

        @server.method
        async def ablob(n: int) -> str:
            await anyio.sleep(0)
            return "x" * n

        @server.method
        async def slow(delay: float, value: Any = None) -> Any:
            await anyio.sleep(delay)
            return value

        @server.method
        async def hang() -> None:
            self.hangs_started += 1
            self.hang_started.set()
            try:
                await anyio.sleep_forever()
            finally:
                self.hangs_ended += 1


def nd_frame(body: bytes) -> bytes:
    return body + b"\n"


def cl_frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def buffered(remote: Remote) -> int:
    """Bytes the connection's framer holds (received, not yet handed out)."""
    framer: Any = remote._session.connection._framer
    total = len(getattr(framer, "_pending", b""))
    framer = getattr(framer, "detected", framer)
    if framer is not None:
        total += len(framer._buf) + sum(len(f) for f in framer.ready if isinstance(f, (bytes, bytearray)))
    return total


async def read_answers(peer: RawPeer, until: Any, timeout: float = 5.0) -> tuple[list[Any], bool]:
    """Answers up to the one whose id is ``until`` (excluded), and whether it came (False:
    the server closed the connection first)."""
    answers: list[Any] = []
    with anyio.fail_after(timeout):
        while True:
            try:
                answer = await peer.receive(timeout)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return answers, False
            if isinstance(answer, dict) and answer.get("id") == until and until is not None:
                return answers, True
            answers.append(answer)


def _live(cls: type) -> list[Any]:
    return [o for o in gc.get_objects() if isinstance(o, cls)]


def _collect() -> None:
    # Caches, not leaks: source lines read to format logged tracebacks, and the core's
    # bounded memos of Content-Length headers (filled as new lengths come by).
    linecache.clearcache()
    for name in ("_LENGTHS", "_HEADERS"):
        cache = getattr(ezipc_framing, name, None)
        if isinstance(cache, dict):
            cache.clear()
    for _ in range(3):
        gc.collect()


class Harness:
    """The server under test and the post-conditions (see the module's docstring)."""

    def __init__(self, app: App | Server, address: str) -> None:
        self.server = app.server if isinstance(app, App) else app
        self.address = address
        self.base: dict[str, Any] | None = None
        self._snapshot: tracemalloc.Snapshot | None = None
        self.scenario_started = 0.0

    async def probe(self) -> None:
        """A normal client, in each framing the server speaks, gets correct answers."""
        value = {"text": "h\u00e9llo \U0001f600", "n": [1, 2.5, None, True, -(2**63)], "deep": [[[{}]]]}
        speaks = self.server.options.framing
        with anyio.fail_after(15):
            for framing in ("ndjson", "content-length") if speaks == "auto" else (speaks,):
                async with connect(self.address, framing=framing, timeout=5, request_timeout=10) as remote:
                    assert await remote.request("echo", [value]) == value
                    assert await remote.request("aecho", {"value": framing}) == framing
                    assert await remote.request("sum", [1, 2, 3]) == 6
                    results = await remote.batch(
                        [("sum", [2, 2]), ("nosuch", None)], notify=[("nosuch", None)]
                    )
                    assert results[0] == 4
                    assert isinstance(results[1], RemoteError)
                    assert results[1].code == ErrorCode.METHOD_NOT_FOUND

    async def settle(self, timeout: float = SETTLE) -> None:
        """Wait until the server has no connection left (the clients have all gone)."""
        with anyio.move_on_after(timeout):
            while self.server.remotes:
                await anyio.sleep(0.01)
        left = [(r, r._session.close_reason, r.stats.as_dict()) for r in self.server.remotes]
        assert not left, f"connections still open {timeout}s after their clients left: {left}"
        await anyio.sleep(0.02)  # let transports run their last callbacks

    def measure(self) -> dict[str, Any]:
        _collect()
        remotes = _live(Remote)
        calls = _live(Call)
        return {
            "tasks": len(anyio.get_running_tasks()),
            "fds": len(os.listdir("/proc/self/fd")),
            "memory": tracemalloc.get_traced_memory()[0],
            "remotes": len(remotes),
            "calls": len(calls),
            "unfinished_calls": sum(not c.done() for c in calls),
        }

    async def baseline(self) -> None:
        """After the warm-up round: the state every check compares with."""
        await self.settle()
        await self.probe()
        await self.settle()
        self.base = self.measure()
        self._snapshot = tracemalloc.take_snapshot()
        tracemalloc.reset_peak()
        self.scenario_started = time.monotonic()

    def peak_growth(self) -> int:
        """Traced memory's peak since the baseline, above the baseline."""
        assert self.base is not None
        return tracemalloc.get_traced_memory()[1] - self.base["memory"]

    async def check(self, memory_bound: int = MEMORY_BOUND, **extra: Any) -> dict[str, Any]:
        """The post-conditions; returns the measurements (also appended to REPORT)."""
        assert self.base is not None, "call baseline() after the warm-up round"
        scenario_time = time.monotonic() - self.scenario_started
        peak = self.peak_growth()
        await self.settle()
        await self.probe()
        await self.settle()
        after = self.measure()
        base = self.base
        remotes = _live(Remote)
        details = [(r, r._session, r._session.close_reason, r.stats.as_dict()) for r in remotes]
        del remotes
        growth = after["memory"] - base["memory"]
        result = {
            "scenario_seconds": round(scenario_time, 2),
            "tasks_before": base["tasks"],
            "tasks_after": after["tasks"],
            "fds_before": base["fds"],
            "fds_after": after["fds"],
            "memory_growth_kib": round(growth / 1024, 1),
            "peak_growth_kib": round(peak / 1024, 1),
            "live_remotes": after["remotes"],
            "live_calls": after["calls"],
            **extra,
        }
        if REPORT:
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
            with open(REPORT, "a") as out:
                out.write(json.dumps({"test": test, **result}) + "\n")
        assert after["unfinished_calls"] == 0, f"{after['unfinished_calls']} calls never ended"
        assert after["remotes"] == 0, f"Remote objects still alive after the scenario: {details}"
        assert after["tasks"] == base["tasks"], f"tasks left behind: {base['tasks']} -> {after['tasks']}"
        assert after["fds"] == base["fds"], f"descriptors left open: {base['fds']} -> {after['fds']}"
        if growth >= memory_bound:
            assert self._snapshot is not None
            top = tracemalloc.take_snapshot().compare_to(self._snapshot, "lineno")[:15]
            raise AssertionError(
                f"memory grew by {growth / 1024:.0f} KiB (bound {memory_bound // 1024} KiB):\n"
                + "\n".join(map(str, top))
            )
        return result


@asynccontextmanager
async def harness(app: App | Server, *addresses: str) -> AsyncIterator[Harness]:
    """Serve ``app`` with tracemalloc on; yield the ``Harness`` (see the module docstring)."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        server = app.server if isinstance(app, App) else app
        async with serving(server, *addresses) as bound:
            yield Harness(app, bound[0])
    finally:
        if not tracing:
            tracemalloc.stop()
