"""A flood of notifications: 100,000 small ones to an async, slow-ish handler (it yields to
the loop every tenth, sleeps every thousandth). Reading is paced by the bounded queue,
memory stays bounded, every one is handled in order, and the server stays responsive to
other clients meanwhile. Each backend is flooded in one framing (the other backend takes
the other framing): 100,000 messages under tracemalloc take a few seconds each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from ezipc_adapters import Remote

from .conftest import App, cl_frame, harness, nd_frame, raw_connect
from .test_slow_peers import Latency, steady_client

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

MiB = 1024 * 1024
FLOOD = 100_000
PER_SEND = 1000
QUEUE = 16  # max_concurrency: also the length of the notification queue


@dataclass
class Order:
    next: int = 0
    out_of_order: int = 0
    max_queue: int = 0


@pytest.mark.parametrize("framing", ["ndjson", "content-length"])
async def test_a_flood_of_notifications(framing: str, anyio_backend: str) -> None:
    if (framing, anyio_backend) in (("ndjson", "asyncio"), ("content-length", "trio")):
        pytest.skip("each backend floods in one framing (time)")
    app = App(max_concurrency=QUEUE)
    order = Order()
    frame = nd_frame if framing == "ndjson" else cl_frame

    @app.server.hook_notif
    async def note(i: int, remote: Remote) -> None:
        if i != order.next:
            order.out_of_order += 1
        order.next = i + 1
        order.max_queue = max(order.max_queue, len(remote._notifications))
        if i % 10 == 0:
            await anyio.sleep(0)  # let the loop run: the reader, the other client
        if i % 1000 == 999:
            await anyio.sleep(0.002)  # now and then, a real pause: the queue fills up

    async def flood_round(n: int) -> dict[str, Any]:
        order.next = 0
        latency = Latency()
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(steady_client, h.address, stop, latency)
            async with raw_connect(h.address, framing) as peer:
                for start in range(0, n, PER_SEND):
                    await peer.stream.send(
                        b"".join(
                            frame(b'{"jsonrpc":"2.0","method":"note","params":[%d]}' % i)
                            for i in range(start, min(n, start + PER_SEND))
                        )
                    )
                # A request after them is answered once they have all started.
                await peer.send({"jsonrpc": "2.0", "method": "echo", "params": ["end"], "id": "end"})
                assert await peer.receive(timeout=30) == {"jsonrpc": "2.0", "id": "end", "result": "end"}
                with anyio.fail_after(5):
                    while order.next < n:
                        await anyio.sleep(0.01)
                peak = h.peak_growth() if h.base else 0
            stop.set()
        return {"latency": latency, "peak": peak}

    async with harness(app) as h:
        await flood_round(2 * PER_SEND)
        await h.baseline()
        with anyio.fail_after(60):
            seen = await flood_round(FLOOD)
        assert order.next == FLOOD and order.out_of_order == 0
        # The queue between the reader and the handler never grew past its bound: the
        # reader waited (and so did the flooder, once the kernel's buffers were full).
        assert QUEUE <= order.max_queue <= QUEUE + 1, order
        assert seen["peak"] < 4 * MiB, seen  # the flood was 5 MB
        latency = seen["latency"]
        assert latency.calls > 10 and latency.worst < 2.0, latency
        await h.check(
            notifications=FLOOD,
            max_queue=order.max_queue,
            peak_kib=seen["peak"] // 1024,
            others_calls=latency.calls,
            others_worst_latency=round(latency.worst, 3),
        )
