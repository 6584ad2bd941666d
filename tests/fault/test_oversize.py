"""Oversize and endless inputs, deeply nested values, huge numbers, many tiny messages in
one chunk: bounded buffers, exact answers, and the same connection keeps serving."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from ezipc_adapters import ErrorCode, Remote, Server

from .conftest import App, Harness, RawPeer, buffered, cl_frame, harness, nd_frame, raw_connect

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

MiB = 1024 * 1024
LIMIT = 1 * MiB
CHUNK = 64 * 1024
ENDLESS = 50 * MiB
READ_SIZE = 65536  # what the adapter asks the stream for at a time
SLACK = 64 * 1024  # framer bookkeeping: a partial header, a cut line


def _req(method: str, params: Any, id: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": id}).encode()


@asynccontextmanager
async def sampling(server: Server) -> AsyncIterator[list[int]]:
    """Samples, as often as the loop lets it, the bytes every connection's framer holds;
    yields a one-item list holding the maximum seen."""
    peak = [0]

    async def sample() -> None:
        while True:
            for remote in server.remotes:
                peak[0] = max(peak[0], buffered(remote))
            await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        try:
            yield peak
        finally:
            tg.cancel_scope.cancel()


def _one_remote(server: Server) -> Remote:
    (remote,) = server.remotes
    return remote


async def _stream_endless(peer: RawPeer, head: bytes, total: int, tail: bytes) -> None:
    chunk = b"x" * CHUNK
    await peer.stream.send(head)
    for _ in range(total // CHUNK):
        await peer.stream.send(chunk)
    await peer.stream.send(tail)


async def _endless_round(h: Harness, framing: str, total: int) -> dict[str, Any]:
    """One connection: a ``total``-byte message streamed in chunks, then a normal request."""
    async with raw_connect(h.address, framing) as peer, sampling(h.server) as peak:
        if framing == "ndjson":
            # Starts like a request (so "auto" framing detects NDJSON), never ends a line.
            await _stream_endless(
                peer, b'{"jsonrpc":"2.0","method":"echo","params":["', total, b'"],"id":1}\n'
            )
        else:
            await _stream_endless(peer, b"Content-Length: %d\r\n\r\n" % total, total, b"")
        answer = await peer.receive(timeout=10)
        assert answer == {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": ErrorCode.MESSAGE_TOO_LARGE, "message": answer["error"]["message"]},
        }
        # The same connection goes on.
        await peer.send(_req("echo", ["after"], 2))
        assert await peer.receive() == {"jsonrpc": "2.0", "id": 2, "result": "after"}
        remote = _one_remote(h.server)
        scanned = remote._session.connection.bytes_scanned
        assert remote.stats.errors == 1 and not remote.closed
    return {"framer_peak": peak[0], "scanned": scanned}


@pytest.mark.parametrize("framing", ["ndjson", "content-length"])
async def test_a_50_mb_message_is_skipped_with_bounded_buffers(framing: str) -> None:
    app = App(max_message_size=LIMIT)
    async with harness(app) as h:
        await _endless_round(h, framing, 2 * LIMIT)  # warm-up
        await h.baseline()
        with anyio.fail_after(30):
            seen = await _endless_round(h, framing, ENDLESS)
        # The framer never held more than the limit and one read; with Content-Length the
        # body is discarded as it arrives, so not even the limit.
        bound = LIMIT + READ_SIZE + SLACK if framing == "ndjson" else READ_SIZE + SLACK
        assert seen["framer_peak"] <= bound, seen
        # Memory (both ends of the connection live in this process) stayed far below 50 MB.
        peak = h.peak_growth()
        assert peak < 4 * LIMIT, f"traced memory peaked {peak / MiB:.1f} MiB above the baseline"
        await h.check(framer_peak_kib=seen["framer_peak"] // 1024)


async def test_endless_blank_space_and_endless_headers_are_bounded() -> None:
    app = App(max_message_size=LIMIT)

    async def round(total: int) -> dict[str, int]:
        peaks = {}
        # "auto" framing before it has seen a byte that decides: blank space is dropped.
        async with raw_connect(h.address) as peer, sampling(h.server) as peak:
            chunk = b" \t\r\n" * (CHUNK // 4)
            for _ in range(total // CHUNK):
                await peer.stream.send(chunk)
            await peer.send(_req("echo", ["after blanks"], 1))
            assert await peer.receive(timeout=10) == {"jsonrpc": "2.0", "id": 1, "result": "after blanks"}
            peaks["blank"] = peak[0]
        # A header block that never ends: refused at 8 KiB, with an error, and closed.
        async with raw_connect(h.address) as peer, sampling(h.server) as peak:
            await peer.stream.send(b"Content-Length: 10\r\n")
            with pytest.raises((anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)):
                with anyio.fail_after(10):
                    for _ in range(total // 1024):
                        await peer.stream.send(b"X-Junk: " + b"y" * 1014 + b"\r\n")
            # The server answered with an error and closed. (The answer may be lost: a
            # socket closed with unread data sends a reset, which discards it at our end.)
            answers = [json.loads(b) for b in (await peer.receive_eof()).split(b"\r\n\r\n")[1:]]
            assert len(answers) <= 1
            for answer in answers:
                assert answer["id"] is None and answer["error"]["code"] == ErrorCode.PARSE_ERROR
            peaks["header"] = peak[0]
        return peaks

    async with harness(app) as h:
        await round(2 * LIMIT)
        await h.baseline()
        with anyio.fail_after(30):
            peaks = await round(20 * MiB)
        assert peaks["blank"] <= LIMIT + READ_SIZE + SLACK, peaks
        assert peaks["header"] <= 8192 + READ_SIZE + SLACK, peaks
        await h.check(blank_peak_kib=peaks["blank"] // 1024, header_peak_kib=peaks["header"] // 1024)


DEEP = 100_000
PARSE_ERROR = {"code": ErrorCode.PARSE_ERROR}


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


#: (body, expected answer): a dict is the whole answer but for the error's message.
HOSTILE_VALUES: list[tuple[bytes, Any]] = [
    (b"[" * DEEP, {"id": None, "error": PARSE_ERROR}),
    (b"[" * DEEP + b"]" * DEEP, {"id": None, "error": PARSE_ERROR}),
    (b'{"a":' * DEEP + b"1" + b"}" * DEEP, {"id": None, "error": PARSE_ERROR}),
    (
        _req("echo", [0], 1)[:-1] + b',"x":' + b"[" * DEEP + b"]" * DEEP + b"}",
        {"id": None, "error": PARSE_ERROR},
    ),
    (_req("echo", [_nested(100)], 2), {"id": 2, "result": _nested(100)}),
    (_req("echo", [10**4299], 3), {"id": 3, "result": 10**4299}),  # 4,300 digits: the most int() takes
    (_req("echo", [0], 4).replace(b"[0]", b"[1" + b"0" * 4300 + b"]"), {"id": None, "error": PARSE_ERROR}),
    (
        _req("echo", [0], 5).replace(b"[0]", b"[" + b"9" * 1_000_000 + b"]"),
        {"id": None, "error": PARSE_ERROR},
    ),
    (_req("echo", [0], 6).replace(b"[0]", b"[1e400]"), {"id": None, "error": PARSE_ERROR}),
    (_req("echo", [0], 7).replace(b"[0]", b"[-1e400]"), {"id": None, "error": PARSE_ERROR}),
    (
        _req("echo", [0], 8).replace(b"[0]", b"[0." + b"3" * 100_000 + b"]"),
        {"id": 8, "result": 0.3333333333333333},
    ),
    (_req("echo", [0], 9).replace(b"[0]", b"[1e-400]"), {"id": 9, "result": 0.0}),
    (_req("echo", [0], 10**30), {"id": 10**30, "result": 0}),
    (_req("echo", [0], 11).replace(b"[0]", b"[-0]"), {"id": 11, "result": 0}),
    (_req("echo", ["\u00e9" * 100_000], 12), {"id": 12, "result": "\u00e9" * 100_000}),
]


def _matches(answer: Any, expected: dict[str, Any]) -> bool:
    if "error" in expected:
        error = answer.get("error", {})
        return (
            answer.keys() == {"jsonrpc", "id", "error"}
            and answer["id"] == expected["id"]
            and error.keys() == {"code", "message"}  # no data: nothing about us leaks
            and error["code"] == expected["error"]["code"]
        )
    return answer == {"jsonrpc": "2.0", **expected}


@pytest.mark.parametrize("codec", ["json", "msgspec"])
async def test_deeply_nested_values_and_huge_numbers(codec: str) -> None:
    app = App(codec=codec)

    async def round() -> None:
        for framing in ("ndjson", "content-length"):
            frame = nd_frame if framing == "ndjson" else cl_frame
            async with raw_connect(h.address, framing) as peer:
                for body, expected in HOSTILE_VALUES:
                    await peer.stream.send(frame(body))
                    answer = await peer.receive(timeout=10)
                    assert _matches(answer, expected), (body[:80], answer)
                # ... and the connection goes on.
                await peer.send(_req("sum", [1, 2], "last"))
                assert await peer.receive() == {"jsonrpc": "2.0", "id": "last", "result": 3}

    async with harness(app) as h:
        await round()
        await h.baseline()
        with anyio.fail_after(30):
            await round()
        await h.check()


async def _receive_many(peer: RawPeer, count: int, timeout: float = 15.0) -> list[Any]:
    """``count`` answers, read in bulk (RawPeer.receive is quadratic over a big buffer)."""
    data = bytearray(peer.buffer)
    with anyio.fail_after(timeout):
        if peer.framing == "ndjson":
            while data.count(b"\n") < count:
                data += await peer.stream.receive()
            lines = bytes(data).split(b"\n")
            peer.buffer = b"\n".join(lines[count:])
            return [json.loads(line) for line in lines[:count]]
        answers: list[Any] = []
        at = 0
        while len(answers) < count:
            end = data.find(b"\r\n\r\n", at)
            if end >= 0:
                length = int(data[at:end].split(b":")[1])
                if len(data) >= end + 4 + length:
                    answers.append(json.loads(data[end + 4 : end + 4 + length]))
                    at = end + 4 + length
                    continue
            data += await peer.stream.receive()
        peer.buffer = bytes(data[at:])
        return answers


#: Messages per phase (in one send; about 1,200 of them fit in each 64 KiB read).
TINY = 2_000


async def _exchange(peer: RawPeer, data: bytes, count: int) -> list[Any]:
    """Send ``data`` while reading its ``count`` answers (not one after the other: a peer
    that writes everything before it reads deadlocks against a server whose writes block)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(peer.stream.send, data)
        return await _receive_many(peer, count)


async def test_many_tiny_messages_in_one_chunk() -> None:
    app = App(max_concurrency=8)
    notes: list[int] = []
    app.server.hook_notif("note", notes.append)

    async def round(n: int) -> None:
        for framing in ("ndjson", "content-length"):
            await one_framing(n, framing)

    async def one_framing(n: int, framing: str) -> None:
        frame: Callable[[bytes], bytes] = nd_frame if framing == "ndjson" else cl_frame

        def many(template: bytes, n: int) -> bytes:
            return b"".join(frame(template % {b"i": i}) for i in range(n))

        notes.clear()
        async with raw_connect(h.address, framing) as peer:
            # Requests to a sync handler: answered in order.
            answers = await _exchange(
                peer, many(b'{"jsonrpc":"2.0","method":"echo","params":[%(i)d],"id":%(i)d}', n), n
            )
            assert answers == [{"jsonrpc": "2.0", "id": i, "result": i} for i in range(n)]
            # Requests to an async handler, 8 at a time: each answered once, in some order:
            # its result, or at once -32009 if the waiting line (max_queued) was full.
            answers = await _exchange(
                peer, many(b'{"jsonrpc":"2.0","method":"aecho","params":[%(i)d],"id":%(i)d}', n), n
            )
            assert sorted(a["id"] for a in answers) == list(range(n))
            served = [a for a in answers if "result" in a]
            assert all(a["result"] == a["id"] for a in served)
            assert len(served) >= min(n, 8 + 1024)  # max_concurrency + max_queued at least
            assert all(a["error"]["code"] == ErrorCode.SERVER_BUSY for a in answers if "result" not in a)
            # Invalid ones: one error each.
            answers = await _exchange(peer, frame(b"[]") * n, n)
            assert all(a["id"] is None and a["error"]["code"] == ErrorCode.INVALID_REQUEST for a in answers)
            # Notifications, then a request: handled in order, answered after them.
            data = many(b'{"jsonrpc":"2.0","method":"note","params":[%(i)d]}', n)
            data += frame(b'{"jsonrpc":"2.0","method":"echo","params":["done"],"id":"done"}')
            (answer,) = await _exchange(peer, data, 1)
            assert answer == {"jsonrpc": "2.0", "id": "done", "result": "done"}
            assert notes == list(range(n))
        notes.clear()

    async with harness(app) as h:
        await round(200)
        await h.baseline()
        with anyio.fail_after(40):
            await round(TINY)
        await h.check(messages=8 * TINY)
