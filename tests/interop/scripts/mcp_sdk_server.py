"""An MCP server written with the official MCP Python SDK (``mcp``), over stdio.

Run by tests/interop/test_mcp.py, which talks to it with ezipc. Tools:
``add`` (a result), ``slow`` (sleeps until cancelled; counts cancellations),
``stats`` (what ``slow`` saw), ``roots`` (asks the client for its roots: a
server->client request).
"""

from __future__ import annotations

import warnings

import anyio

try:  # mcp 2.x
    from mcp.server.mcpserver import Context
    from mcp.server.mcpserver import MCPServer as FastMCP
except ImportError:  # mcp 1.x
    from mcp.server.fastmcp import Context, FastMCP

warnings.simplefilter("ignore")  # deprecation notes must not reach the client (stderr is fine, but quiet)

server = FastMCP("ezipc-interop-sdk-server")
seen = {"started": 0, "cancelled": 0, "finished": 0}


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep for ``seconds`` (the tests cancel it long before)."""
    seen["started"] += 1
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        seen["cancelled"] += 1
        raise
    seen["finished"] += 1
    return "finished"


@server.tool()
def stats() -> dict[str, int]:
    """How many ``slow`` calls started, were cancelled, finished."""
    return dict(seen)


@server.tool()
async def roots(ctx: Context) -> list[str]:
    """The client's roots, asked for with a server->client ``roots/list`` request."""
    result = await ctx.session.list_roots()
    return [str(root.uri) for root in result.roots]


if __name__ == "__main__":
    server.run()  # stdio, newline-delimited JSON
