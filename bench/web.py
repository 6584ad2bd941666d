"""ezipc's ASGI app against fastapi-jsonrpc, both on uvicorn, measured in one run.

The same two methods, ``add(a, b)`` and ``echo(value)``, served by each; the same client
for both: a small load generator (asyncio, raw keep-alive HTTP/1.1 connections, each
POSTing one request at a time, every answer checked) so that the client costs as little
as possible next to the servers. Printed: requests per second over HTTP with 1 and with 2
uvicorn workers, and round trips per second over one WebSocket (sequential, with the
``websockets`` client; fastapi-jsonrpc serves HTTP only).

Then the HTTP clients, against ezipc's app on one worker: sequential calls per second
through ezipc's own ``http://`` client (h11 under the session) and through ``httpx``
(``AsyncClient.post``, the answer parsed with ``json``), one connection each: the
measurement behind ezipc's choice of h11.

    python bench/web.py            # ~1 minute
    python bench/web.py --quick

Needs the test extra (uvicorn, fastapi-jsonrpc, websockets). The machine's cores are
shared by the servers and the client: compare the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EZIPC_APP = '''
from ezipc_adapters import Server

server = Server()
server.hook_request("add", lambda a, b: a + b)
server.hook_request("echo", lambda value: value)
app = server.asgi()
'''

FASTAPI_JSONRPC_APP = '''
from typing import Any

import fastapi_jsonrpc as jsonrpc

app = jsonrpc.API()
api = jsonrpc.Entrypoint("/rpc")


@api.method()
def add(a: int, b: int) -> int:
    return a + b


@api.method()
def echo(value: Any) -> Any:
    return value


app.bind_entrypoint(api)
'''

PATH = "/rpc"
CONNECTIONS = 32


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


class Uvicorn:
    """``uvicorn MODULE:app --workers N`` in a subprocess."""

    def __init__(self, folder: Path, module: str, workers: int) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "uvicorn", f"{module}:app", "--port", str(self.port),
                "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
        self.proc = subprocess.Popen(argv, cwd=folder, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"uvicorn {module} did not start") from None
                time.sleep(0.05)
        time.sleep(0.5 * workers)  # (every worker up)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def post(port: int, body: bytes) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (PATH.encode(), port, len(body), body)
    )


async def http_load(port: int, seconds: float) -> float:
    """Requests per second: CONNECTIONS connections, one request at a time each, for
    ``seconds``; alternately add and echo, every answer checked."""
    bodies = [
        json.dumps({"jsonrpc": "2.0", "method": "add", "params": {"a": 20, "b": 22}, "id": 1}).encode(),
        json.dumps({"jsonrpc": "2.0", "method": "echo", "params": {"value": "hello"}, "id": 2}).encode(),
    ]
    requests = [post(port, body) for body in bodies]
    expected = [42, "hello"]
    done = 0
    stop_at = time.monotonic() + seconds

    async def one_connection() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        while time.monotonic() < stop_at:
            writer.write(requests[n & 1])
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            answer = json.loads(await reader.readexactly(length))
            if answer.get("result") != expected[n & 1]:
                raise SystemExit(f"wrong answer: {answer}")
            n += 1
        done += n
        writer.close()

    started = time.monotonic()
    await asyncio.gather(*(one_connection() for _ in range(CONNECTIONS)))
    return done / (time.monotonic() - started)


async def ws_round_trips(port: int, seconds: float) -> float:
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}{PATH}") as ws:
        n = 0
        started = time.monotonic()
        stop_at = started + seconds
        while time.monotonic() < stop_at:
            message = {"jsonrpc": "2.0", "method": "add", "params": {"a": 20, "b": 22}, "id": n}
            await ws.send(json.dumps(message))
            if json.loads(await ws.recv())["result"] != 42:
                raise SystemExit("wrong answer")
            n += 1
        return n / (time.monotonic() - started)


async def client_calls(port: int, seconds: float, which: str) -> float:
    """Sequential ``add`` calls per second through one client: ezipc's or httpx's."""
    url = f"http://127.0.0.1:{port}{PATH}"
    n = 0
    if which == "ezipc":
        from ezipc_adapters.asyncio import connect

        async with connect(url) as remote:
            started = time.monotonic()
            while time.monotonic() < started + seconds:
                if await remote.request("add", {"a": 20, "b": n}) != 20 + n:
                    raise SystemExit("wrong answer")
                n += 1
            return n / (time.monotonic() - started)
    import httpx

    async with httpx.AsyncClient() as client:
        started = time.monotonic()
        while time.monotonic() < started + seconds:
            body = {"jsonrpc": "2.0", "method": "add", "params": {"a": 20, "b": n}, "id": n}
            answer = (await client.post(url, json=body)).json()
            if answer["result"] != 20 + n:
                raise SystemExit("wrong answer")
            n += 1
        return n / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s per measurement instead of 4")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else 4.0
    try:
        import uvloop

        uvloop.install()  # (the client's loop: as light as it can be)
    except ImportError:
        pass
    results: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "ezipc_app.py").write_text(EZIPC_APP)
        (folder / "fastapi_jsonrpc_app.py").write_text(FASTAPI_JSONRPC_APP)
        for workers in (1, 2):
            for name, module in (("ezipc", "ezipc_app"), ("fastapi-jsonrpc", "fastapi_jsonrpc_app")):
                server = Uvicorn(folder, module, workers)
                try:
                    asyncio.run(http_load(server.port, 0.5))  # warm up
                    results[name, f"http-{workers}"] = asyncio.run(http_load(server.port, seconds))
                    if workers == 1 and name == "ezipc":
                        results[name, "ws"] = asyncio.run(ws_round_trips(server.port, seconds))
                        for client in ("ezipc", "httpx"):
                            asyncio.run(client_calls(server.port, 0.3, client))  # warm up
                            rate = asyncio.run(client_calls(server.port, seconds, client))
                            results[client, "client"] = rate
                finally:
                    server.stop()
    print(f"uvicorn, {CONNECTIONS} keep-alive connections, {seconds:g} s each, {os.cpu_count()} cores "
          "shared by servers and client")
    print(f"{'':34} {'ezipc':>10} {'fastapi-jsonrpc':>16} {'ratio':>7}")
    for key, label in (("http-1", "HTTP requests/s, 1 worker"), ("http-2", "HTTP requests/s, 2 workers")):
        ours, theirs = results["ezipc", key], results["fastapi-jsonrpc", key]
        print(f"{label:34} {ours:10.0f} {theirs:16.0f} {ours / theirs:6.2f}x")
    print(f"{'WebSocket round trips/s (one)':34} {results['ezipc', 'ws']:10.0f} {'(HTTP only)':>16}")
    ours, theirs = results["ezipc", "client"], results["httpx", "client"]
    print(f"\n{'HTTP client, calls/s (sequential)':34} {'ezipc h11':>10} {'httpx':>16} {'ratio':>7}")
    print(f"{'  against ezipc, 1 worker':34} {ours:10.0f} {theirs:16.0f} {ours / theirs:6.2f}x")


if __name__ == "__main__":
    main()
