"""Addresses: ``tcp://HOST:PORT`` (``tcp://[::1]:PORT``), ``unix:PATH`` (or
``unix:///abs/path``), ``stdio``, and the web ones, ``ws://HOST:PORT/PATH``,
``wss://...``, ``http://...`` and ``https://...``; shared by every adapter and the
command line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

__all__ = ["Address", "parse_address", "DEFAULT_ADDRESS", "WEB_KINDS"]

DEFAULT_ADDRESS = "tcp://127.0.0.1:9002"

#: The kinds of address that speak WebSocket or HTTP (``path`` is then the URL's path).
WEB_KINDS = frozenset(("ws", "wss", "http", "https"))
_DEFAULT_PORTS = {"ws": 80, "wss": 443, "http": 80, "https": 443}


@dataclass(frozen=True)
class Address:
    kind: Literal["tcp", "unix", "stdio", "ws", "wss", "http", "https"]
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "stdio":
            return "stdio"
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.kind == "tcp":
            return f"tcp://{host}:{self.port}"
        return f"{self.kind}://{host}:{self.port}{self.path}"

    @property
    def secure(self) -> bool:
        """TLS is part of the address (``wss://``, ``https://``)."""
        return self.kind in ("wss", "https")


def parse_address(address: str | Address) -> Address:
    """Parse an address string; raise ``ValueError`` with the accepted forms if it is bad."""
    if isinstance(address, Address):
        return address
    text = address.strip()
    if text == "stdio":
        return Address("stdio")
    if text.startswith("unix:"):
        path = text[5:]
        if path.startswith("//"):
            path = path[2:]  # unix:///abs/path -> /abs/path
        if not path:
            raise ValueError(f"{address!r}: a unix address needs a path, e.g. unix:/run/app.sock")
        return Address("unix", path=path)
    if text.startswith("tcp://"):
        rest = text[6:].rstrip("/")
        if rest.startswith("["):
            host, sep, port = rest[1:].partition("]:")
        else:
            host, sep, port = rest.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(
                f"{address!r}: expected tcp://HOST:PORT, e.g. tcp://127.0.0.1:9002 or tcp://[::1]:9002"
            )
        return Address("tcp", host=host, port=int(port))
    scheme = text.partition("://")[0].lower()
    if scheme in WEB_KINDS:
        return _parse_web(address, text, scheme)
    raise ValueError(
        f"{address!r}: expected tcp://HOST:PORT, unix:PATH, stdio, ws://HOST:PORT/PATH or http://HOST:PORT/PATH"
    )


def _parse_web(address: str, text: str, scheme: str) -> Address:
    """``ws://host:port/path`` and its kin: the port defaults to the scheme's (80 or 443),
    the path to ``/``; a query string is kept with the path."""
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError:
        port, url = -1, None
    if url is None or port == -1 or not url.hostname or url.fragment or url.username is not None:
        raise ValueError(
            f"{address!r}: expected {scheme}://HOST[:PORT][/PATH], e.g. {scheme}://127.0.0.1:8000/rpc"
        )
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    kind = scheme  # (one of WEB_KINDS, checked by the caller)
    return Address(kind, host=url.hostname, port=_DEFAULT_PORTS[scheme] if port is None else port, path=path)  # type: ignore[arg-type]
