#!/usr/bin/env python3
"""Core benchmark: ``ezipc_proto.Connection`` against a floor measured in the same run.

    python bench/core.py            # 100k frames, 7 repeats (a few minutes)
    python bench/core.py --quick    # 20k frames, 9 repeats (about a minute)
    python bench/core.py --only decode,bytes,large --repeat 9

The floor is the simplest fast code, as ``../shared/bench``'s ``floor_stdlib``: split lines
(or parse ``Content-Length``) with a bytearray + find, then ``json.loads`` / ``json.dumps``
with no checks at all. ``floor_msgspec`` (the same framers + msgspec) is shown for context.
Ratios are ezipc's rate / floor_stdlib's rate, so >1 means ezipc is faster, all measured
in this run, interleaved (floor, ezipc, floor, ezipc, ...): "x floor" is the median of the
per-repeat ratios (the target column judges it), "best" the ratio of the best runs (the
view least disturbed by other load on a shared machine). Objects alive before a run are
frozen out of the garbage collector's sight (``gc.freeze``), as in a fresh process.
The large-message test (one 16 MiB notification) compares times: <1 is faster there.

Workload (``bench/workloads.py``, the shared harness's generator, same seed and bytes):
requests with positional and named params, notifications, responses with ~200-byte
results, error responses, and 2% batches of 2-5 calls; fed in 64 KiB chunks.

How answers are counted: a connection reports a response to an id it never asked as
``InvalidMessage``, so before each decode run (untimed) the connection *sends* one
``Request`` for every response and error id in the stream, exactly as a real client would
have; the stream's responses then arrive as ``Response``/``Error`` events and empty the
connection's ``awaiting`` table. For encode, the connection first *receives* (untimed)
the requests that the stream's responses and errors answer, so it owes them; then every
frame is sent through ``Connection.send`` (``send_batch`` for batches).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads as W

from ezipc_proto import (
    NEED_DATA,
    Connection,
    Error,
    InvalidMessage,
    Notification,
    Request,
    Response,
)

try:
    import msgspec
except ImportError:  # the floor_msgspec column and the msgspec codec are then skipped
    msgspec = None

FRAMING = {"ndjson": "ndjson", "lsp": "content-length"}  # workload name -> ezipc name
CODECS = ("json", "msgspec") if msgspec is not None else ("json",)
LARGE_SIZE = 16 << 20
TARGET_JSON = 0.85  # x floor_stdlib, decode and encode, stdlib codec
# msgspec codec, x floor_msgspec (the same framers + msgspec, no checks): the performance issue's
TARGET_FAST = {"decode": 0.8, "encode": 0.6}
TARGET_LARGE = 1.2  # 16 MiB in 4 KiB chunks: at most this x the floor's time
TARGET_BYTES = 0.8  # fed one byte per call: x the stdlib floor's rate, fed the same way
BYTES_FRAMES = 1000  # frames in the one-byte-chunk sample


# ---------------------------------------------------------------- floors


def floor_stdlib_decode(chunks: list[bytes], fr: str) -> int:
    loads = json.loads
    n = 0
    for body in W.FRAMERS[fr](chunks):
        loads(body)
        n += 1
    return n


def floor_msgspec_decode(chunks: list[bytes], fr: str) -> int:
    loads = msgspec.json.Decoder().decode
    n = 0
    for body in W.FRAMERS[fr](chunks):
        loads(body)
        n += 1
    return n


_stdlib_encode = json.JSONEncoder(separators=(",", ":")).encode


def floor_stdlib_encode(msgs: list[Any], fr: str) -> tuple[int, int]:
    enc = _stdlib_encode
    if fr == "ndjson":
        out = [enc(m).encode() + b"\n" for m in msgs]
    else:
        out = []
        for m in msgs:
            body = enc(m).encode()
            out.append(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return len(out), sum(map(len, out))


def floor_msgspec_encode(msgs: list[Any], fr: str) -> tuple[int, int]:
    enc = msgspec.json.Encoder().encode
    if fr == "ndjson":
        out = [enc(m) + b"\n" for m in msgs]
    else:
        out = []
        for m in msgs:
            body = enc(m)
            out.append(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return len(out), sum(map(len, out))


# ---------------------------------------------------------------- ezipc


def answer_ids(msgs: list[Any]) -> list[Any]:
    """Ids of the stream's responses and error responses (batches hold none here)."""
    return [m["id"] for m in msgs if type(m) is dict and "method" not in m]


def awaiting_connection(fr: str, codec: str, ids: list[Any]) -> Connection:
    """Untimed setup: a connection that sent one request per id, so it awaits them."""
    conn = Connection(FRAMING[fr], codec=codec)
    send = conn.send
    for id in ids:
        send(Request("bench/call", None, id))
    return conn


def ezipc_decode(conn: Connection, chunks: list[bytes]) -> int:
    """Timed: feed the chunks, take every event. Returns the number of events."""
    receive, next_event = conn.receive_data, conn.next_event
    n = 0
    for chunk in chunks:
        if receive(chunk):  # False: surely NEED_DATA (saves a call per tiny chunk)
            while next_event() is not NEED_DATA:
                n += 1
    return n


def tally_decode(conn: Connection, chunks: list[bytes]) -> str:
    """Untimed check: what the events are."""
    kinds: Counter[str] = Counter()
    why: Counter[str] = Counter()
    for chunk in chunks:
        conn.receive_data(chunk)
        while (ev := conn.next_event()) is not NEED_DATA:
            kinds[type(ev).__name__] += 1
            if type(ev) is InvalidMessage:
                msg = ev.error.message
                why["request id already in use" if "already in use" in msg else msg[:50]] += 1
    out = ", ".join(f"{v} {k}" for k, v in kinds.items())
    if why:
        out += " (" + ", ".join(f"{v}: {k}" for k, v in why.items()) + ")"
    return out + f"; {len(conn.awaiting)} ids still awaited"


def dedupe_request_ids(msgs: list[Any]) -> tuple[list[Any], int]:
    """The stream reuses a few request ids (batch members' ids i*10+j meet frame i*10+j's).
    A connection refuses to send an id already in flight, so for encode such a request
    gets a fresh id (in both the floor's and ezipc's copy, so both encode the same)."""
    seen: set[Any] = set()
    renamed = 0

    def fix(m: dict[str, Any]) -> dict[str, Any]:
        nonlocal renamed
        if "method" in m and "id" in m:
            if m["id"] in seen:
                renamed += 1
                m = {**m, "id": f"dup-{renamed}"}
            seen.add(m["id"])
        return m

    out = [[fix(x) for x in m] if type(m) is list else fix(m) for m in msgs]
    return out, renamed


def to_event(m: dict[str, Any]) -> Request | Notification | Response | Error:
    if "method" in m:
        if "id" in m:
            return Request(m["method"], m.get("params"), m["id"])
        return Notification(m["method"], m.get("params"))
    if "error" in m:
        e = m["error"]
        return Error(m["id"], e["code"], e["message"], e.get("data"))
    return Response(m["id"], m["result"])


def encode_prepare(msgs: list[Any]) -> list[Any]:
    return [[to_event(x) for x in m] if type(m) is list else to_event(m) for m in msgs]


def owing_connection(fr: str, codec: str, ids: list[Any]) -> Connection:
    """Untimed setup: a connection that received one request per id, so it owes them."""
    conn = Connection(FRAMING[fr], codec=codec)
    data = W.frame(({"jsonrpc": "2.0", "id": id, "method": "bench/call"} for id in ids), fr)
    conn.receive_data(data)
    n = 0
    while (ev := conn.next_event()) is not NEED_DATA:
        assert type(ev) is Request, ev
        n += 1
    assert n == len(ids)
    return conn


def ezipc_encode(conn: Connection, events: list[Any]) -> tuple[int, int]:
    """Timed: every frame through send / send_batch. Returns (frames, bytes)."""
    send, send_batch = conn.send, conn.send_batch
    out = [send_batch(e) if type(e) is list else send(e) for e in events]
    return len(out), sum(map(len, out))


# ---------------------------------------------------------------- timing


def clock(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of fn(). The objects alive before the run (the workload, the setup) are
    frozen out of the garbage collector's sight, as if each run had a fresh process;
    collections of what the run itself allocates still count."""
    gc.collect()
    gc.freeze()
    try:
        t0 = time.perf_counter()
        res = fn()
        dt = time.perf_counter() - t0
    finally:
        gc.unfreeze()
    return dt, res


def interleaved(
    impls: dict[str, Callable[[], Callable[[], Any]]], repeat: int, count: Callable[[Any], int]
) -> dict[str, list[float]]:
    """Each impl's rate per repeat (``count(result)`` per second), the impls taking turns
    within each repeat (floor, ezipc, floor, ezipc, ...). ``make()`` is untimed setup."""
    runs: dict[str, list[float]] = {}
    for _ in range(repeat):
        for name, make in impls.items():
            fn = make()
            dt, res = clock(fn)
            runs.setdefault(name, []).append(count(res) / dt)
    return runs


def paired(runs: dict[str, list[float]], a: str, b: str) -> float:
    """Median of the per-repeat ratios a/b: a and b ran back to back in each repeat, so
    this cancels most of the machine's slow drift."""
    return median([x / y for x, y in zip(runs[a], runs[b], strict=True)])


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k"


def ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.1f}"


def table(title: str, head: list[str], rows: list[list[str]], notes: tuple[str, ...] = ()) -> None:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print(f"\n{title}")
    for r in [head, *rows]:
        cells = zip(r, widths, strict=True)
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells)))
    for line in notes:
        print(line)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


# ---------------------------------------------------------------- benches


def bench_decode(msgs: list[Any], repeat: int, results: dict[str, Any]) -> None:
    ids = answer_ids(msgs)
    rows, notes = [], []
    for fr in W.FRAMINGS:
        data = W.frame(msgs, fr)
        chunks = W.chunked(data, 65536)
        impls: dict[str, Callable[[], Callable[[], Any]]] = {
            "floor_stdlib": lambda: lambda: floor_stdlib_decode(chunks, fr),  # noqa: B023
        }
        if msgspec is not None:
            impls["floor_msgspec"] = lambda: lambda: floor_msgspec_decode(chunks, fr)  # noqa: B023
        for codec in CODECS:
            def make(codec: str = codec) -> Callable[[], Any]:
                conn = awaiting_connection(fr, codec, ids)  # noqa: B023  (untimed)
                return lambda: ezipc_decode(conn, chunks)  # noqa: B023
            impls[f"ezipc {codec}"] = make
        # untimed warm-up and check
        for codec in CODECS:
            kinds = tally_decode(awaiting_connection(fr, codec, ids), chunks)
            if codec == "json":
                notes.append(f"  {FRAMING[fr]}: {len(msgs)} frames ({len(ids)} answers) -> {kinds}")
        for make in impls.values():
            make()()
        runs = interleaved(impls, repeat, lambda _n: len(msgs))
        med = {k: median(v) for k, v in runs.items()}
        results[f"decode {fr}"] = med
        floor = med["floor_stdlib"]
        row = [FRAMING[fr], rate(floor), rate(med.get("floor_msgspec"))]
        for codec in CODECS:
            target = TARGET_JSON if codec == "json" else TARGET_FAST["decode"]
            base = "floor_stdlib" if codec == "json" else "floor_msgspec"
            x = paired(runs, f"ezipc {codec}", base)
            best = max(runs[f"ezipc {codec}"]) / max(runs[base])
            row += [rate(med[f"ezipc {codec}"]), f"{x:.2f}x", f"{best:.2f}x"]
            row.append(f">={target}x {verdict(x >= target)}")
        rows.append(row)
    head = ["framing", "floor_stdlib", "floor_msgspec"]
    for codec in CODECS:
        head += [f"ezipc {codec}", "x floor" if codec == "json" else "x fl_msgspec", "best", "target"]
    table(
        f"DECODE mixed stream, {len(msgs)} frames in 64 KiB chunks, frames/s "
        f"(median of {repeat}; x floor = median of ezipc / floor_stdlib per repeat (msgspec codec:\n"
        "  / floor_msgspec), >1 = faster;"
        "  best = best ezipc run / best floor run, the view least touched by other load)",
        head, rows,
        ("  Answers: before each run the connection sent (untimed) one Request per response and",
         "  error id in the stream, so they arrive as Response/Error events. Events (json codec):",
         *notes,
         "  (InvalidMessage: the stream reuses a request id while the first request is still",
         "  unanswered; the core rejects that by design.)"),
    )


def bench_encode(msgs: list[Any], repeat: int, results: dict[str, Any]) -> None:
    msgs, renamed = dedupe_request_ids(msgs)
    ids = answer_ids(msgs)
    events = encode_prepare(msgs)
    rows = []
    for fr in W.FRAMINGS:
        impls: dict[str, Callable[[], Callable[[], Any]]] = {
            "floor_stdlib": lambda: lambda: floor_stdlib_encode(msgs, fr),  # noqa: B023
        }
        if msgspec is not None:
            impls["floor_msgspec"] = lambda: lambda: floor_msgspec_encode(msgs, fr)  # noqa: B023
        for codec in CODECS:
            def make(codec: str = codec) -> Callable[[], Any]:
                conn = owing_connection(fr, codec, ids)  # noqa: B023  (untimed)
                return lambda: ezipc_encode(conn, events)
            impls[f"ezipc {codec}"] = make
        # untimed warm-up and check: ezipc's frames decode to the floor's messages
        nbytes = {}
        for name, make in impls.items():
            nbytes[name] = make()()[1]
        check = owing_connection(fr, "json", ids)
        send, send_batch = check.send, check.send_batch
        for m, ev in zip(msgs, events, strict=True):
            wire = send_batch(ev) if type(ev) is list else send(ev)
            body = wire[wire.index(b"\r\n\r\n") + 4 :] if fr == "lsp" else wire
            assert json.loads(body) == m, (body, m)
        runs = interleaved(impls, repeat, lambda res: res[0])
        med = {k: median(v) for k, v in runs.items()}
        results[f"encode {fr}"] = med
        floor = med["floor_stdlib"]
        row = [FRAMING[fr], rate(floor), rate(med.get("floor_msgspec"))]
        for codec in CODECS:
            target = TARGET_JSON if codec == "json" else TARGET_FAST["encode"]
            base = "floor_stdlib" if codec == "json" else "floor_msgspec"
            x = paired(runs, f"ezipc {codec}", base)
            best = max(runs[f"ezipc {codec}"]) / max(runs[base])
            row += [rate(med[f"ezipc {codec}"]), f"{x:.2f}x", f"{best:.2f}x"]
            row.append(f">={target}x {verdict(x >= target)}")
        rows.append(row)
    head = ["framing", "floor_stdlib", "floor_msgspec"]
    for codec in CODECS:
        head += [f"ezipc {codec}", "x floor" if codec == "json" else "x fl_msgspec", "best", "target"]
    table(
        f"ENCODE mixed messages -> framed bytes, {len(msgs)} frames, frames/s "
        f"(median of {repeat}; x floor = median of ezipc / floor_stdlib per repeat (msgspec codec:\n"
        "  / floor_msgspec), >1 = faster;"
        "  best = best ezipc run / best floor run, the view least touched by other load)",
        head, rows,
        ("  ezipc: Connection.send / send_batch of prebuilt events; the connection first",
         "  received (untimed) the requests that the responses and errors answer.",
         f"  {renamed} request ids that the stream reuses while still in flight were renamed",
         "  (in the floor's copy too): a connection refuses to send an id already in flight.",
         "  Every ezipc frame was checked to decode to the floor's message."),
    )


def bench_bytes(msgs: list[Any], repeat: int, results: dict[str, Any]) -> None:
    """The first BYTES_FRAMES frames fed one byte per call (a worst case: a serial line,
    a peer that trickles), ezipc's stdlib codec against floor_stdlib fed the same way."""
    msgs = msgs[:BYTES_FRAMES]
    ids = answer_ids(msgs)
    rows = []
    for fr in W.FRAMINGS:
        data = W.frame(msgs, fr)
        chunks = [data[i : i + 1] for i in range(len(data))]

        def make(fr: str = fr, chunks: list[bytes] = chunks) -> Callable[[], Any]:
            conn = awaiting_connection(fr, "json", ids)  # (untimed)
            return lambda: ezipc_decode(conn, chunks)

        impls: dict[str, Callable[[], Callable[[], Any]]] = {
            "floor_stdlib": lambda: lambda: floor_stdlib_decode(chunks, fr),  # noqa: B023
            "ezipc json": make,
        }
        runs = interleaved(impls, repeat, lambda _n: len(msgs))
        med = {k: median(v) for k, v in runs.items()}
        results[f"bytes {fr}"] = med
        x = paired(runs, "ezipc json", "floor_stdlib")
        per_byte = [f"{1e9 * len(msgs) / med[k] / len(data):.0f}" for k in ("floor_stdlib", "ezipc json")]
        rows.append([FRAMING[fr], rate(med["floor_stdlib"]), rate(med["ezipc json"]), f"{x:.2f}x",
                     *per_byte, f">={TARGET_BYTES}x {verdict(x >= TARGET_BYTES)}"])
    table(
        f"ONE BYTE PER CALL: the first {BYTES_FRAMES} frames fed one byte at a time, frames/s "
        f"(median of {repeat}; x floor = median of ezipc / floor_stdlib per repeat)",
        ["framing", "floor_stdlib", "ezipc json", "x floor", "ns/byte floor", "ns/byte ezipc", "target"],
        rows,
        ("  Per byte, ezipc makes one call (receive_data, which says when next_event has",
         "  nothing new) where the floor makes one generator step."),
    )


def bench_large(repeat: int, results: dict[str, Any]) -> None:
    msg = W.large_message(LARGE_SIZE)
    rows = []
    for fr in W.FRAMINGS:
        data = W.frame_one(W.dumps(msg), fr)
        c4k, c1 = W.chunked(data, 4096), [data]
        impls: dict[str, Callable[[], Callable[[], Any]]] = {
            "floor 4K": lambda: lambda: floor_stdlib_decode(c4k, fr),  # noqa: B023
            "floor 1": lambda: lambda: floor_stdlib_decode(c1, fr),  # noqa: B023
        }
        for codec in CODECS:
            for label, chunks in (("4K", c4k), ("1", c1)):
                def make(codec: str = codec, chunks: list[bytes] = chunks) -> Callable[[], Any]:
                    conn = Connection(FRAMING[fr], codec=codec)  # noqa: B023  (untimed)
                    return lambda: ezipc_decode(conn, chunks)
                impls[f"{codec} {label}"] = make
        for codec in CODECS:  # check: one Notification, equal to what was sent
            conn = Connection(FRAMING[fr], codec=codec)
            for chunk in c4k:
                conn.receive_data(chunk)
            ev = conn.next_event()
            assert type(ev) is Notification and ev.params == msg["params"], type(ev)
            assert conn.next_event() is NEED_DATA
        runs: dict[str, list[float]] = {}
        for _ in range(repeat):
            for name, make in impls.items():
                fn = make()
                dt, n = clock(fn)
                assert n == 1, (name, n)
                runs.setdefault(name, []).append(dt)
        med = {k: median(v) for k, v in runs.items()}
        results[f"large {fr}"] = med
        row = [FRAMING[fr], ms(med["floor 4K"]), ms(med["floor 1"])]
        for codec in CODECS:
            x = paired(runs, f"{codec} 4K", "floor 4K")
            best = min(runs[f"{codec} 4K"]) / min(runs["floor 4K"])
            ok = x <= TARGET_LARGE if codec == "json" else True
            row += [ms(med[f"{codec} 4K"]), ms(med[f"{codec} 1"]),
                    f"{paired(runs, f'{codec} 4K', f'{codec} 1'):.2f}", f"{x:.2f}x", f"{best:.2f}x",
                    f"<={TARGET_LARGE}x {verdict(ok)}" if codec == "json" else ""]
        rows.append(row)
    head = ["framing", "floor 4K", "floor 1"]
    for codec in CODECS:
        head += [f"{codec} 4K", f"{codec} 1", "4K/1", "x floor", "best", "target" if codec == "json" else ""]
    table(
        f"LARGE one 16 MiB notification, ms (median of {repeat}): 4K = fed in 4 KiB chunks, "
        "1 = in one chunk;\n  4K/1 = ezipc 4K / ezipc 1 (1 = linear); x floor = ezipc 4K / floor 4K "
        "(here <1 = faster); best = best ezipc 4K / best floor 4K",
        head, rows,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20k frames, 9 repeats")
    ap.add_argument("--n", type=int, help="frames in the mixed stream (default 100000, quick 20000)")
    ap.add_argument("--repeat", type=int, help="runs per measurement, median shown (default 7, quick 9)")
    ap.add_argument("--only", default="decode,encode,bytes,large", help="of decode,encode,bytes,large")
    ap.add_argument("--json", metavar="FILE", help="also write the medians as JSON")
    args = ap.parse_args()
    n = args.n or (20_000 if args.quick else 100_000)
    repeat = args.repeat or (9 if args.quick else 7)
    only = set(args.only.split(","))
    print(f"python {platform.python_version()}  msgspec {getattr(msgspec, '__version__', 'absent')}  "
          f"cpus {os.cpu_count()}  frames {n}  repeat {repeat}  load {_load()}")
    msgs = W.mixed_messages(n)
    results: dict[str, Any] = {}
    if "decode" in only:
        bench_decode(msgs, repeat, results)
    if "encode" in only:
        bench_encode(msgs, repeat, results)
    if "bytes" in only:
        bench_bytes(msgs, repeat, results)
    if "large" in only:
        bench_large(max(repeat, 11), results)  # cheap, and noisier: more repeats
    print(f"\nload average at the end: {_load()} (a busy machine spreads the repeats: compare within a run)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


if __name__ == "__main__":
    main()
