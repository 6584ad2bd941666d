"""The async adapter on asyncio (and uvloop): the same API as ``ezipc_adapters``, with
``Server.start()`` running an asyncio event loop (``start(..., use_uvloop=True)`` for uvloop).

Inside your own ``asyncio.run(...)`` use ``await server.serve(...)`` and ``connect(...)``.
"""

from __future__ import annotations

from . import _async_endpoints
from ._async import BatchCall, Call, Remote, Sent
from ._async_endpoints import Client, connect, connect_subprocess
from ._errors import ConnectionClosed, InvalidResponse, LimitExceeded, RemoteError, RequestCancelled
from ._serving import ConnectError, ConnectTimeout

__all__ = [
    "Server",
    "Client",
    "Remote",
    "Call",
    "Sent",
    "BatchCall",
    "connect",
    "connect_subprocess",
    "RemoteError",
    "InvalidResponse",
    "ConnectionClosed",
    "ConnectError",
    "ConnectTimeout",
    "LimitExceeded",
    "RequestCancelled",
]


class Server(_async_endpoints.Server):
    """``ezipc_adapters.Server`` whose ``start()`` runs asyncio."""

    backend = "asyncio"
