"""``ezipc serve TARGET --listen ws://HOST:PORT/PATH`` (or ``http://``, ``wss://``,
``https://``): the server's ASGI app run by uvicorn (the ``web`` extra), in this process,
one worker. WebSocket and HTTP POST are both served at that URL."""

from __future__ import annotations

import dataclasses
import signal
import ssl
from typing import Any

from .._address import Address, parse_address
from .._async_endpoints import Server
from .._serving import listen_sockets
from ..asgi import ASGIApp
from .common import EXIT_OK, SetupError, UsageError, log

__all__ = ["serve_web"]

#: uvicorn's own bound on a WebSocket message, over the server's max_message_size: a
#: message a little over the limit is answered -32007 as on every transport; a far
#: larger one is refused by uvicorn itself (close code 1009) before it is all buffered.
_WS_SLACK = 1024 * 1024


def serve_web(server: Any, addresses: list[str], tls: tuple[str | None, str | None, str | None]) -> int:
    """Serve ``server`` on one web address with uvicorn until SIGINT or SIGTERM."""
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise SetupError(
            "serving ws:// and http:// needs uvicorn, which is not installed: pip install 'ezipc[web]'"
        ) from None
    parsed = [parse_address(a) for a in addresses]
    address = parsed[0]
    if len({(a.host, a.port, a.path, a.secure) for a in parsed}) > 1:
        raise UsageError("one web address at a time (its WebSocket and HTTP forms may both be given)")
    if not isinstance(server, Server):
        raise UsageError(
            "ws:// and http:// serve an async Server (ezipc_adapters.Server), not a blocking one"
        )
    cert, key, ca = tls
    if address.secure != bool(cert):
        raise UsageError("wss:// and https:// need --tls-cert (and ws:// and http:// take none)")
    sockets = listen_sockets(Address("tcp", address.host, address.port), 0o600)
    port = sockets[0].getsockname()[1]
    path = address.path.partition("?")[0]
    config = uvicorn.Config(
        ASGIApp(server, path),
        log_config=None,
        log_level="warning",
        lifespan="off",
        ws_max_size=server.options.max_message_size + _WS_SLACK,
        timeout_graceful_shutdown=max(1, round(server.options.shutdown_timeout)),
        ssl_certfile=cert,
        ssl_keyfile=key,
        ssl_ca_certs=ca,
        ssl_cert_reqs=ssl.CERT_REQUIRED if ca else ssl.CERT_NONE,
    )
    ws = dataclasses.replace(address, port=port, kind="wss" if address.secure else "ws")
    http = dataclasses.replace(address, port=port, kind="https" if address.secure else "http")
    log.info("serving on %s (WebSocket; HTTP POST at %s), with uvicorn", ws, http)
    # uvicorn takes SIGINT and SIGTERM while it runs, and raises them again once it has
    # shut down: into these handlers, so that a graceful shutdown exits 0.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(config).run(sockets=sockets)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sock in sockets:
            sock.close()
    log.info("server stopped")
    return EXIT_OK


def _ignore(signum: int, frame: Any) -> None:
    pass
