"""ezipc <-> vscode-jsonrpc (TypeScript's JSON-RPC, as VS Code uses it) on node, over TCP
with LSP framing, in both directions: node as the client of an ezipc ``Server``, and node
as the server an ezipc ``Client`` calls. Each side also calls the other back, and each
side cancels a request of its own the way it is meant to (vscode-jsonrpc with a
``CancellationTokenSource``, ezipc with a timeout), both with ``$/cancelRequest``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from ezipc_adapters import Client, RemoteError, Server

from .conftest import NODE_SCRIPTS, TEST_TIMEOUT, port_of, serving, vscode_jsonrpc_version

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(TEST_TIMEOUT)]


def test_pinned_version(node_modules: Path) -> None:
    assert vscode_jsonrpc_version(node_modules) == "10.0.0"


def lsp_style_server(framing: str) -> tuple[Server, dict[str, Any]]:
    server = Server(framing=framing)
    state: dict[str, Any] = {"updates": [], "started": 0, "cancelled": 0, "finished": 0}

    @server.hook_request("subtract")
    def subtract(minuend: int, subtrahend: int) -> int:
        return minuend - subtrahend

    @server.hook_notif("update")
    def update(value: int) -> None:
        state["updates"].append(value)

    @server.hook_request("updates")
    def updates() -> list[int]:
        return list(state["updates"])

    @server.hook_request("ask_client")
    async def ask_client(question: str, remote: Any) -> dict[str, Any]:
        await remote.notify("server/progress", {"step": "asking"})
        answer = await remote.request("client/confirm", {"question": question}, timeout=5)
        return {"question": question, "clientSaid": answer}

    @server.hook_request("fail")
    def fail() -> None:
        raise RemoteError(4001, "custom failure", {"why": "test"})

    @server.hook_request("slow")
    async def slow(seconds: float) -> str:
        state["started"] += 1
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            state["cancelled"] += 1
            raise
        state["finished"] += 1
        return "finished"

    @server.hook_request("slow_status")
    def slow_status() -> dict[str, int]:
        return {k: state[k] for k in ("started", "cancelled", "finished")}

    return server, state


@pytest.mark.parametrize("framing", ["content-length", "auto"])  # auto: detected from node's first bytes
async def test_vscode_jsonrpc_client_against_ezipc_server(node_env: dict[str, str], framing: str) -> None:
    server, state = lsp_style_server(framing)
    with anyio.fail_after(TEST_TIMEOUT - 10):
        async with serving(server, "tcp://127.0.0.1:0") as bound:
            proc = await anyio.run_process(
                ["node", str(NODE_SCRIPTS / "client.js"), str(port_of(bound[0]))],
                env=node_env,
                check=False,
            )
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)

    assert out["subtractPositional"] == 19  # params by position
    assert out["subtractNamed"] == 19  # params by name
    assert out["updates"] == [1, 2]  # notifications, in order, before the request that followed
    # A server->client request answered by vscode-jsonrpc, and a server->client notification.
    assert out["askClient"] == {"question": "ready?", "clientSaid": {"confirmed": True, "question": "ready?"}}
    assert out["confirmRequests"] == [{"question": "ready?"}]
    assert out["progress"] == [{"step": "asking"}]
    # Errors as vscode-jsonrpc sees them.
    assert out["fail"] == {"code": 4001, "message": "custom failure", "data": {"why": "test"}}
    assert out["missing"]["code"] == -32601
    assert out["badParams"]["code"] == -32602
    # Cancellation: $/cancelRequest from the token source cancelled the ezipc handler,
    # which answered -32800 (RequestCancelled); the connection carried on.
    assert out["cancelled"]["code"] == -32800, out["cancelled"]
    assert out["cancelMs"] < 5000
    assert out["slowStatus"] == {"started": 1, "cancelled": 1, "finished": 0}
    assert state["cancelled"] == 1
    assert out["afterCancel"] == 2


async def test_ezipc_client_against_vscode_jsonrpc_server(node_env: dict[str, str]) -> None:
    client = Client(framing="content-length")
    asked_for: list[str] = []
    events: list[dict[str, Any]] = []

    @client.hook_request("client/info")
    def info(asked: str) -> dict[str, Any]:
        asked_for.append(asked)
        return {"from": "ezipc", "asked": asked}

    @client.hook_notif("server/event")
    def event(**params: Any) -> None:
        events.append(params)

    with anyio.fail_after(TEST_TIMEOUT - 10):
        async with await anyio.open_process(
            ["node", str(NODE_SCRIPTS / "server.js")],
            env=node_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as node:
            assert node.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await node.stdout.receive()
                assert chunk, "node server.js ended before printing its port"
                line += chunk
            port = json.loads(line)["port"]

            async with client.connect(f"tcp://127.0.0.1:{port}", timeout=10) as remote:
                assert await remote.request("add", {"a": 2, "b": 3}) == 5
                assert await remote.request("subtract", [42, 23]) == 19
                await remote.notify("note", {"text": "first"})
                await remote.notify("note", {"text": "second"})
                assert await remote.request("notes") == ["first", "second"]

                # node calls the ezipc client back in the middle of its handler.
                result = await remote.request("call_back", {"what": "version"}, timeout=10)
                assert result == {"clientSaid": {"from": "ezipc", "asked": "version"}}
                assert asked_for == ["version"]
                assert events == [{"phase": "before", "what": "version"}]

                with pytest.raises(RemoteError) as err:
                    await remote.request("fail")
                error = err.value
                assert (error.code, error.message, error.data) == (4002, "node says no", {"detail": 1})
                with pytest.raises(RemoteError) as err:
                    await remote.request("no_such_method")
                assert err.value.code == -32601

                # Cancellation by timeout: ezipc sends $/cancelRequest; vscode-jsonrpc's
                # token fires, its handler answers -32800, and ezipc drops that late answer.
                with pytest.raises(TimeoutError):
                    await remote.request("slow", {"ms": 30000}, timeout=0.3)
                # The same with Call.cancel().
                call = remote.request("slow", {"ms": 30000})
                await anyio.sleep(0.05)
                assert call.cancel()
                with anyio.fail_after(5):
                    while remote.stats.late_responses < 2:
                        await anyio.sleep(0.01)
                assert await remote.request("slow_status") == {"started": 2, "cancelled": 2, "finished": 0}
                assert await remote.request("add", {"a": 1, "b": 1}) == 2
                assert remote.stats.errors == 0  # nothing malformed, no unknown ids
            # Closing the connection ends the node server.
            assert await node.wait() == 0
