"""Helpers for the blocking adapter's tests: a server in a background thread, a raw
socket peer that writes and reads exact bytes, and a Ctrl-C that another thread takes."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from ezipc_adapters.blocking import Server

from ..rawpeer import RawPeer, host_port, raw_connect, raw_server, wait_for

__all__ = [
    "RawPeer",
    "host_port",
    "interrupted_elsewhere",
    "raw_connect",
    "raw_server",
    "serving",
    "sigint_raises",
    "wait_for",
]


@contextmanager
def serving(server: Server, *addresses: str) -> Iterator[list[str]]:
    """Serve in a background thread; yield the bound addresses; shut down after."""
    bound = server.serve_in_thread(*(addresses or ("tcp://127.0.0.1:0",)))
    try:
        yield bound
    finally:
        server.shutdown(timeout=20)
        assert server._stopped.is_set(), "the server did not stop"


@contextmanager
def sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in the block, as in a terminal, though the suite
    may run with SIGINT ignored (a background job of a non-interactive shell inherits it
    ignored, and Python then leaves it so)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def interrupted_elsewhere(rescue: Callable[[], object]) -> Iterator[None]:
    """The block must raise KeyboardInterrupt within 5 s, for a SIGINT that a thread other
    than the main one takes 0.3 s in: the kernel may give a process's signal to any of
    its threads (here the timer's own), and Python runs the handler on the main thread
    only, once it runs again. ``rescue`` is called at 10 s, to end a wait that would never
    notice (its KeyboardInterrupt then comes late, and the time check fails)."""
    interrupt = threading.Timer(0.3, lambda: signal.pthread_kill(threading.get_ident(), signal.SIGINT))
    late = threading.Timer(10, rescue)
    start = time.monotonic()
    interrupt.start()
    late.start()
    try:
        with sigint_raises(), pytest.raises(KeyboardInterrupt):
            yield
    finally:
        late.cancel()
        interrupt.cancel()
    assert time.monotonic() - start < 5
