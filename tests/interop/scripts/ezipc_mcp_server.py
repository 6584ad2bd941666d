"""A small MCP server written with ezipc: ``Server`` over ``stdio``, NDJSON framing,
MCP's cancellation profile (``notifications/cancelled`` with ``requestId``).

Run by tests/interop/test_mcp.py through the official MCP SDK's client
(``mcp.client.stdio.stdio_client`` + ``ClientSession``). Tools: ``add``, ``slow``
(sleeps until cancelled), ``stats`` (what ``slow`` saw) and ``roots`` (asks the client
for its roots: a server->client ``roots/list`` request).
"""

from __future__ import annotations

import json
from typing import Any

import anyio

import ezipc_proto
from ezipc_adapters import RemoteError, Server

PROTOCOL_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
INVALID_PARAMS = -32602

server = Server(framing="ndjson", cancellation="mcp")
seen = {"started": 0, "cancelled": 0, "finished": 0}

TOOLS = [
    {
        "name": "add",
        "description": "Add two integers.",
        "inputSchema": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
    {
        "name": "slow",
        "description": "Sleep for `seconds` (cancel it).",
        "inputSchema": {
            "type": "object",
            "properties": {"seconds": {"type": "number"}},
            "required": ["seconds"],
        },
    },
    {
        "name": "stats",
        "description": "How many `slow` calls started, were cancelled, finished.",
        "inputSchema": {"type": "object", "properties": {}},
    },
    {
        "name": "roots",
        "description": "The client's roots (asked with roots/list).",
        "inputSchema": {"type": "object", "properties": {}},
    },
]


def text_result(value: Any) -> dict[str, Any]:
    text = value if isinstance(value, str) else json.dumps(value)
    return {"content": [{"type": "text", "text": text}], "isError": False}


@server.hook_request("initialize")
def initialize(
    protocolVersion: str, capabilities: dict[str, Any], clientInfo: dict[str, Any], **_: Any
) -> Any:
    version = protocolVersion if protocolVersion in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[-1]
    return {
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": False}},
        "serverInfo": {"name": "ezipc-mcp-server", "version": ezipc_proto.__version__},
        "instructions": f"hello {clientInfo.get('name', '?')}",
    }


@server.hook_notif("notifications/initialized")
def initialized(**_: Any) -> None:
    pass


@server.hook_request("ping")
def ping(**_: Any) -> dict[str, Any]:
    return {}


@server.hook_request("tools/list")
def tools_list(cursor: str | None = None, **_: Any) -> dict[str, Any]:
    return {"tools": TOOLS}


@server.hook_request("tools/call")
async def tools_call(name: str, arguments: dict[str, Any] | None = None, remote: Any = None, **_: Any) -> Any:
    # ``remote`` comes after the bound params: with ``**_`` in the signature, a ``remote``
    # declared first is also handed the first bound param (Handler.bind, _registry.py).
    args = arguments or {}
    if name == "add":
        return text_result(str(args["a"] + args["b"]))
    if name == "slow":
        seen["started"] += 1
        try:
            await anyio.sleep(float(args["seconds"]))
        except anyio.get_cancelled_exc_class():
            seen["cancelled"] += 1
            raise
        seen["finished"] += 1
        return text_result("finished")
    if name == "stats":
        return text_result(seen)
    if name == "roots":
        answer = await remote.request("roots/list", timeout=10)
        return text_result([root["uri"] for root in answer["roots"]])
    raise RemoteError(INVALID_PARAMS, f"Unknown tool: {name}")


if __name__ == "__main__":
    server.start("stdio")
