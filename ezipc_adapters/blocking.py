"""ezipc with plain sockets and threads, no event loop.

```python
from ezipc_adapters.blocking import Server, connect

server = Server()

@server.hook_request("subtract")
def subtract(minuend, subtrahend):
    return minuend - subtrahend

server.start("tcp://127.0.0.1:9002")        # blocks until SIGINT/SIGTERM

with connect("tcp://127.0.0.1:9002") as remote:
    remote.request("subtract", [42, 23])     # -> 19
```

The same ``Server`` and ``Client`` hooks as the async adapter (one shared registry), the
same options, errors and limits. Every ``Remote`` is thread-safe: many threads may share
one, and each gets its own answer.

* ``connect(address, **options)`` / ``Client(...).connect(address, ssl=..., timeout=...,
  server_hostname=...)`` return a connected ``Remote``; use it in a ``with`` block (or
  call ``close()``). ``connect_subprocess(argv)`` talks to a child over its stdin/stdout.
* ``remote.request(method, params, timeout=...)`` blocks for the result (or raises
  ``RemoteError``, ``TimeoutError``, ``ConnectionClosed``, ``LimitExceeded``);
  ``remote.submit(...)`` returns a ``concurrent.futures.Future`` (``callback=`` runs in a
  worker thread); ``remote.notify(...)``; ``remote.batch([(method, params), ...])``.
* Handlers (sync or ``async def``, the latter run with ``asyncio.run``) run in threads,
  never blocking the reading of their connection: requests and answers keep flowing, so
  a handler may call back into its caller (nested calls), at any depth.
* Callbacks added with ``future.add_done_callback`` run on the thread that completes the
  future (often a connection's reading thread): keep them short, never wait in them.
"""

from ezipc_proto import ErrorCode

from ._address import DEFAULT_ADDRESS, Address, parse_address
from ._blocking import Remote
from ._blocking_endpoints import Client, Server, connect, connect_subprocess
from ._errors import ConnectionClosed, InvalidResponse, LimitExceeded, RemoteError, RequestCancelled
from ._options import Options, Stats
from ._peer import PeerCredentials
from ._serving import ConnectError, ConnectTimeout

__all__ = [
    "Server",
    "Client",
    "Remote",
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
