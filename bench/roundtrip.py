"""Round trips through the async adapter against a floor measured in the same run.

    python bench/roundtrip.py            # asyncio, uvloop and trio; TCP and Unix sockets
    python bench/roundtrip.py --quick    # fewer calls
    python bench/roundtrip.py --loops asyncio --transports tcp --codec msgspec
    python bench/roundtrip.py --loops uvloop --transports tcp --by-side   # which side costs what

The floor is what you would write by hand with no library: bare asyncio streams, newline
framing, ``json.loads``/``json.dumps``, a reader task matching answers to futures (the
same as the shared harness's ``floor_asyncio``). The server runs in a child process, the
client here; both use the same event loop kind. Sequential = one call in flight (mean,
p50, p99 latency); pipelined = 64 callers at once (requests per second). Ratios are
ezipc / floor for throughput (>1 = faster) and floor / ezipc for latency (>1 = faster).
Numbers move 10-30% between runs on a small VM: compare rows of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ECHO = "0123456789abcdef" * 64  # 1 KiB


def handle(method: str, params: dict[str, Any]) -> Any:
    if method == "add":
        return params["a"] + params["b"]
    return params["s"]


def params_for(method: str, i: int) -> dict[str, Any]:
    return {"a": i, "b": 1} if method == "add" else {"s": ECHO}


def expected(method: str, i: int) -> Any:
    return i + 1 if method == "add" else ECHO


# ---- servers (child processes) ---------------------------------------------------------


def serve_ezipc(address: str, loop: str, codec: str) -> None:
    from ezipc_adapters import Server

    server = Server(framing="ndjson", codec=codec)
    server.hook_request("add", lambda a, b: a + b)
    server.hook_request("echo", lambda s: s)
    if loop == "trio":
        server.start(address, backend="trio")
    else:
        server.start(address, backend="asyncio", use_uvloop=loop == "uvloop")


def serve_floor(address: str, loop: str) -> None:
    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            msg = json.loads(line)
            out = {"jsonrpc": "2.0", "id": msg["id"], "result": handle(msg["method"], msg["params"])}
            writer.write(json.dumps(out).encode() + b"\n")
            await writer.drain()
        writer.close()

    async def main() -> None:
        if address.startswith("unix:"):
            server = await asyncio.start_unix_server(conn, address[5:])
        else:
            host, port = address[6:].rsplit(":", 1)
            server = await asyncio.start_server(conn, host, int(port))
        async with server:
            await server.serve_forever()

    _run_asyncio(main(), loop == "uvloop")


def _run_asyncio(coro: Any, uvloop: bool) -> Any:
    if uvloop:
        import uvloop as _uvloop

        return _uvloop.run(coro)
    return asyncio.run(coro)


# ---- clients -------------------------------------------------------------------------


async def drive(call: Any, plan: dict[str, int], sleep0: Any) -> dict[str, Any]:
    """The timing loop shared by every client (works on asyncio and trio through anyio)."""
    import anyio

    rows: dict[str, Any] = {}
    for method in ("add", "echo"):
        for i in range(plan["warmup"]):
            assert await call(method, params_for(method, i)) == expected(method, i)
        lat = []
        for i in range(plan["seq"]):
            t0 = time.perf_counter_ns()
            result = await call(method, params_for(method, i))
            lat.append(time.perf_counter_ns() - t0)
            assert result == expected(method, i)
        lat.sort()
        rows[f"{method} seq"] = (
            statistics.fmean(lat) / 1e3,
            lat[len(lat) // 2] / 1e3,
            lat[int(len(lat) * 0.99)] / 1e3,
        )
        todo = iter(range(plan["pipe"]))
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(pipe_worker, call, method, todo)
        rows[f"{method} pipe"] = plan["pipe"] / (time.perf_counter() - start)
    return rows


async def pipe_worker(call: Any, method: str, todo: Any) -> None:
    """One of 64 callers sharing the work of the pipelined phase."""
    for i in todo:
        assert await call(method, params_for(method, i)) == expected(method, i)


async def client_ezipc(address: str, plan: dict[str, int], codec: str) -> dict[str, Any]:
    from ezipc_adapters import connect

    async with connect(address, codec=codec) as remote:
        return await drive(remote.request, plan, None)


async def client_floor(address: str, plan: dict[str, int]) -> dict[str, Any]:
    if address.startswith("unix:"):
        reader, writer = await asyncio.open_unix_connection(address[5:])
    else:
        host, port = address[6:].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
    pending: dict[int, asyncio.Future[Any]] = {}
    loop = asyncio.get_running_loop()
    next_id = 0

    async def read_loop() -> None:
        while line := await reader.readline():
            msg = json.loads(line)
            pending.pop(msg["id"]).set_result(msg["result"])

    async def call(method: str, params: Any) -> Any:
        nonlocal next_id
        next_id += 1
        fut = pending[next_id] = loop.create_future()
        writer.write(
            json.dumps({"jsonrpc": "2.0", "id": next_id, "method": method, "params": params}).encode() + b"\n"
        )
        await writer.drain()
        return await fut

    task = asyncio.create_task(read_loop())
    try:
        return await drive(call, plan, None)
    finally:
        task.cancel()
        writer.close()


# ---- orchestration ---------------------------------------------------------------------


def measure(
    impl: str, loop: str, transport: str, plan: dict[str, int], codec: str, client: str | None = None
) -> dict[str, Any]:
    """``impl``'s server against ``client``'s client (default: ``impl``'s too)."""
    client = client or impl
    tmp = tempfile.mkdtemp(prefix="ezipc-bench-")
    if transport == "unix":
        address = f"unix:{tmp}/s.sock"
    else:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", impl, address, loop, codec],
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(address)
        if client == "floor":
            return _run_asyncio(client_floor(address, plan), loop == "uvloop")  # type: ignore[no-any-return]
        import anyio

        backend_options = {"use_uvloop": True} if loop == "uvloop" else {}
        backend = "trio" if loop == "trio" else "asyncio"
        return anyio.run(client_ezipc, address, plan, codec, backend=backend, backend_options=backend_options)
    finally:
        child.terminate()
        child.wait()


def _wait_listening(address: str) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if address.startswith("unix:"):
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(address[5:])
            else:
                host, port = address[6:].rsplit(":", 1)
                socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on {address} did not start")


def print_ratio(floor: dict[str, Any], row: dict[str, Any]) -> None:
    print(
        f"{'':8} {'':9} {'ratio':6} {floor['add seq'][0] / row['add seq'][0]:>21.2f}x"
        f" {floor['echo seq'][0] / row['echo seq'][0]:>9.2f}x"
        f" {row['add pipe'] / floor['add pipe']:>10.2f}x"
        f" {row['echo pipe'] / floor['echo pipe']:>11.2f}x",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--loops", default="asyncio,uvloop,trio")
    parser.add_argument("--transports", default="tcp,unix")
    parser.add_argument("--codec", default="json", help="ezipc's codec: json or msgspec")
    parser.add_argument(
        "--by-side",
        action="store_true",
        help="also the floor's client against ezipc's server (fl>ez) and ezipc's client "
        "against the floor's server (ez>fl), to see which side costs what",
    )
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        impl, address, loop, codec = args.serve
        if impl == "floor":
            serve_floor(address, loop)
        else:
            serve_ezipc(address, loop, codec)
        return
    plan = (
        {"warmup": 200, "seq": 1000, "pipe": 5000}
        if args.quick
        else {"warmup": 500, "seq": 3000, "pipe": 20000}
    )
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, ezipc codec={args.codec}, plan={plan}")
    print(
        f"{'loop':8} {'transport':9} {'impl':6} {'add seq us (p50/p99)':>22}"
        f" {'echo seq':>10} {'add pipe/s':>11} {'echo pipe/s':>12}"
    )
    floor_rows: dict[tuple[str, str], dict[str, Any]] = {}
    for transport in args.transports.split(","):
        for loop in args.loops.split(","):
            for impl in ("floor", "ezipc"):
                if impl == "floor" and loop == "trio":
                    # The floor is asyncio; trio is compared with the plain-asyncio floor.
                    row = floor_rows.get((transport, "asyncio")) or measure(
                        "floor", "asyncio", transport, plan, "json"
                    )
                else:
                    row = measure(impl, loop, transport, plan, args.codec)
                if impl == "floor":
                    floor_rows[(transport, loop)] = row
                a = row["add seq"]
                print(
                    f"{loop:8} {transport:9} {impl:6} {a[0]:>9.0f} ({a[1]:.0f}/{a[2]:.0f})"
                    f" {row['echo seq'][0]:>10.0f} {row['add pipe']:>11.0f} {row['echo pipe']:>12.0f}",
                    flush=True,
                )
                if impl == "ezipc":
                    floor = floor_rows[(transport, loop)]
                    print_ratio(floor, row)
                    for label, server, client in (("fl>ez", "ezipc", "floor"), ("ez>fl", "floor", "ezipc")):
                        if not args.by_side:
                            break
                        mixed = measure(server, loop, transport, plan, args.codec, client=client)
                        a = mixed["add seq"]
                        print(
                            f"{'':8} {'':9} {label:6} {a[0]:>9.0f} ({a[1]:.0f}/{a[2]:.0f})"
                            f" {mixed['echo seq'][0]:>10.0f} {mixed['add pipe']:>11.0f}"
                            f" {mixed['echo pipe']:>12.0f}",
                            flush=True,
                        )
                        print_ratio(floor, mixed)
    print("ratio: >1 means ezipc is faster than the floor (latency: floor/ezipc; throughput: ezipc/floor)")


if __name__ == "__main__":
    main()
