"""ezipc_adapters: ezipc_proto driven over real transports.

The top level is the async adapter (anyio: asyncio, uvloop and trio run the same code);
``ezipc_adapters.asyncio`` and ``ezipc_adapters.trio`` are its two entry points, and
``ezipc_adapters.blocking`` is the same API on plain sockets and threads.
"""

from ezipc_proto import ErrorCode

from ._address import DEFAULT_ADDRESS, Address, parse_address
from ._async import BatchCall, Call, Remote, Sent
from ._async_endpoints import Client, Server, connect, connect_subprocess
from ._errors import ConnectionClosed, InvalidResponse, LimitExceeded, RemoteError, RequestCancelled
from ._options import Options, Stats
from ._peer import PeerCredentials
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
    "ErrorCode",
    "Options",
    "Stats",
    "PeerCredentials",
    "Address",
    "parse_address",
    "DEFAULT_ADDRESS",
]
