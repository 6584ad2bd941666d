"""ezipc_adapters: ezipc_proto driven over real transports.

The top level is the async adapter (anyio: asyncio, uvloop and trio run the same code);
``ezipc_adapters.asyncio`` and ``ezipc_adapters.trio`` are its two entry points, and
``ezipc_adapters.blocking`` is the same API on plain sockets and threads.
"""

import importlib
from typing import TYPE_CHECKING, Any

from ezipc_proto import ErrorCode

from ._address import DEFAULT_ADDRESS, Address, parse_address
from ._errors import ConnectionClosed, InvalidResponse, LimitExceeded, RemoteError, RequestCancelled
from ._options import Options, Stats
from ._peer import PeerCredentials
from ._serving import ConnectError, ConnectTimeout

if TYPE_CHECKING:
    from ._async import BatchCall, Call, Remote, Sent
    from ._async_endpoints import Client, Server, connect, connect_subprocess

# The async adapter (anyio, asyncio) loads on first use of one of its names, so that a
# program that uses only ezipc_adapters.blocking does not load it (~4 MiB less).
_ASYNC = {
    **dict.fromkeys(("BatchCall", "Call", "Remote", "Sent"), "._async"),
    **dict.fromkeys(("Client", "Server", "connect", "connect_subprocess"), "._async_endpoints"),
}


def __getattr__(name: str) -> Any:
    module = _ASYNC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


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
    "ErrorCode",
    "Options",
    "Stats",
    "PeerCredentials",
    "Address",
    "parse_address",
    "DEFAULT_ADDRESS",
]
