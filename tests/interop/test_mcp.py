"""ezipc and the official MCP Python SDK (``mcp``), over stdio with NDJSON framing and
MCP's cancellation (``notifications/cancelled`` with ``requestId``), both ways round:

- ezipc's ``Client`` drives an MCP server written with the SDK (scripts/mcp_sdk_server.py);
- the SDK's client (``stdio_client`` + ``ClientSession``) drives an MCP server written
  with ezipc's ``Server`` (scripts/ezipc_mcp_server.py).

Each direction also has a server->client request (``roots/list``) and a slow tool call
cancelled by the caller's timeout, after which the session goes on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from ezipc_adapters import Client

from .conftest import SCRIPTS, TEST_TIMEOUT, python_env, require

require("mcp")

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(TEST_TIMEOUT)]

ROOT = {"uri": "file:///tmp/ezipc-interop-project", "name": "project"}


def tool_text(result: dict[str, Any]) -> str:
    assert result["isError"] is False, result
    [content] = result["content"]
    assert content["type"] == "text"
    return str(content["text"])


async def test_ezipc_client_against_mcp_sdk_server(tmp_path: Path) -> None:
    client = Client(framing="ndjson", cancellation="mcp")
    roots_asked = 0

    @client.hook_request("roots/list")
    def list_roots(**_: Any) -> dict[str, Any]:
        nonlocal roots_asked
        roots_asked += 1
        return {"roots": [ROOT]}

    @client.hook_notif("notifications/message")
    def log_message(**_: Any) -> None:
        pass

    argv = [sys.executable, str(SCRIPTS / "mcp_sdk_server.py")]
    with anyio.fail_after(TEST_TIMEOUT - 10), (tmp_path / "server.stderr").open("wb") as stderr:
        async with client.connect_subprocess(argv, stderr=stderr) as remote:
            init = await remote.request(
                "initialize",
                {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {"roots": {"listChanged": False}},
                    "clientInfo": {"name": "ezipc-interop-test", "version": "0.1.0"},
                },
                timeout=20,
            )
            assert init["protocolVersion"] == "2025-06-18"
            assert init["serverInfo"]["name"] == "ezipc-interop-sdk-server"
            assert "tools" in init["capabilities"]
            await remote.notify("notifications/initialized")

            tools = await remote.request("tools/list", timeout=10)
            by_name = {tool["name"]: tool for tool in tools["tools"]}
            assert {"add", "slow", "stats", "roots"} <= set(by_name)
            assert by_name["add"]["inputSchema"]["required"] == ["a", "b"]

            added = await remote.request(
                "tools/call", {"name": "add", "arguments": {"a": 2, "b": 3}}, timeout=10
            )
            assert tool_text(added) == "5"
            assert added.get("structuredContent", {"result": 5}) == {"result": 5}

            # The tool asks us for our roots: a server->client request, answered by a hook.
            roots = await remote.request("tools/call", {"name": "roots", "arguments": {}}, timeout=10)
            assert ROOT["uri"] in tool_text(roots)
            assert roots_asked == 1

            # A slow tool call abandoned by ezipc's timeout: ezipc writes
            # notifications/cancelled {"requestId": id}; the SDK cancels the tool.
            with pytest.raises(TimeoutError):
                await remote.request(
                    "tools/call", {"name": "slow", "arguments": {"seconds": 30}}, timeout=0.5
                )
            with anyio.fail_after(10):
                while True:
                    stats = await remote.request("tools/call", {"name": "stats", "arguments": {}}, timeout=10)
                    seen = json.loads(tool_text(stats))
                    if seen["cancelled"]:
                        break
                    await anyio.sleep(0.02)
            assert seen == {"started": 1, "cancelled": 1, "finished": 0}

            # The session goes on.
            assert await remote.request("ping", timeout=10) == {}
            again = await remote.request(
                "tools/call", {"name": "add", "arguments": {"a": 40, "b": 2}}, timeout=10
            )
            assert tool_text(again) == "42"
            # MCP: a cancelled request is not answered at all (no late answer to drop).
            assert remote.stats.late_responses == 0
            assert remote.stats.errors == 0
        assert remote.closed


async def test_mcp_sdk_client_against_ezipc_server() -> None:
    # The SDK is written on anyio: its client runs on asyncio and on trio alike.
    import mcp_types as types
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client
    from mcp.shared.exceptions import MCPError

    roots_asked = 0

    async def list_roots(_context: Any) -> types.ListRootsResult:
        nonlocal roots_asked
        roots_asked += 1
        return types.ListRootsResult(roots=[types.Root(uri=ROOT["uri"], name=ROOT["name"])])

    params = StdioServerParameters(
        command=sys.executable, args=[str(SCRIPTS / "ezipc_mcp_server.py")], env=python_env()
    )
    with anyio.fail_after(TEST_TIMEOUT - 10):
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, list_roots_callback=list_roots) as session:
                init = await session.initialize()
                assert init.server_info.name == "ezipc-mcp-server"
                assert init.protocol_version in ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
                assert init.capabilities.tools is not None
                assert init.instructions is not None and init.instructions.startswith("hello ")

                tools = await session.list_tools()
                assert [tool.name for tool in tools.tools] == ["add", "slow", "stats", "roots"]

                added = await session.call_tool("add", {"a": 2, "b": 3})
                assert added.is_error is False
                assert [c.text for c in added.content] == ["5"]

                # ezipc's server calls the SDK client back (roots/list) inside tools/call.
                roots = await session.call_tool("roots", {})
                assert json.loads(roots.content[0].text) == [ROOT["uri"]]
                assert roots_asked == 1

                # The SDK's timeout sends notifications/cancelled: ezipc (cancellation
                # "mcp") cancels the handler and, as MCP asks, sends no answer for it.
                with pytest.raises(MCPError):
                    await session.call_tool("slow", {"seconds": 30}, read_timeout_seconds=0.5)
                with anyio.fail_after(10):
                    while True:
                        stats = json.loads((await session.call_tool("stats", {})).content[0].text)
                        if stats["cancelled"]:
                            break
                        await anyio.sleep(0.02)
                assert stats == {"started": 1, "cancelled": 1, "finished": 0}

                await session.send_ping()
                again = await session.call_tool("add", {"a": 40, "b": 2})
                assert [c.text for c in again.content] == ["42"]
