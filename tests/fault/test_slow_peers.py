"""Slow senders and peers that never read: they are cut off or held back, with bounded
buffers, while other clients are served as usual."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from ezipc_adapters import Remote, connect

from .conftest import App, LogCounter, harness, raw_connect

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

MiB = 1024 * 1024


@dataclass
class Latency:
    calls: int = 0
    worst: float = 0.0


async def steady_client(address: str, stop: anyio.Event, latency: Latency, blob: int = 0) -> None:
    """Calls the server every 10 ms until ``stop``; every answer must be right."""
    async with connect(address, timeout=5, request_timeout=10) as remote:
        for i in itertools.count():
            if stop.is_set():
                return
            started = anyio.current_time()
            assert await remote.request("echo", [i]) == i
            if blob:
                assert await remote.request("blob", [blob]) == "x" * blob
            latency.worst = max(latency.worst, anyio.current_time() - started)
            latency.calls += 1
            await anyio.sleep(0.01)


# ---- a slow sender ---------------------------------------------------------------------

MESSAGE_TIMEOUT = 0.5
TRICKLE = 0.05  # seconds between bytes


async def trickle(address: str, data: bytes) -> float:
    """Send ``data`` one byte every TRICKLE seconds; the seconds until the server closed."""
    closed = anyio.Event()
    async with raw_connect(address) as peer:
        started = anyio.current_time()
        ended = started

        async def watch() -> None:
            nonlocal ended
            assert await peer.receive_eof(timeout=10) == b""  # no answer, just the end
            ended = anyio.current_time()
            closed.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            for byte in itertools.cycle(data):
                if closed.is_set():
                    break
                try:
                    await peer.stream.send(bytes([byte]))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    break
                await anyio.sleep(TRICKLE)
    return ended - started


async def in_time_sender(address: str, count: int) -> None:
    """Each message in three pieces, well within the timeout: never cut off."""
    async with raw_connect(address) as peer:
        for i in range(count):
            data = json.dumps({"jsonrpc": "2.0", "method": "echo", "params": [i], "id": i}).encode() + b"\n"
            for piece in (data[:10], data[10:20], data[20:]):
                await peer.stream.send(piece)
                await anyio.sleep(MESSAGE_TIMEOUT / 5)
            assert await peer.receive() == {"jsonrpc": "2.0", "id": i, "result": i}


async def test_slow_senders_are_cut_off_others_are_not(ezipc_log: LogCounter) -> None:
    app = App(message_timeout=MESSAGE_TIMEOUT)
    request = b'{"jsonrpc":"2.0","method":"echo","params":["slow"],"id":1}\n'  # 3 s at this pace

    async def round(slow: int) -> tuple[list[float], Latency]:
        cut: list[float] = []
        latency = Latency()
        stop = anyio.Event()

        async def one_slow() -> None:
            cut.append(await trickle(h.address, request))

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(steady_client, h.address, stop, latency)
                async with anyio.create_task_group() as senders:
                    for _ in range(slow):
                        senders.start_soon(one_slow)
                    senders.start_soon(in_time_sender, h.address, 3)
                stop.set()
        return cut, latency

    async with harness(app) as h:
        await round(2)
        await h.baseline()
        timeouts_before = ezipc_log.counts["WARNING", "%s: closing %s (timeout)"]
        cut, latency = await round(20)
        # Each was cut off once the message had been half-received MESSAGE_TIMEOUT seconds
        # (the clock is not reset by each byte), long before it could have finished.
        assert len(cut) == 20
        assert all(MESSAGE_TIMEOUT - 0.05 <= t < MESSAGE_TIMEOUT + 2.0 for t in cut), cut
        # (At least: a byte that arrives as the connection closes may log it twice.)
        assert ezipc_log.counts["WARNING", "%s: closing %s (timeout)"] - timeouts_before >= 20
        assert latency.calls > 10 and latency.worst < 2.0, latency
        await h.check(cut_after_max=round_(max(cut)), others_worst_latency=round_(latency.worst))


def round_(x: float) -> float:
    return round(x, 3)


# ---- a peer that never reads -----------------------------------------------------------

WRITE_BUFFER = 256 * 1024
RESULT = 100_000  # bytes of each answer
ANSWER = RESULT + 50  # with its envelope


@pytest.mark.parametrize("method", ["blob", "ablob"])
async def test_a_peer_that_never_reads_is_held_back(method: str) -> None:
    """It keeps asking for 100 kB answers and reads none. The server stops reading it once
    its queue is full: what it holds for that peer stays bounded by write_buffer_size and
    one answer (async handlers: and one answer per handler slot), others are served, and
    everything is released when the peer goes."""
    concurrency = 4
    app = App(write_buffer_size=WRITE_BUFFER, max_concurrency=concurrency)
    queued: dict[str, int] = {}  # by address: holding Remote objects would keep them alive

    @app.server.hook_connect
    def watch_queue(remote: Remote) -> None:
        # Record what the session holds for the peer each time the writer takes it: it
        # only grows until then, so this is its largest (a sampler would miss it).
        session = remote._session
        take = session.data_to_send

        def recording_take() -> bytes:
            where = remote.remote_address
            queued[where] = max(queued.get(where, 0), session.output_size)
            return take()

        session.data_to_send = recording_take  # type: ignore[method-assign]

    async def round(seconds: float) -> dict[str, Any]:
        queued.clear()
        latency = Latency()
        stop = anyio.Event()
        sent = 0
        async with anyio.create_task_group() as tg:
            tg.start_soon(steady_client, h.address, stop, latency, 1000)
            async with raw_connect(h.address) as peer:
                ids = itertools.count()
                with anyio.move_on_after(seconds):
                    while True:
                        await peer.stream.send(
                            b"".join(
                                b'{"jsonrpc":"2.0","method":"%s","params":[%d],"id":%d}\n'
                                % (method.encode(), RESULT, next(ids))
                                for _ in range(100)
                            )
                        )
                        sent += 100
                peak = h.peak_growth() if h.base else 0
                # ... and then it goes, with the server's answers unread.
            stop.set()
        worst = max(queued.values())
        queued.clear()
        return {"sent": sent, "queued_max": worst, "peak": peak, "latency": latency}

    async with harness(app) as h:
        await round(0.3)
        await h.baseline()
        seen = await round(1.0)
        bound = WRITE_BUFFER + ANSWER * (1 if method == "blob" else 2 * concurrency)
        assert seen["queued_max"] <= bound, seen
        # Everything the server held for it (queued, being sent, in the transport) stayed
        # within a few times that, while it asked for sent * 100 kB.
        assert seen["peak"] < 4 * bound + MiB, seen
        assert seen["sent"] * RESULT > 50 * seen["peak"]
        assert seen["latency"].calls > 10 and seen["latency"].worst < 2.0, seen
        await h.check(
            requests_sent=seen["sent"],
            queued_max_kib=seen["queued_max"] // 1024,
            peak_kib=seen["peak"] // 1024,
            others_worst_latency=round_(seen["latency"].worst),
        )
