"""The async adapter on asyncio (and uvloop): the same API as ``ezipc_adapters``, with
``Server.start()`` running an asyncio event loop (``start(..., use_uvloop=True)`` for uvloop).

Inside your own ``asyncio.run(...)`` use ``await server.serve(...)`` and ``connect(...)``.
"""

from __future__ import annotations

from . import _async
from ._async import Call, Client, Remote, connect, connect_subprocess
from ._errors import ConnectionClosed, LimitExceeded, RemoteError, RequestCancelled

__all__ = [
    "Server",
    "Client",
    "Remote",
    "Call",
    "connect",
    "connect_subprocess",
    "RemoteError",
    "ConnectionClosed",
    "LimitExceeded",
    "RequestCancelled",
]


class Server(_async.Server):
    """``ezipc_adapters.Server`` whose ``start()`` runs asyncio."""

    backend = "asyncio"
