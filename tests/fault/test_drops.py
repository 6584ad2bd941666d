"""1,000 clients that connect and drop at random points (before sending, mid-header,
mid-body, with requests in flight, after a batch, mid-answer, by a reset) while five
well-behaved clients keep calling and always get correct answers."""

from __future__ import annotations

import itertools
import json
import random
import socket
import struct
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from ezipc_adapters import connect

from .conftest import App, Harness, cl_frame, harness, nd_frame

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

DROPPERS = 1000
AT_ONCE = 50
GOOD_CLIENTS = 5
SEED = 6_2024

KINDS = (
    "before_send",  # connect, maybe wait, close
    "mid_header",  # part of a Content-Length header block
    "mid_body",  # part of a body (content-length) or of a line (ndjson)
    "in_flight",  # requests (slow and hanging ones among them) sent, answers not awaited
    "after_batch",  # a batch sent, then gone
    "partial_read",  # asks for a large answer, reads a little of it
    "reset",  # requests in flight, then a TCP reset instead of a FIN
    "half_close",  # requests, then EOF: every answer of a sync handler still arrives
)


@dataclass
class Tally:
    calls: int = 0
    max_latency: float = 0.0
    drops: int = 0
    half_close_answers: int = 0


def _request(ids: Any, method: str, params: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": next(ids)}).encode()


async def _send_in_pieces(stream: anyio.abc.ByteStream, data: bytes, rng: random.Random) -> None:
    cuts = sorted(rng.sample(range(1, len(data)), min(rng.randint(0, 3), len(data) - 1)))
    for start, end in itertools.pairwise([0, *cuts, len(data)]):
        await stream.send(data[start:end])
        if rng.random() < 0.5:
            await anyio.sleep(rng.uniform(0, 0.005))


async def drop(host: str, port: int, kind: str, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    framing = rng.choice(("ndjson", "content-length"))
    frame = nd_frame if framing == "ndjson" else cl_frame
    ids = itertools.count(1)
    stream = await anyio.connect_tcp(host, port)
    try:
        if kind == "before_send":
            pass
        elif kind == "mid_header":
            data = cl_frame(_request(ids, "echo", [rng.random()]))
            await _send_in_pieces(stream, data[: rng.randrange(1, data.index(b"\r\n\r\n") + 4)], rng)
        elif kind == "mid_body":
            body = _request(ids, "echo", ["x" * rng.randint(0, 3000)])
            data = frame(body)
            start = data.index(body)
            await _send_in_pieces(stream, data[: rng.randrange(start + 1, start + len(body))], rng)
        elif kind in ("in_flight", "reset"):
            calls = [
                ("slow", [rng.uniform(0.01, 0.5), "late"]),
                ("echo", [rng.random()]),
                ("hang", []),
                ("aecho", ["y" * rng.randint(0, 100)]),
                ("blob", [rng.randint(0, 50_000)]),
            ]
            rng.shuffle(calls)
            data = b"".join(frame(_request(ids, m, p)) for m, p in calls[: rng.randint(1, len(calls))])
            if rng.random() < 0.3:  # and the start of one more
                data += frame(_request(ids, "echo", [1]))[: rng.randint(1, 20)]
            await _send_in_pieces(stream, data, rng)
            if kind == "reset":
                raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif kind == "after_batch":
            batch = [
                {"jsonrpc": "2.0", "method": "slow", "params": [rng.uniform(0.01, 0.3)], "id": 1},
                {"jsonrpc": "2.0", "method": "echo", "params": [2], "id": 2},
                {"jsonrpc": "2.0", "method": "hang", "id": 3},
                {"jsonrpc": "2.0", "method": "echo", "params": [4]},
                {"jsonrpc": "2.0", "method": "nosuch", "id": 5},
            ]
            rng.shuffle(batch)
            await _send_in_pieces(stream, frame(json.dumps(batch).encode()), rng)
        elif kind == "partial_read":
            await stream.send(frame(_request(ids, "blob", [rng.randint(100_000, 400_000)])))
            with anyio.fail_after(5):
                assert await stream.receive(rng.randint(1, 5000))
        elif kind == "half_close":
            values = [rng.random() for _ in range(rng.randint(1, 20))]
            await stream.send(b"".join(frame(_request(ids, "echo", [v])) for v in values))
            await stream.send_eof()
            received = b""
            with anyio.fail_after(5):
                while True:
                    try:
                        received += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
            # The server reads to EOF, answers what it read, flushes, and only then closes.
            if framing == "ndjson":
                answers = [json.loads(line) for line in received.splitlines()]
            else:
                answers = [
                    json.loads(part[: part.rindex(b"}") + 1]) for part in received.split(b"\r\n\r\n")[1:]
                ]
            assert answers == [{"jsonrpc": "2.0", "id": i + 1, "result": v} for i, v in enumerate(values)]
            tally.half_close_answers += len(answers)
        if rng.random() < 0.5:
            await anyio.sleep(rng.uniform(0, 0.02))
    finally:
        await anyio.aclose_forcefully(stream)
        tally.drops += 1


async def good_client(address: str, index: int, stop: anyio.Event, tally: Tally) -> None:
    rng = random.Random(index)
    framing = ("ndjson", "content-length")[index % 2]
    while not stop.is_set():
        async with connect(address, framing=framing, timeout=5, request_timeout=10) as remote:
            for _ in range(rng.randint(5, 30)):
                if stop.is_set():
                    break
                value = [rng.random(), "\u00e9" * rng.randint(0, 50), {"k": rng.randint(-(10**12), 10**12)}]
                xs = [rng.randint(-1000, 1000) for _ in range(rng.randint(0, 10))]
                started = anyio.current_time()
                assert await remote.request("echo", [value]) == value
                assert await remote.request("sum", xs) == sum(xs)
                assert await remote.request("slow", [0.001, value]) == value
                assert await remote.batch([("aecho", [value]), ("sum", xs)], notify=[("echo", [1])]) == [
                    value,
                    sum(xs),
                ]
                tally.calls += 5
                tally.max_latency = max(tally.max_latency, anyio.current_time() - started)
                await anyio.sleep(0.02)  # steady, not saturating: the droppers are the load


async def storm(h: Harness, app: App, droppers: int, seed: int) -> Tally:
    host, port = h.address.removeprefix("tcp://").rsplit(":", 1)
    rng = random.Random(seed)
    plans = iter([(rng.choice(KINDS), rng.getrandbits(32)) for _ in range(droppers)])
    tally = Tally()
    stop = anyio.Event()

    async def worker() -> None:
        for kind, plan_seed in plans:
            await drop(host, int(port), kind, plan_seed, tally)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for index in range(GOOD_CLIENTS):
                tg.start_soon(good_client, h.address, index, stop, tally)
            async with anyio.create_task_group() as workers:
                for _ in range(AT_ONCE):
                    workers.start_soon(worker)
            stop.set()
    assert tally.drops == droppers
    assert tally.calls >= 5 * GOOD_CLIENTS  # every good client got answers
    return tally


async def test_a_thousand_clients_drop_at_random_points() -> None:
    # After a client's EOF its handlers may run on for shutdown_timeout (it may have only
    # half-closed); hanging ones are cancelled then. One second keeps the test short.
    app = App(shutdown_timeout=1.0)
    async with harness(app) as h:
        await storm(h, app, 30, SEED - 1)  # warm-up round
        await h.baseline()
        tally = await storm(h, app, DROPPERS, SEED)
        await h.settle()
        assert app.hangs_started == app.hangs_ended  # every hanging handler was cancelled
        await h.check(
            droppers=tally.drops,
            good_calls=tally.calls,
            good_max_latency=round(tally.max_latency, 3),
            hangs_cancelled=app.hangs_ended,
        )
