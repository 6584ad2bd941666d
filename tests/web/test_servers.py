"""The same app under other ASGI servers and set-ups (uvicorn with 2 workers, hypercorn on
trio, mounted in Starlette), the web addresses, and what the CLI says when it cannot
serve one."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from ezipc_adapters import Address, Server, connect, parse_address

from ..cli.conftest import cli
from .conftest import free_port, python_module, running
from .test_peers import rpc

pytestmark = pytest.mark.timeout(60)


def test_uvicorn_with_two_workers(app_dir: Path) -> None:
    """`uvicorn webapp:app --workers 2`, as docs/web.md shows: every request is answered,
    by whichever process took its connection."""
    port = free_port()
    argv = python_module("uvicorn", "webapp:app", "--port", str(port), "--workers", "2", "--log-level", "warning")
    with running(argv, port, app_dir) as url:
        pids = set()
        for n in range(20):
            with httpx.Client(timeout=5) as http:  # a new connection each time
                assert http.post(url, json=rpc("add", [n, 1], n)).json()["result"] == n + 1
                pids.add(http.post(url, json=rpc("pid", id=0)).json()["result"])
        assert 1 <= len(pids) <= 2
        with ws_connect(url.replace("http", "ws"), open_timeout=5) as ws:
            ws.send(json.dumps(rpc("add", [1, 2], 1)))
            assert json.loads(ws.recv(5))["result"] == 3


def test_hypercorn_on_trio(app_dir: Path) -> None:
    """The app on trio: hypercorn's trio worker, a WebSocket with a call back, and HTTP."""
    port = free_port()
    argv = python_module("hypercorn", "webapp:app", "--bind", f"127.0.0.1:{port}", "--worker-class", "trio")
    with running(argv, port, app_dir) as url:
        with httpx.Client(timeout=5) as http:
            assert http.post(url, json=rpc("add", [2, 2], 1)).json()["result"] == 4
        with ws_connect(url.replace("http", "ws"), open_timeout=5) as ws:
            ws.send(json.dumps(rpc("ask_client", id=1)))
            question = json.loads(ws.recv(5))
            ws.send(json.dumps({"jsonrpc": "2.0", "id": question["id"], "result": "Ada"}))
            assert json.loads(ws.recv(5))["result"] == "Ada"

        async def ezipc_client() -> None:
            async with connect(url.replace("http", "ws") + "/") as remote:
                assert await remote.request("add", [5, 5]) == 10

        anyio.run(ezipc_client, backend="trio")


def test_mounted_in_starlette_under_a_path() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    server = Server()
    server.hook_request("add", lambda a, b: a + b)
    app = Starlette(routes=[Mount("/rpc", app=server.asgi())])
    with TestClient(app) as client:
        assert client.post("/rpc/", json=rpc("add", [1, 2], 1)).json()["result"] == 3
        with client.websocket_connect("/rpc/") as ws:  # (a Mount serves the paths under it)
            ws.send_text(json.dumps(rpc("add", [2, 3], 1)))
            assert json.loads(ws.receive_text())["result"] == 5


def test_web_addresses() -> None:
    for text, expected in [
        ("ws://127.0.0.1:8000/rpc", Address("ws", "127.0.0.1", 8000, "/rpc")),
        ("wss://example.com/rpc?v=2", Address("wss", "example.com", 443, "/rpc?v=2")),
        ("http://[::1]:8080", Address("http", "::1", 8080, "/")),
        ("https://example.com", Address("https", "example.com", 443, "/")),
    ]:
        assert parse_address(text) == expected
        assert parse_address(str(expected)) == expected  # str() round-trips
    assert str(parse_address("http://[::1]:8080/x")) == "http://[::1]:8080/x"
    assert parse_address("tcp://127.0.0.1:9002") == Address("tcp", "127.0.0.1", 9002)  # unchanged
    for bad in ("ws://", "ws://host:notaport/", "http://user@host/", "ws://host:99999/"):
        with pytest.raises(ValueError, match="expected"):
            parse_address(bad)


def test_serve_refuses_a_web_address() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="ASGI server"):
            await Server().serve("ws://127.0.0.1:0/rpc")

    anyio.run(main)


def test_cli_errors(app_dir: Path, tmp_path: Path) -> None:
    mixed = cli("serve", str(app_dir / "webapp.py:server"), "--listen", "ws://127.0.0.1:0/", "--listen",
                "tcp://127.0.0.1:0")
    assert mixed.returncode == 2 and "alone" in mixed.stderr
    blocking_app = tmp_path / "blocking_app.py"
    blocking_app.write_text("from ezipc_adapters.blocking import Server\nserver = Server()\n")
    refused = cli("serve", f"{blocking_app}:server", "--listen", "ws://127.0.0.1:0/")
    assert refused.returncode == 2 and "async Server" in refused.stderr


def test_cli_without_uvicorn(app_dir: Path) -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["uvicorn"] = None
        from ezipc_adapters._cli import main
        sys.exit(main(["serve", sys.argv[1], "--listen", "ws://127.0.0.1:0/rpc"]))
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(app_dir / "webapp.py:server")], capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "ezipc serve: error: serving ws:// and http:// needs uvicorn, which is not installed: "
        "pip install 'ezipc[web]'"
    )
