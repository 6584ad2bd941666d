#!/usr/bin/env python3
"""Blocking adapter benchmark: ``ezipc_adapters.blocking`` against a floor in the same run.

    python bench/blocking.py            # about a minute
    python bench/blocking.py --quick    # about 20 s
    python bench/blocking.py --profile client|server|floor   # cProfile one side's hot path
    python bench/blocking.py --bytecodes client|server       # bytecodes per request, by function

Every server runs in a child process, on loopback TCP, NDJSON. The floor is
``../shared/bench/impls/floor_blocking.py``: bare blocking sockets, ``json``, newline
framing, one thread a side, TCP_NODELAY. Methods as the shared harness: ``add {"a": i,
"b": 1}`` and ``echo {"s": <1 KiB>}`` (named params).

Rows:
* ``seq``: one call at a time, latency mean / p50 / p99 in µs (ezipc: ``remote.request``);
* ``pipe64``: 64 calls in flight, requests/s (floor: one thread writes ahead of the
  answers it reads; ezipc: ``remote.submit`` futures, as ``drive_futures`` does);
* ``threads``: against a server whose handler sleeps 1 ms, requests/s of 1 thread and of
  8 threads sharing one ``Remote`` (target: 8 threads >= 3x one thread);
* ``by side``: the floor client against the ezipc server, and the ezipc client against
  the floor server (sequential ``add``), to see which side costs what;
* ``server CPU``: the server process's user and system CPU time per request (Linux
  ``/proc``), the floor's, the bound's (below) and ezipc's, each driven by the floor's
  client (``add``), one call at a time and 64 in flight: what each server spends on a
  request.
* ``bound``: the session (``ezipc_proto.Session``) driven by the leanest blocking loop
  there is: a thread per connection, a blocking ``recv``, the handler run inline, no
  lock, poll, pool or timer. Not a usable driver (a handler that called its peer would
  wait for good), but what no driver on the session can beat: ``bound / floor`` is what
  the protocol core costs, ``ezipc / bound`` what the driver adds. Sequential ``add``
  both sides on the session, and each side against the floor's other side; pipelined,
  each side against the floor's other side (ezipc's too).

``--bytecodes`` counts the Python bytecodes one side runs per request (sequential ``add``,
then 64 in flight), by function, with the floor as the other side: a measure of what the
code does that this machine's noise does not move (the same code gives the same count
within about 1%), for comparing two versions of a hot path. Tracing slows the code
down about 30 times, so the driver's 1 ms timers are stretched as much meanwhile.

Ratios compare medians of interleaved repeats (floor, ezipc, floor, ezipc, ...), since
loopback numbers on a shared 2-core machine move 10-30% between runs. Target from the
issue: sequential latency <= 1.2x the floor's.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

ECHO = "x" * 1024
HERE = os.path.abspath(__file__)


def params(method: str, i: int) -> dict[str, Any]:
    return {"a": i, "b": 1} if method == "add" else {"s": ECHO}


def expected(method: str, i: int) -> Any:
    return i + 1 if method == "add" else ECHO


def handle(method: str, p: dict[str, Any]) -> Any:
    if method == "add":
        return p["a"] + p["b"]
    if method == "echo":
        return p["s"]
    raise KeyError(method)


# ---- servers (child processes) ---------------------------------------------------------


def serve_threads(ready: Any, serve_conn: Any) -> None:
    """Accept on a free port (told to ``ready``), ``serve_conn(conn)`` in a thread each."""
    srv = socket.create_server(("127.0.0.1", 0))
    ready(srv.getsockname()[1])
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve_conn, args=(conn,), daemon=True).start()


def serve_floor(ready: Any) -> None:
    serve_threads(ready, _floor_conn)


def _floor_conn(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rfile, wfile = conn.makefile("rb"), conn.makefile("wb", buffering=0)
    loads, dumps = json.loads, json.dumps
    for line in rfile:
        msg = loads(line)
        wfile.write(dumps({"jsonrpc": "2.0", "id": msg["id"],
                           "result": handle(msg["method"], msg["params"])}).encode() + b"\n")


def serve_ezipc(ready: Any, sleep: float = 0.0) -> None:
    from ezipc_adapters.blocking import Server

    server = Server(framing="ndjson", max_workers=16)

    if sleep:
        @server.hook_request("add")
        def add_slow(a: int, b: int) -> int:
            time.sleep(sleep)
            return a + b
    else:
        server.hook_request("add", lambda a, b: a + b)
    server.hook_request("echo", lambda s: s)
    server.hook_notif("stop", lambda: server.shutdown(wait=False))
    addresses = server.serve_in_thread("tcp://127.0.0.1:0")
    ready(int(addresses[0].rsplit(":", 1)[1]))
    server._stopped.wait()


def serve_bound(ready: Any) -> None:
    """The session driven by the leanest blocking loop (see ``bound`` above)."""
    serve_threads(ready, _bound_conn)


def _bound_conn(conn: socket.socket) -> None:
    from ezipc_proto import NEED_DATA, Job, Session

    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    clock = time.monotonic
    session = Session("ndjson", now=clock())
    session.start(clock())
    recv, send = conn.recv, conn.sendall
    while data := recv(65536):
        session.receive_data(data, clock())
        while (ev := session.next_event()) is not NEED_DATA:
            if type(ev) is Job:
                session.answer(ev, handle(ev.method, ev.params), clock())  # type: ignore[arg-type]
        out = session.data_to_send()
        if out:
            send(out)


def bound_client(port: int, method: str, seq_n: int, pipe_n: int, inflight: int) -> dict[str, float]:
    """The floor's client, with the session in place of ``json`` (see ``bound``): it writes
    one request per answer read, as the floor's does."""
    from ezipc_proto import NEED_DATA, Session, Settle

    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    clock, pc = time.monotonic, time.perf_counter_ns
    session = Session("ndjson", now=clock())
    session.start(clock())
    recv, send = sock.recv, sock.sendall
    got: list[Any] = []

    def call(i: int) -> None:
        session.request(method, params(method, i), now=clock())
        send(session.data_to_send())

    def answers(want: int) -> None:  # read until ``got`` holds ``want`` results
        while len(got) < want:
            session.receive_data(recv(65536), clock())
            while (ev := session.next_event()) is not NEED_DATA:
                if type(ev) is Settle:
                    got.append(ev.result)

    for i in range(200):
        call(i)
        answers(len(got) + 1)
    got.clear()
    lat = []
    for i in range(seq_n):
        t0 = pc()
        call(i)
        answers(i + 1)
        lat.append(pc() - t0)
        assert got[i] == expected(method, i)
    out = seq_stats(lat) if lat else {}
    got.clear()
    t0 = pc()
    for i in range(min(inflight, pipe_n)):
        call(i)
    sent = min(inflight, pipe_n)
    while len(got) < pipe_n:
        before = len(got)
        answers(before + 1)
        for _ in range(len(got) - before):
            if sent < pipe_n:
                call(sent)
                sent += 1
    out["pipe"] = pipe_n / max(1, pc() - t0) * 1e9
    assert sorted(got) == sorted(expected(method, i) for i in range(pipe_n))
    sock.close()
    return out


def child_main(kind: str) -> None:
    def ready(port: int) -> None:
        sys.stdout.write(f"{port}\n")
        sys.stdout.flush()

    if kind == "floor":
        serve_floor(ready)
    elif kind == "ezipc":
        serve_ezipc(ready)
    elif kind == "bound":
        serve_bound(ready)
    elif kind == "ezipc-sleep":
        serve_ezipc(ready, sleep=0.001)
    else:
        raise SystemExit(f"unknown server {kind!r}")


class Child:
    def __init__(self, kind: str) -> None:
        self.proc = subprocess.Popen([sys.executable, HERE, "--serve", kind], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def cpu_times(pid: int) -> tuple[float, float] | None:
    """A process's user and system CPU seconds so far (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def server_cpu(child: Child, seq_n: int, pipe_n: int) -> dict[str, float]:
    """µs of the server's user / system CPU per request, the floor's client calling
    ``add`` one at a time (seq_n calls), then 64 in flight (pipe_n): {} without /proc."""
    out: dict[str, float] = {}
    for mode, seq, pipe in (("seq", seq_n, 0), ("pipe", 0, pipe_n)):
        before = cpu_times(child.proc.pid)
        floor_client(child.port, "add", seq, pipe, 64)
        after = cpu_times(child.proc.pid)
        if before is None or after is None:
            return {}
        calls = seq + pipe + 200  # (and the client's warm-up)
        out[f"{mode} user"] = (after[0] - before[0]) / calls * 1e6
        out[f"{mode} sys"] = (after[1] - before[1]) / calls * 1e6
    return out


# ---- clients ---------------------------------------------------------------------------


def seq_stats(lat_ns: list[int]) -> dict[str, float]:
    lat = sorted(lat_ns)
    n = len(lat)
    return {"mean": sum(lat) / n / 1e3, "p50": lat[n // 2] / 1e3, "p99": lat[max(0, int(n * 0.99) - 1)] / 1e3}


def floor_client(port: int, method: str, seq_n: int, pipe_n: int, inflight: int) -> dict[str, float]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rfile, wfile = sock.makefile("rb"), sock.makefile("wb", buffering=0)
    loads, dumps, pc = json.loads, json.dumps, time.perf_counter_ns
    ids = iter(range(1, 1 << 62))

    def send(i: int) -> None:
        wfile.write(dumps({"jsonrpc": "2.0", "id": next(ids), "method": method,
                           "params": params(method, i)}).encode() + b"\n")

    def recv() -> Any:
        return loads(rfile.readline())["result"]

    for i in range(200):
        send(i)
        recv()
    lat = []
    for i in range(seq_n):
        t0 = pc()
        send(i)
        r = recv()
        lat.append(pc() - t0)
        assert r == expected(method, i)
    out = seq_stats(lat) if lat else {}
    got = []  # (a server with several threads may answer out of order: checked after)
    t0 = pc()
    for i in range(min(inflight, pipe_n)):
        send(i)
    for i in range(pipe_n):
        got.append(recv())
        if i + inflight < pipe_n:
            send(i + inflight)
    out["pipe"] = pipe_n / max(1, pc() - t0) * 1e9
    assert sorted(got) == sorted(expected(method, i) for i in range(pipe_n))
    sock.close()
    return out


def ezipc_client(port: int, method: str, seq_n: int, pipe_n: int, inflight: int) -> dict[str, float]:
    from ezipc_adapters.blocking import connect

    pc = time.perf_counter_ns
    with connect(f"tcp://127.0.0.1:{port}") as remote:
        request, submit = remote.request, remote.submit
        for i in range(200):
            request(method, params(method, i))
        lat = []
        for i in range(seq_n):
            p = params(method, i)
            t0 = pc()
            r = request(method, p)
            lat.append(pc() - t0)
            assert r == expected(method, i)
        out = seq_stats(lat)
        window: collections.deque[Any] = collections.deque()
        t0 = pc()
        for i in range(pipe_n):
            if len(window) >= inflight:
                j, f = window.popleft()
                assert f.result() == expected(method, j)
            window.append((i, submit(method, params(method, i))))
        for j, f in window:
            assert f.result() == expected(method, j)
        out["pipe"] = pipe_n / max(1, pc() - t0) * 1e9
    return out


def threads_client(port: int, nthreads: int, n: int) -> float:
    """Requests/s with ``nthreads`` threads sharing one Remote (n calls in all)."""
    from ezipc_adapters.blocking import connect

    with connect(f"tcp://127.0.0.1:{port}") as remote:
        for i in range(20):
            remote.request("add", {"a": i, "b": 1})
        per = n // nthreads
        barrier = threading.Barrier(nthreads + 1)
        errors = []

        def work(k: int) -> None:
            barrier.wait()
            for i in range(per):
                if remote.request("add", {"a": i, "b": k}) != i + k:
                    errors.append(i)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(nthreads)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        assert not errors
    return per * nthreads / elapsed


# ---- main ------------------------------------------------------------------------------


def profile(side: str, n: int) -> None:
    """cProfile one side's hot path over ``n`` sequential ``add`` calls: the 25 costliest
    functions, and the calls made per request (deterministic, where timings on a shared
    machine are not)."""
    import cProfile
    import pstats

    def report(stats: pstats.Stats, what: str, requests: int) -> None:
        calls = sum(row[1] for row in stats.stats.values())  # type: ignore[attr-defined]
        stats.sort_stats("tottime").print_stats(25)
        print(f"{what}: {calls / requests:.1f} calls per request (Python functions and builtins)")

    if side == "client":
        child = Child("ezipc")
        try:
            prof = cProfile.Profile()
            prof.enable()
            ezipc_client(child.port, "add", n, 10, 1)
            prof.disable()
        finally:
            child.stop()
        report(pstats.Stats(prof), "ezipc's client", n + 200 + 10)  # (with its warm-up)
        return
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(HERE)!r}); import blocking as b; "
            f"b.floor_client({{port}}, 'add', {n}, 0, 1)")
    if side == "floor":
        # The floor's server loop, in a thread of this process, for one connection.
        listener = socket.create_server(("127.0.0.1", 0))
        prof = cProfile.Profile()

        def serve_one() -> None:
            conn, _ = listener.accept()
            prof.enable()
            try:
                _floor_conn(conn)
            finally:
                prof.disable()

        thread = threading.Thread(target=serve_one)
        thread.start()
        subprocess.run([sys.executable, "-c", code.format(port=listener.getsockname()[1])], check=True)
        thread.join()
        listener.close()
        report(pstats.Stats(prof), "the floor's server", n + 200)
        return
    # The server's hot path runs in its I/O thread (the selector loop) and its pool
    # runners (the pool threads that run handlers): profile them all.
    import ezipc_adapters._blocking as B
    import ezipc_adapters._blocking_io as BIO
    from ezipc_adapters.blocking import Server

    profiles: list[cProfile.Profile] = []
    original_loop, original_run = BIO.Loop.run, B.Remote._run_jobs

    def wrap(fn: Any) -> Any:
        def run(*args: Any) -> Any:
            prof = cProfile.Profile()
            profiles.append(prof)
            prof.enable()
            try:
                return fn(*args)
            finally:
                prof.disable()
        return run

    BIO.Loop.run = wrap(original_loop)  # type: ignore[method-assign]
    B.Remote._run_jobs = wrap(original_run)  # type: ignore[method-assign]
    server = Server(framing="ndjson")
    server.hook_request("add", lambda a, b: a + b)
    port = int(server.serve_in_thread("tcp://127.0.0.1:0")[0].rsplit(":", 1)[1])
    subprocess.run([sys.executable, "-c", code.format(port=port)], check=True)
    server.shutdown()
    stats = pstats.Stats(profiles[0])
    for prof in profiles[1:]:
        stats.add(prof)
    report(stats, "ezipc's server", n + 200)


def bytecodes(side: str, n: int) -> None:
    """Count the bytecodes ``side`` (ezipc's server or client) runs per request, by
    function: ``n`` sequential ``add`` calls, then ``n`` with 64 in flight, the floor as
    the other side (see the module's docstring)."""
    import ezipc_adapters._blocking_callers as callers
    import ezipc_adapters._blocking_runners as runners

    # Tracing makes every step ~30x slower: so are the timers that decide who reads.
    callers.GRACE *= 30
    runners.RUNNER_GRACE *= 30
    runners.WORKER_GRACE *= 30
    counts: collections.Counter[str] = collections.Counter()
    counting = threading.Event()

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        code = frame.f_code
        where = f"{os.path.basename(code.co_filename)}:{code.co_name}"

        def step(frame: Any, event: str, arg: Any) -> Any:
            if event == "opcode" and counting.is_set():
                counts[where] += 1
            return step

        return step

    threading.settrace(tracer)  # (every thread started from now on: the I/O thread, workers)
    for inflight in (1, 64):
        counts.clear()
        seq_n, pipe_n = (n, 0) if inflight == 1 else (1, n)
        if side == "server":
            from ezipc_adapters.blocking import Server

            server = Server(framing="ndjson")
            server.hook_request("add", lambda a, b: a + b)
            port = int(server.serve_in_thread("tcp://127.0.0.1:0")[0].rsplit(":", 1)[1])
            # The floor's client in a child: it waits for a line before and after its calls.
            code = (f"import sys; sys.path.insert(0, {os.path.dirname(HERE)!r}); import blocking as b; "
                    f"b.floor_client({port}, 'add', 20, 0, 1); print(flush=True); sys.stdin.readline(); "
                    f"b.floor_client({port}, 'add', {seq_n}, {pipe_n}, {inflight}); print(flush=True); "
                    "sys.stdin.readline()")
            child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
            assert child.stdin is not None and child.stdout is not None
            child.stdout.readline()
            counting.set()
            child.stdin.write("\n")
            child.stdin.flush()
            child.stdout.readline()
            counting.clear()
            child.stdin.write("\n")
            child.stdin.close()
            child.wait()
            server.shutdown()
            requests = n + 200  # (floor_client's own warm-up comes first)
        else:
            floor = Child("floor")
            try:
                ezipc_client(floor.port, "add", 20, 0, 1)
                counting.set()
                sys.settrace(tracer)
                ezipc_client(floor.port, "add", seq_n, pipe_n, inflight)
                sys.settrace(None)
                counting.clear()
            finally:
                floor.stop()
            requests = n + 200 + (1 if inflight > 1 else 0)  # (ezipc_client's warm-up too)
        total = sum(counts.values())
        mine = collections.Counter({"ezipc_proto": 0, "ezipc_adapters": 0})
        for where, count in counts.items():
            module = where.split(":")[0]
            if module in _PROTO_MODULES:
                mine["ezipc_proto"] += count
            elif module in _ADAPTER_MODULES:
                mine["ezipc_adapters"] += count
        print(f"ezipc's {side}, {'one call at a time' if inflight == 1 else '64 in flight'}: "
              f"{total / requests:.0f} bytecodes per request (the core {mine['ezipc_proto'] / requests:.0f}, "
              f"the driver {mine['ezipc_adapters'] / requests:.0f})")
        for where, count in counts.most_common(20):
            print(f"  {count / requests:7.1f}  {where}")
    threading.settrace(None)  # type: ignore[arg-type]


def _modules(package: str) -> frozenset[str]:
    root = os.path.join(os.path.dirname(os.path.dirname(HERE)), package)
    return frozenset(name for name in os.listdir(root) if name.endswith(".py"))


_PROTO_MODULES = _modules("ezipc_proto")
_ADAPTER_MODULES = _modules("ezipc_adapters")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--profile", choices=("client", "server", "floor"))
    ap.add_argument("--bytecodes", choices=("client", "server"))
    ap.add_argument("--json", action="store_true", help="also print the raw medians as JSON")
    args = ap.parse_args()
    if args.serve:
        child_main(args.serve)
        return
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    if args.profile:
        profile(args.profile, 3000 if args.quick else 10000)
        return
    if args.bytecodes:
        bytecodes(args.bytecodes, 500 if args.quick else 2000)
        return
    repeat = args.repeat or (3 if args.quick else 5)
    seq_n = 1000 if args.quick else 3000
    pipe_n = 3000 if args.quick else 10000
    thread_n = 800 if args.quick else 2400

    results: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    floor, ez, slow, bound = Child("floor"), Child("ezipc"), Child("ezipc-sleep"), Child("bound")
    try:
        for rep in range(repeat):
            for method in ("add", "echo"):
                results[f"floor {method}"].append(floor_client(floor.port, method, seq_n, pipe_n, 64))
                results[f"ezipc {method}"].append(ezipc_client(ez.port, method, seq_n, pipe_n, 64))
            # Which side costs what: each ezipc side against the other side's floor.
            results["cross floor->ezipc"].append(floor_client(ez.port, "add", seq_n, pipe_n, 64))
            results["cross ezipc->floor"].append(ezipc_client(floor.port, "add", seq_n, pipe_n, 64))
            # What no driver on the session can beat (see ``bound``).
            results["bound add"].append(bound_client(bound.port, "add", seq_n, 0, 64))
            results["cross floor->bound"].append(floor_client(bound.port, "add", seq_n, pipe_n, 64))
            results["cross bound->floor"].append(bound_client(floor.port, "add", seq_n, pipe_n, 64))
            for impl, child in (("floor", floor), ("bound", bound), ("ezipc", ez)):
                cost = server_cpu(child, max(seq_n, 3000), max(pipe_n, 20000))  # (10 ms ticks)
                if cost:
                    results[f"cpu {impl}"].append(cost)
            one = threads_client(slow.port, 1, thread_n // 4)
            eight = threads_client(slow.port, 8, thread_n)
            results["threads"].append({"one": one, "eight": eight})
            print(f"  repeat {rep + 1}/{repeat} done", file=sys.stderr)
    finally:
        for child in (floor, ez, slow, bound):
            child.stop()

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {repeat} interleaved repeats (medians)")
    print(f"{'':14}{'mean µs':>9}{'p50 µs':>9}{'p99 µs':>9}{'pipe64 req/s':>14}")
    for method in ("add", "echo"):
        for impl in ("floor", "ezipc"):
            name = f"{impl} {method}"
            print(f"{name:14}{med(name, 'mean'):9.1f}{med(name, 'p50'):9.1f}{med(name, 'p99'):9.1f}"
                  f"{med(name, 'pipe'):14,.0f}")
    print()
    for method in ("add", "echo"):
        f, e = f"floor {method}", f"ezipc {method}"
        print(f"{method}: sequential latency ezipc/floor  mean {med(e, 'mean') / med(f, 'mean'):.2f}x"
              f"  p50 {med(e, 'p50') / med(f, 'p50'):.2f}x  (target <= 1.2x);"
              f"  pipe64 throughput ezipc/floor {med(e, 'pipe') / med(f, 'pipe'):.2f}x")
    base, to_server, to_floor = (med("floor add", "p50"), med("cross floor->ezipc", "p50"),
                                 med("cross ezipc->floor", "p50"))
    print(f"add, sequential p50 by side: floor client -> ezipc server {to_server:.1f} µs"
          f" ({to_server / base:.2f}x), ezipc client -> floor server {to_floor:.1f} µs"
          f" ({to_floor / base:.2f}x)")
    both, b_server, b_client = (med("bound add", "p50"), med("cross floor->bound", "p50"),
                                med("cross bound->floor", "p50"))
    print(f"bound (the session, no driver), add, sequential p50: both sides {both:.1f} µs ({both / base:.2f}x"
          f" the floor; ezipc {med('ezipc add', 'p50') / both:.2f}x the bound), the server only"
          f" {b_server:.1f} µs ({b_server / base:.2f}x), the client only {b_client:.1f} µs"
          f" ({b_client / base:.2f}x)")
    b_pipe, f_pipe = med("cross floor->bound", "pipe"), med("floor add", "pipe")
    e_pipe = med("cross floor->ezipc", "pipe")
    print(f"add, pipe64, the floor's client against each server: the bound's {b_pipe:,.0f} req/s"
          f" ({b_pipe / f_pipe:.2f}x the floor's), ezipc's {e_pipe:,.0f} ({e_pipe / f_pipe:.2f}x the floor's,"
          f" {e_pipe / b_pipe:.2f}x the bound's)")
    bc_pipe, ec_pipe = med("cross bound->floor", "pipe"), med("cross ezipc->floor", "pipe")
    print(f"add, pipe64, each client against the floor's server: the bound's {bc_pipe:,.0f} req/s"
          f" ({bc_pipe / f_pipe:.2f}x the floor's), ezipc's {ec_pipe:,.0f} ({ec_pipe / f_pipe:.2f}x the"
          f" floor's, {ec_pipe / bc_pipe:.2f}x the bound's)")
    if results.get("cpu floor") and results.get("cpu ezipc"):
        print("server CPU per request, the floor's client calling add (user + system µs):")
        for mode, label in (("seq", "one at a time"), ("pipe", "64 in flight")):
            fu, fs = med("cpu floor", f"{mode} user"), med("cpu floor", f"{mode} sys")
            eu, es = med("cpu ezipc", f"{mode} user"), med("cpu ezipc", f"{mode} sys")
            bu, bs = med("cpu bound", f"{mode} user"), med("cpu bound", f"{mode} sys")
            print(f"  {label:14} floor {fu:5.1f} + {fs:5.1f}, bound {bu:5.1f} + {bs:5.1f},"
                  f" ezipc {eu:5.1f} + {es:5.1f} (user {eu / fu:.2f}x the floor's, {eu / bu:.2f}x"
                  f" the bound's; all {(eu + es) / (fu + fs):.2f}x, {(eu + es) / (bu + bs):.2f}x)")
    one, eight = med("threads", "one"), med("threads", "eight")
    print(f"1 ms handler: 1 thread {one:,.0f} req/s, 8 threads sharing one Remote {eight:,.0f} req/s:"
          f" {eight / one:.2f}x (target >= 3x)")
    if args.json:
        print(json.dumps({k: {key: statistics.median(r[key] for r in v) for key in v[0]}
                          for k, v in results.items()}))


if __name__ == "__main__":
    main()
