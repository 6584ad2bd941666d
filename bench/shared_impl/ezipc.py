"""ezipc 0.1: the sans-IO core, ``ezipc_proto.Connection``, with the stdlib codec (the
default). ``ezipc_fast.py`` is the same with ``codec="msgspec"``. Drop both into the shared
harness's ``impls/`` (``bench/run_shared.sh`` does).

Decode: ``receive_data(chunk)`` per chunk, then, unless it answered False (no frame can be
complete yet), ``next_event()`` up to ``NEED_DATA``: the
core frames, decodes and validates everything and builds one event per message (a batch
gives one per member). Frames = events minus the batches' extra members (counted once per
batch, as the connection queues them); ``InvalidMessage`` events are the rejections.

Answers: a connection reports a response to an id it never asked as ``InvalidMessage``, so
for the mixed streams it awaits every response id of the harness's workload, as if it had
sent those requests: that table is copied into a fresh connection inside the timed region
(a dict copy, well under 1% of a run). The large-message cases (one didOpen notification)
await nothing. The stream reuses a few request ids while the first request is unanswered
(batch members' ids i*10+j meet frame i*10+j's); the core rejects those by design: they
are the ``rej`` count.

Encode: prebuilt events through ``Connection.send`` (``send_batch`` for batches). The
connection first receives, untimed, the requests that the stream's responses and errors
answer, so it owes them. Requests whose id is still in flight (the reused ids above) get a
fresh string id: a connection refuses to send an id already in flight.
"""

from __future__ import annotations

import random
from collections import deque

import workloads as W

import ezipc_proto
from ezipc_proto import NEED_DATA, Connection, Error, InvalidMessage, Notification, Request, Response

NAME = "ezipc"
CODEC = "json"
DECODE_FRAMINGS = ENCODE_FRAMINGS = ("ndjson", "lsp")
# Roundtrip: ezipc_adapters' Server and connect over loopback TCP, NDJSON; this row on
# plain asyncio, ezipc_fast on uvloop with msgspec, ezipc_trio on trio, ezipc_blocking with
# the blocking adapter. Handlers call driver.handle, as every Python server here does.
RT_TRANSPORT = "tcp"
LOOP = "asyncio"

FRAMING = {"ndjson": "ndjson", "lsp": "content-length"}
_MIXED_MAX = 100_000  # the harness's largest mixed stream; smaller ones are its prefixes
_awaited: dict[object, None] | None = None


def unavailable() -> str | None:
    return None if hasattr(ezipc_proto, "Connection") else "ezipc_proto not importable"


def _answer_ids(msgs: list) -> list:
    return [m["id"] for m in msgs if type(m) is dict and "method" not in m]


def _mixed_answer_ids(n: int) -> list:
    """``_answer_ids(W.mixed_messages(n))``, one message at a time (the whole list would
    hold the process's memory high for every later case). Checked on a prefix."""
    r, ids = random.Random(W.SEED), []
    for i in range(n):
        if r.random() < 0.02:
            for j in range(r.randint(2, 5)):
                W._one(r, i * 10 + j, allow_response=False)
        else:
            m = W._one(r, i)
            if "method" not in m:
                ids.append(m["id"])
    prefix = _answer_ids(W.mixed_messages(1000))
    assert ids[: len(prefix)] == prefix, "workloads.mixed_messages changed"
    return ids


def _awaiting_table() -> dict[object, None]:
    """Every response id of the largest mixed stream, registered through the public API
    (one ``send(Request)`` each) on a template connection. Built once, on the harness's
    untimed warm-up call."""
    global _awaited
    if _awaited is None:
        template = Connection()
        for id in _mixed_answer_ids(_MIXED_MAX):
            template.send(Request("bench/call", None, id))
        _awaited = dict(template._awaiting)
    return _awaited


class _BatchRest(deque):  # type: ignore[type-arg]
    """The connection's queue of a batch's events after its first: counts them."""

    members = 0

    def extend(self, events: list) -> None:  # type: ignore[override]
        self.members += len(events)
        super().extend(events)


def decode_with(codec: str, chunks: list[bytes], framing: str) -> tuple[int, int]:
    conn = Connection(FRAMING[framing], codec=codec)
    if b'"method":"textDocument/didOpen"' not in chunks[0][:200]:  # not a large case:
        conn._awaiting = dict(_awaiting_table())  # await the answers (see the docstring)
    conn._queue = rest = _BatchRest()
    receive, next_event = conn.receive_data, conn.next_event
    events = rejected = 0
    for chunk in chunks:
        if not receive(chunk):  # surely NEED_DATA (saves a call per tiny chunk)
            continue
        while (event := next_event()) is not NEED_DATA:
            events += 1
            if type(event) is InvalidMessage:
                rejected += 1
    return events - rest.members - rejected, rejected


def decode(chunks: list[bytes], framing: str) -> tuple[int, int]:
    return decode_with(CODEC, chunks, framing)


def _event(m: dict) -> Request | Notification | Response | Error:
    if "method" in m:
        if "id" in m:
            return Request(m["method"], m.get("params"), m["id"])
        return Notification(m["method"], m.get("params"))
    if "error" in m:
        e = m["error"]
        return Error(m["id"], e["code"], e["message"], e.get("data"))
    return Response(m["id"], m["result"])


class Prepared:
    """Events to send, and connections that owe their answers (made untimed)."""

    def __init__(self, msgs: list, codec: str) -> None:
        seen: set = set()
        renamed = 0

        def event(m: dict) -> Request | Notification | Response | Error:
            nonlocal renamed
            ev = _event(m)
            if type(ev) is Request:
                if ev.id in seen:  # still in flight: a connection refuses to reuse it
                    renamed += 1
                    ev = Request(ev.method, ev.params, f"dup-{renamed}")
                seen.add(ev.id)
            return ev

        self.events = [[event(x) for x in m] if type(m) is list else event(m) for m in msgs]
        self.codec = codec
        self._ids = _answer_ids(msgs)
        # the harness encodes each framing up to 3 times (full mode): one fresh
        # connection per run, made here; more are made on demand (then timed)
        self._ready = {fr: [self.owing(fr) for _ in range(3)] for fr in FRAMING}

    def owing(self, framing: str) -> Connection:
        conn = Connection(FRAMING[framing], codec=self.codec)
        calls = ({"jsonrpc": "2.0", "id": i, "method": "bench/call"} for i in self._ids)
        conn.receive_data(W.frame(calls, framing))
        while conn.next_event() is not NEED_DATA:
            pass
        return conn

    def connection(self, framing: str) -> Connection:
        ready = self._ready[framing]
        return ready.pop() if ready else self.owing(framing)


def encode_prepare(msgs: list) -> Prepared:
    return Prepared(msgs, CODEC)


def encode(prepared: Prepared, framing: str) -> tuple[int, int]:
    conn = prepared.connection(framing)
    send, send_batch = conn.send, conn.send_batch
    out = [send_batch(e) if type(e) is list else send(e) for e in prepared.events]
    return len(out), sum(map(len, out))


# ---- roundtrip ---------------------------------------------------------------------------


def _anyio_run(fn, *args, loop: str):
    import anyio

    backend = "trio" if loop == "trio" else "asyncio"
    options = {"use_uvloop": True} if loop == "uvloop" else {}
    return anyio.run(fn, *args, backend=backend, backend_options=options)


def _server(codec: str):
    from driver import handle

    from ezipc_adapters import Server

    server = Server(framing="ndjson", codec=codec)
    server.hook_request("add", lambda a, b: handle("add", {"a": a, "b": b}))
    server.hook_request("echo", lambda s: handle("echo", {"s": s}))
    return server


def serve_with(port: int, codec: str, loop: str) -> None:
    server = _server(codec)
    backend = "trio" if loop == "trio" else "asyncio"
    server.start(f"tcp://127.0.0.1:{port}", backend=backend, use_uvloop=loop == "uvloop")


def client_with(port: int, plan: dict, codec: str, loop: str) -> list[dict]:
    from driver import drive_async

    from ezipc_adapters import connect

    async def main() -> list[dict]:
        async with connect(f"tcp://127.0.0.1:{port}", codec=codec) as remote:
            return await drive_async(remote.request, plan)

    return _anyio_run(main, loop=loop)


def rt_serve(port: int) -> None:
    serve_with(port, CODEC, LOOP)


def rt_client(port: int, plan: dict) -> list[dict]:
    return client_with(port, plan, CODEC, LOOP)
