"""``Server.start()`` in its own process: ``unix_server.py PATH BACKEND [SHUTDOWN_TIMEOUT]``.

BACKEND is ``asyncio``, ``uvloop`` or ``trio``; PATH may be ``default`` to listen on the
default address (``tcp://127.0.0.1:9002``). Logs to stderr at INFO (logger "ezipc").
"""

from __future__ import annotations

import logging
import os
import sys

import anyio

path, backend = sys.argv[1], sys.argv[2]
shutdown_timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")

if backend == "trio":
    import ezipc_adapters.trio as adapter
else:
    import ezipc_adapters.asyncio as adapter  # type: ignore[no-redef]

Remote = adapter.Remote
server = adapter.Server(shutdown_timeout=shutdown_timeout)


@server.method
def info() -> dict[str, object]:
    import asyncio

    try:
        loop = type(asyncio.get_running_loop()).__module__
    except RuntimeError:  # not asyncio
        loop = "trio" if "trio" in sys.modules else "?"
    return {"pid": os.getpid(), "loop": loop}


@server.method
async def slow(remote: Remote, seconds: float) -> str:
    await remote.notify("started")
    await anyio.sleep(seconds)
    return "done"


if __name__ == "__main__":
    if path == "default":
        server.start()
    elif backend == "uvloop":
        server.start(f"unix:{path}", use_uvloop=True)
    else:
        server.start(f"unix:{path}")
