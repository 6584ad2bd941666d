"""Addresses: ``tcp://HOST:PORT`` (``tcp://[::1]:PORT``), ``unix:PATH`` (or
``unix:///abs/path``) and ``stdio``; shared by every adapter and the command line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Address", "parse_address", "DEFAULT_ADDRESS"]

DEFAULT_ADDRESS = "tcp://127.0.0.1:9002"


@dataclass(frozen=True)
class Address:
    kind: Literal["tcp", "unix", "stdio"]
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "tcp":
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"tcp://{host}:{self.port}"
        if self.kind == "unix":
            return f"unix:{self.path}"
        return "stdio"


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
    raise ValueError(f"{address!r}: expected tcp://HOST:PORT, unix:PATH or stdio")
