"""The async adapter on trio: the same API as ``ezipc_adapters``, with ``Server.start()``
running trio. It needs trio: ``pip install 'ezipc[trio]'`` (importing this module without
trio raises ``ModuleNotFoundError`` saying so).

Inside your own ``trio.run(...)`` use ``await server.serve(...)`` and ``connect(...)``.
"""

from __future__ import annotations

try:  # fail here, with the fix, rather than at the first call into trio
    import trio  # noqa: F401
except ModuleNotFoundError as exc:
    if exc.name != "trio":  # trio is there but broken: that error says more
        raise
    raise ModuleNotFoundError(
        "ezipc_adapters.trio needs trio, which is not installed: pip install 'ezipc[trio]'", name="trio"
    ) from None

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
    """``ezipc_adapters.Server`` whose ``start()`` runs trio."""

    backend = "trio"
