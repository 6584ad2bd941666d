"""One action on a Unix socket as another user (for tests run as root):
``as_other_user.py UID ACTION PATH``; prints the outcome as one JSON line.

``request``: connect with a plain socket, send one JSON-RPC request (``whoami``), and
report the reply, or the end of the connection, or the error connecting.
``serve``: try to start an ezipc ``Server`` on PATH; report the error, or that it served.

Everything is imported before the user changes: the interpreter's files may be out of
that user's reach.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import anyio
import anyio._backends._asyncio  # loaded lazily by anyio.run
import anyio.abc
import anyio.to_thread

from ezipc_adapters import Server

uid, action, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def request() -> dict[str, object]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(path)
    except OSError as exc:
        return {"error": type(exc).__name__}
    with sock:
        try:
            sock.sendall(b'{"jsonrpc": "2.0", "method": "whoami", "id": 1}\n')
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    return {"closed": True, "received": data.decode()}
                data += chunk
        except OSError as exc:  # reset by the server
            return {"closed": True, "error": type(exc).__name__}
        return {"reply": json.loads(data)}


async def serve() -> dict[str, object]:
    server = Server()
    server.shutdown()  # asked before serving: serve() listens, then stops at once
    try:
        await server.serve(f"unix:{path}")
    except OSError as exc:
        return {"error": type(exc).__name__, "errno": exc.errno}
    return {"served": True}


if __name__ == "__main__":
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    outcome = request() if action == "request" else anyio.run(serve)
    print(json.dumps(outcome), flush=True)
