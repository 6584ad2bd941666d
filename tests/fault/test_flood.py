"""A flood of notifications: 100,000 small ones to an async, slow-ish handler (it yields to
the loop every tenth, sleeps every thousandth). Reading never waits on the handler, so the
waiting line would grow without bound: it is bounded by ``max_queued``, and what comes
over that bound is dropped, counted and logged (one line a second, not one a drop). What
is handled is handled in order, memory stays bounded, a call waiting for its answer gets
it meanwhile, and the server stays responsive to other clients. Each backend is flooded
in one framing (the other backend takes the other framing): 100,000 messages under
tracemalloc take a few seconds each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from ezipc_adapters import Remote

from .conftest import App, LogCounter, cl_frame, harness, nd_frame, raw_connect
from .test_slow_peers import Latency, steady_client

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

MiB = 1024 * 1024
FLOOD = 100_000
PER_SEND = 1000
QUEUE = 16  # max_queued: the waiting line, notifications and requests together
DROP_LINE = "%s: dropped notification %r: %d calls are queued (max_queued); %d dropped in all"


@dataclass
class Order:
    handled: int = 0
    last: int = -1
    out_of_order: int = 0
    max_queue: int = 0


@pytest.mark.parametrize("framing", ["ndjson", "content-length"])
async def test_a_flood_of_notifications(framing: str, anyio_backend: str, ezipc_log: LogCounter) -> None:
    if (framing, anyio_backend) in (("ndjson", "asyncio"), ("content-length", "trio")):
        pytest.skip("each backend floods in one framing (time)")
    app = App(max_queued=QUEUE)
    order = Order()
    frame = nd_frame if framing == "ndjson" else cl_frame

    @app.server.hook_notif
    async def note(i: int, remote: Remote) -> None:
        if i <= order.last:
            order.out_of_order += 1
        order.last = i
        order.handled += 1
        order.max_queue = max(order.max_queue, remote.stats.calls_queued)
        if i % 10 == 0:
            await anyio.sleep(0)  # let the loop run: the reader, the other client
        if i % 1000 == 999:
            await anyio.sleep(0.002)  # now and then, a real pause: the queue fills up

    flooder: list[Remote] = []

    @app.server.hook_request
    async def ask_back(remote: Remote) -> Any:
        flooder.append(remote)
        return await remote.request("pong", timeout=30)  # its answer comes in with the flood

    async def flood_round(n: int) -> dict[str, Any]:
        order.handled, order.last = 0, -1
        latency = Latency()
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(steady_client, h.address, stop, latency)
            async with raw_connect(h.address, framing) as peer:
                await peer.send({"jsonrpc": "2.0", "method": "ask_back", "id": "ask"})
                pong = await peer.receive(timeout=10)
                assert pong["method"] == "pong"
                for start in range(0, n, PER_SEND):
                    if start == n // 2:  # the answer the handler waits for, amid the flood
                        await peer.send({"jsonrpc": "2.0", "id": pong["id"], "result": "pong"})
                    await peer.stream.send(
                        b"".join(
                            frame(b'{"jsonrpc":"2.0","method":"note","params":[%d]}' % i)
                            for i in range(start, min(n, start + PER_SEND))
                        )
                    )
                assert await peer.receive(timeout=30) == {"jsonrpc": "2.0", "id": "ask", "result": "pong"}
                remote = flooder.pop()
                with anyio.fail_after(10):  # every one handled or dropped, none lost silently
                    while order.handled + remote.stats.notifications_dropped < n:
                        await anyio.sleep(0.01)
                dropped = remote.stats.notifications_dropped
                peak = h.peak_growth() if h.base else 0
            stop.set()
        return {"latency": latency, "peak": peak, "dropped": dropped}

    async with harness(app) as h:
        await flood_round(2 * PER_SEND)
        await h.baseline()
        ezipc_log.counts.clear()
        with anyio.fail_after(60):
            seen = await flood_round(FLOOD)
        assert order.out_of_order == 0 and order.handled + seen["dropped"] == FLOOD
        assert seen["dropped"] > 0  # the handler is slower than the flood
        # The line never grew past its bound, and the drops were logged once a second.
        assert order.max_queue <= QUEUE, order
        assert 1 <= ezipc_log.counts["WARNING", DROP_LINE] <= 60
        assert seen["peak"] < 4 * MiB, seen  # the flood was 5 MB
        latency = seen["latency"]
        assert latency.calls > 10 and latency.worst < 2.0, latency
        await h.check(
            notifications=FLOOD,
            handled=order.handled,
            dropped=seen["dropped"],
            max_queue=order.max_queue,
            peak_kib=seen["peak"] // 1024,
            others_calls=latency.calls,
            others_worst_latency=round(latency.worst, 3),
        )
