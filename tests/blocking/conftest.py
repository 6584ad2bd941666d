"""Helpers for the blocking adapter's tests: a server in a background thread, and a raw
socket peer that writes and reads exact bytes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ezipc_adapters.blocking import Server

from ..rawpeer import RawPeer, host_port, raw_connect, raw_server, wait_for

__all__ = ["RawPeer", "host_port", "raw_connect", "raw_server", "serving", "wait_for"]


@contextmanager
def serving(server: Server, *addresses: str) -> Iterator[list[str]]:
    """Serve in a background thread; yield the bound addresses; shut down after."""
    bound = server.serve_in_thread(*(addresses or ("tcp://127.0.0.1:0",)))
    try:
        yield bound
    finally:
        server.shutdown(timeout=20)
        assert server._stopped.is_set(), "the server did not stop"
