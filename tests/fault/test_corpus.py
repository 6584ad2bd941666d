"""The hostile-input corpus (corpus.py) replayed against servers in each framing: every
input gets exactly the answers the specification requires (or, for a broken
Content-Length header, an error and the end of the connection), other connections are
served meanwhile, and a few inputs are fed at every byte split point and cut off at
every byte."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from ezipc_adapters import Remote, connect

from . import corpus
from .conftest import App, Harness, RawPeer, cl_frame, harness, nd_frame, raw_connect, read_answers

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

FRAME = {"ndjson": nd_frame, "content-length": cl_frame}


def corpus_server(framing: str) -> App:
    app = App(framing=framing, max_batch_size=corpus.MAX_BATCH, max_message_size=corpus.MAX_MESSAGE)
    server = app.server

    @server.method
    def subtract(minuend: Any, subtrahend: Any) -> Any:
        return minuend - subtrahend

    server.hook_notif("update", lambda *xs: None)
    server.hook_notif("notify_hello", lambda x: None)
    return app


def _same(got: Any, want: Any) -> bool:
    """Equal as JSON (so 1, 1.0 and true differ)."""
    return json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


def _matches(got: Any, want: corpus.Answer) -> bool:
    kind = want[0]
    if kind == "result":
        return _same(got, {"jsonrpc": "2.0", "id": want[2], "result": want[1]})
    if kind == "error":
        return (
            isinstance(got, dict)
            and got.keys() == {"jsonrpc", "id", "error"}
            and got["jsonrpc"] == "2.0"
            and _same(got["id"], want[2])
            and isinstance(got["error"], dict)
            and got["error"].keys() == {"code", "message"}  # no data: nothing of ours leaks
            and _same(got["error"]["code"], want[1])
            and isinstance(got["error"]["message"], str)
            and got["error"]["message"] != ""
        )
    members = list(want[1])
    if not isinstance(got, list) or len(got) != len(members):
        return False
    for item in got:  # any order
        for i, member in enumerate(members):
            if _matches(item, member):
                del members[i]
                break
        else:
            return False
    return True


def check(name: str, got: list[Any], want: tuple[corpus.Answer, ...]) -> None:
    """``got`` is exactly ``want``, in any order (the specification orders no answers)."""
    assert _matches(got, ("batch", list(want))), f"{name}: got {_short(got)}, want {_short(want)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 400 else text[:400] + "..."


def _probe(framing: str, id: str) -> bytes:
    return FRAME[framing](
        b'{"jsonrpc":"2.0","method":"echo","params":["%s"],"id":"%s"}' % (id.encode(), id.encode())
    )


async def _answers_within(peer: RawPeer, seconds: float) -> list[Any]:
    got: list[Any] = []
    with anyio.move_on_after(seconds):
        while True:
            got.append(await peer.receive(seconds + 1))
    return got


async def exchange(
    peer: RawPeer, framing: str, name: str, data: bytes, want: tuple[corpus.Answer, ...]
) -> None:
    """Send one input, then a probe request: the answers other than the probe's must be
    exactly ``want``. They may come in any order (the probe's first, say, if it is handled
    inline): read until the probe's and as many others as expected have come, then send a
    second probe, to catch any answer too many."""
    await peer.stream.send(data)
    await peer.stream.send(_probe(framing, "probe"))
    got: list[Any] = []
    probed = False
    try:
        with anyio.fail_after(5):
            while not probed or len(got) < len(want):
                answer = await peer.receive()
                if isinstance(answer, dict) and answer.get("id") == "probe":
                    probed = True
                else:
                    got.append(answer)
        await peer.stream.send(_probe(framing, "again"))
        more, probed = await read_answers(peer, "again")
    except (anyio.EndOfStream, anyio.BrokenResourceError, TimeoutError) as exc:
        raise AssertionError(f"{name}: {exc!r}; answers so far: {_short(got)}, want {_short(want)}") from None
    assert probed, f"{name}: the server closed the connection"
    check(name, got + more, want)


@asynccontextmanager
async def raw_session(address: str, framing: str, prefix: bool) -> AsyncIterator[RawPeer]:
    async with raw_connect(address, framing) as peer:
        if prefix:  # framing "auto": the first message decides it
            await peer.stream.send(_probe(framing, "first"))
            assert await peer.receive() == {"jsonrpc": "2.0", "id": "first", "result": "first"}
        yield peer


async def replay_all(h: Harness, framing: str, monitor: Remote, prefix: bool) -> int:
    """Everything in the corpus that applies to ``framing``; the monitor connection is
    served meanwhile. Returns how many inputs were replayed."""
    frame = FRAME[framing]
    raws = corpus.NDJSON_RAW if framing == "ndjson" else corpus.CONTENT_LENGTH_RAW
    plain = [(c.name, frame(c.body), c.answers) for c in corpus.CASES]
    plain += [(r.name, r.data, r.answers) for r in raws if not (r.closes or r.swallows)]
    if framing == "ndjson":
        plain += [
            (f"random stream {i}", data, (corpus.E(corpus.PARSE_ERROR),) * data.count(b"\n"))
            for i, data in enumerate(corpus.RANDOM_STREAMS)
        ]
    count = 0
    # One connection takes every input the framing survives: each must leave it usable.
    async with raw_session(h.address, framing, prefix) as peer:
        for name, data, want in plain:
            await exchange(peer, framing, name, data, want)
            count += 1
            if count % 10 == 0:
                assert await monitor.request("echo", [count]) == count
    # The rest end their connection (or leave it waiting for a body): one each.
    for raw in raws:
        if raw.closes or raw.swallows:
            async with raw_session(h.address, framing, prefix) as peer:
                await peer.stream.send(raw.data)
                if raw.closes:  # answers, then the end (nothing more is sent: no reset)
                    got, _ = await read_answers(peer, None)
                else:  # waiting for more of a body: a probe goes into it, unanswered
                    await peer.stream.send(_probe(framing, "probe"))
                    got = await _answers_within(peer, 0.3)
                check(raw.name, got, raw.answers)
            count += 1
            assert await monitor.request("echo", [count]) == count
    if framing == "content-length":
        for i, data in enumerate(corpus.RANDOM_STREAMS):
            async with raw_session(h.address, framing, prefix) as peer:
                await peer.stream.send(data)
                await anyio.sleep(0.01)
                await peer.stream.send(_probe(framing, "probe"))
                got, probed = await read_answers(peer, "probe")
                assert not probed
                check(f"random stream {i}", got, (corpus.E(corpus.PARSE_ERROR),))
            count += 1
            assert await monitor.request("echo", [count]) == count
    return count


@pytest.mark.parametrize("framing", ["ndjson", "content-length", "auto"])
async def test_the_corpus_is_answered_exactly(framing: str, anyio_backend: str) -> None:
    app = corpus_server(framing)
    # "auto": the framing is detected per connection; each backend replays it in one.
    speaks = [
        {"asyncio": "content-length", "trio": "ndjson"}[anyio_backend] if framing == "auto" else framing
    ]

    async def corpus_round() -> int:
        count = 0
        for f in speaks:
            async with connect(h.address, framing=f, request_timeout=10) as monitor:
                count += await replay_all(h, f, monitor, prefix=framing == "auto")
        return count

    async with harness(app) as h:
        async with raw_session(h.address, speaks[0], framing == "auto") as peer:  # warm-up
            await exchange(peer, speaks[0], "warm-up", FRAME[speaks[0]](corpus.ECHO), (corpus.R(1, 1),))
        await h.baseline()
        with anyio.fail_after(60):
            count = await corpus_round()
        await h.check(inputs=count)


@pytest.mark.parametrize("framing", ["ndjson", "content-length"])
async def test_every_split_point_and_every_cut(framing: str) -> None:
    """A few inputs: delivered in two pieces split at every byte (the same answers), and
    cut off at every byte (nothing answered until the input is whole; then exactly its
    answers, the server having read to our EOF). Other connections are served meanwhile."""
    app = corpus_server(framing)
    frame = FRAME[framing]
    cases = [(c.name, frame(c.body), c.answers) for c in corpus.CASES if c.name in corpus.SPLIT]
    raws = corpus.NDJSON_RAW if framing == "ndjson" else corpus.CONTENT_LENGTH_RAW
    cases += [(r.name, r.data, r.answers) for r in raws if r.name in corpus.SPLIT_RAW]
    assert len(cases) == len(corpus.SPLIT) + 1

    async def split_everywhere(name: str, data: bytes, want: tuple[corpus.Answer, ...]) -> None:
        async with raw_connect(h.address, framing) as peer:
            for k in range(1, len(data)):
                await peer.stream.send(data[:k])
                await anyio.sleep(0.001)  # (so that the server reads the pieces apart)
                await peer.stream.send(data[k:] + _probe(framing, f"p{k}"))
                got, probed = await read_answers(peer, f"p{k}")
                assert probed
                check(f"{name} split at {k}", got, want)

    async def cut_everywhere(name: str, data: bytes, want: tuple[corpus.Answer, ...]) -> int:
        cuts = 0
        for k in range(len(data) + 1):
            stream = await anyio.connect_tcp(*h.address.removeprefix("tcp://").rsplit(":", 1))
            async with stream:
                if k:
                    await stream.send(data[:k])
                if k % 2 and k != len(data):
                    continue  # gone at once, without a word
                await stream.send_eof()  # no more from us: the server reads to the end
                peer = RawPeer(stream, framing)
                got, _ = await read_answers(peer, None)
                check(f"{name} cut at {k}", got, want if k == len(data) else ())
            cuts += 1
        return cuts

    async def split_round(cases: list[tuple[str, bytes, tuple[corpus.Answer, ...]]]) -> int:
        cuts = 0
        async with connect(h.address, framing=framing, request_timeout=10) as monitor:
            for i, (name, data, want) in enumerate(cases):
                await split_everywhere(name, data, want)
                cuts += await cut_everywhere(name, data, want)
                assert await monitor.request("echo", [i]) == i
        return cuts

    async with harness(app) as h:
        await split_round(cases[:1])
        await h.baseline()
        with anyio.fail_after(60):
            cuts = await split_round(cases)
        await h.check(inputs=len(cases), connections=cuts + len(cases))
