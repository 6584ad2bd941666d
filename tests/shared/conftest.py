"""The kit of the shared behaviour suite: each scenario is written once, against a small
synchronous facade, and runs against every server kind (the async adapter on asyncio and
on trio, the blocking adapter) with every client kind that makes sense (the async client
on asyncio and on trio, the blocking client, and a raw socket for exact wire checks).

* ``new_server(kind, ...)`` makes a ``Server`` of that kind; hooks are registered on it
  with the shared registry API. ``serving(kind, server)`` serves it in the background (an
  async server in a blocking portal of its backend, a blocking one with
  ``serve_in_thread``) and yields a :class:`Served`.
* ``connecting(kind, address, setup=..., **options)`` yields a :class:`Peer`: ``request``,
  ``submit`` (a ``concurrent.futures.Future``), ``notify``, ``batch``, ``close`` and
  ``stats`` on either the blocking ``Remote`` or an async ``Remote`` driven through a
  blocking portal.
* Handlers that must run on every server kind are written as ``async def`` with the
  helpers :func:`call`, :func:`tell` and :func:`wait_flag` (they work on an async
  ``Remote``, and on a blocking one inside a blocking handler's own ``asyncio.run``).
* :class:`RawPeer` (``raw_connect``, ``raw_server``) writes and reads exact bytes.
"""

from __future__ import annotations

import inspect
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

import ezipc_adapters.asyncio as async_asyncio
import ezipc_adapters.blocking as blocking
import ezipc_adapters.trio as async_trio
from ezipc_adapters import Client as AsyncClient

from ..rawpeer import RawPeer, host_port, raw_connect, raw_server, wait_for  # noqa: F401  (re-exported)

SERVER_KINDS = ("asyncio", "trio", "blocking")
CLIENT_KINDS = ("asyncio", "trio", "blocking")
#: An async Server's ASGI app run by uvicorn (in this process), its clients on ws://: a
#: server kind for the scenarios that apply to a WebSocket (the others use raw TCP
#: peers, framings, Unix sockets, stdio, half-closed connections or the server's own
#: shutdown, which a WebSocket under uvicorn does not have). See tests/web for the rest.
WEB = "uvicorn"
WEB_SCENARIOS = frozenset((
    "test_params_binding", "test_error_mapping", "test_a_request_starts_after_the_notifications_before_it",
    "test_batch_with_mixed_results", "test_nested_calls_both_ways", "test_counters_after_a_fixed_exchange",
    "test_connect_and_disconnect_hooks_run_once_in_order", "test_clients_authenticate_with_the_right_token",
    "test_the_server_acts_on_a_cancellation", "test_a_handler_calling_a_vanished_peer_gets_connection_closed",
    "test_a_server_side_timeout_tells_the_client", "test_broadcasts_can_exclude_peers",
    "test_max_concurrency_makes_the_rest_wait_and_drops_nothing", "test_debug_puts_the_exceptions_repr_in_error_data",
    "test_a_result_json_cannot_hold_is_an_internal_error", "test_the_extended_fast_codec_encodes_them",
    "test_calls_back_at_any_depth_all_complete_with_every_slot_busy",
    "test_calls_back_over_another_connection_all_complete_with_every_slot_busy",
))


@pytest.fixture(params=(*SERVER_KINDS, WEB))
def server_kind(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The uvicorn server kind runs only the scenarios that apply to it."""
    kept, dropped = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        web = params is not None and params.params.get("server_kind") == WEB
        (dropped if web and item.originalname not in WEB_SCENARIOS else kept).append(item)  # type: ignore[attr-defined]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(params=CLIENT_KINDS)
def client_kind(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


# ---- servers ---------------------------------------------------------------------------


def new_server(kind: str, framing: str = "auto", **options: Any) -> Any:
    """A ``Server`` of ``kind`` ("asyncio", "trio", "blocking" or "uvicorn")."""
    if kind == "blocking":
        return blocking.Server(framing, **options)
    cls = async_trio.Server if kind == "trio" else async_asyncio.Server
    return cls(framing, **options)


class Served:
    """A server serving in the background, seen from the test's (plain) thread."""

    def __init__(self, kind: str, server: Any, addresses: list[str], portal: BlockingPortal | None,
                 future: Future[Any] | None, stop: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self.server = server
        self.addresses = addresses
        self.address = addresses[0]
        self._portal = portal
        self._future = future
        self._stop = stop or (lambda: server.shutdown())
        self._stopped = False

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call a plain function where the server lives (its event loop's thread)."""
        return fn(*args) if self._portal is None else self._portal.call(fn, *args)

    def remotes(self) -> list[Any]:
        return list(self.run(lambda: self.server.remotes))

    def one_remote(self, timeout: float = 5.0) -> Any:
        """The only connected peer (waiting for it to be registered)."""
        wait_for(lambda: len(self.remotes()) == 1, timeout)
        return self.remotes()[0]

    def stats(self, remote: Any) -> dict[str, int]:
        return self.run(lambda: remote.stats.as_dict())  # type: ignore[no-any-return]

    def broadcast(self, method: str, params: Any = None, **kwargs: Any) -> None:
        if self._portal is None:
            self.server.broadcast(method, params, **kwargs)
        else:
            self._portal.call(lambda: self.server.broadcast(method, params, **kwargs))

    def broadcast_request(self, method: str, params: Any = None, **kwargs: Any) -> dict[Any, Any]:
        if self._portal is None:
            return self.server.broadcast_request(method, params, **kwargs)  # type: ignore[no-any-return]
        return self._portal.call(  # type: ignore[no-any-return]
            lambda: self.server.broadcast_request(method, params, **kwargs)
        )

    def shutdown(self, timeout: float = 20.0) -> None:
        """Shut down gracefully and wait until the server has stopped."""
        if self._stopped:
            return
        self._stopped = True
        if self._portal is None:
            self.server.shutdown(timeout=timeout)
            assert self.server._stopped.is_set(), "the server did not stop"
        else:
            assert self._future is not None
            if not self._future.done():
                self._portal.call(self._stop)
            self._future.result(timeout)


@contextmanager
def serving(kind: str, server: Any, *addresses: str) -> Iterator[Served]:
    """Serve ``server`` (of ``kind``) in the background; shut it down gracefully after."""
    addresses = addresses or ("tcp://127.0.0.1:0",)
    if kind == WEB:
        with serving_uvicorn(server) as served:
            yield served
        return
    if kind == "blocking":
        served = Served(kind, server, server.serve_in_thread(*addresses), None, None)
        try:
            yield served
        finally:
            served.shutdown()
        return
    with start_blocking_portal(kind) as portal:
        future, bound = portal.start_task(server.serve, *addresses)
        served = Served(kind, server, bound, portal, future)
        try:
            yield served
        finally:
            served.shutdown()


@contextmanager
def serving_uvicorn(server: Any) -> Iterator[Served]:
    """Serve ``server.asgi()`` with uvicorn on a free port, in a thread of this process
    (so that the scenario's handlers and flags are shared): ``served.address`` is its
    ws:// URL. Stopping it is uvicorn's shutdown (which closes WebSockets with 1012)."""
    import socket

    import uvicorn

    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(server.asgi(), lifespan="off", log_config=None, log_level="warning",
                            timeout_graceful_shutdown=1)
    uv = uvicorn.Server(config)

    async def run(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: uv.serve(sockets=[sock]))
            while not uv.started:
                await anyio.sleep(0.01)
            task_status.started()

    def stop() -> None:
        uv.should_exit = True

    with start_blocking_portal("asyncio") as portal:
        future, _ = portal.start_task(run)
        served = Served(WEB, server, [f"ws://127.0.0.1:{sock.getsockname()[1]}/"], portal, future, stop)
        try:
            yield served
        finally:
            served.shutdown()
            sock.close()


# ---- clients ---------------------------------------------------------------------------


def new_client(kind: str, framing: str = "ndjson", **options: Any) -> Any:
    if kind == "blocking":
        return blocking.Client(framing, **options)
    return AsyncClient(framing, **options)


class Peer:
    """One client connection, the same calls whichever adapter is behind it."""

    def __init__(self, kind: str, remote: Any, portal: BlockingPortal | None = None) -> None:
        self.kind = kind
        self.remote = remote
        self._portal = portal

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args) if self._portal is None else self._portal.call(fn, *args)

    async def _request(self, method: str, params: Any, timeout: float | None) -> Any:
        return await self.remote.request(method, params, timeout=timeout)

    def request(self, method: str, params: Any = None, *, timeout: float | None = None) -> Any:
        if self._portal is None:
            return self.remote.request(method, params, timeout=timeout)
        return self._portal.call(self._request, method, params, timeout)

    def submit(self, method: str, params: Any = None, *, timeout: float | None = None) -> Future[Any]:
        """Send now; the answer comes in the future (as ``request`` would return/raise)."""
        if self._portal is None:
            return self.remote.submit(method, params, timeout=timeout)  # type: ignore[no-any-return]
        sent = threading.Event()

        async def go() -> Any:
            call = self.remote.request(method, params, timeout=timeout)  # sent here...
            sent.set()
            return await call  # ...answered later

        future = self._portal.start_task_soon(go)
        while not sent.wait(0.01):  # (an error before sending is in the future at once)
            if future.done():
                break
        return future

    def notify(self, method: str, params: Any = None) -> None:
        if self._portal is None:
            self.remote.notify(method, params)
        else:
            self._portal.call(self.remote.notify, method, params)

    def batch(self, requests: Iterable[tuple[str, Any]], *, notify: Iterable[tuple[str, Any]] = (),
              timeout: float | None = None) -> list[Any]:
        requests, notify = list(requests), list(notify)
        if self._portal is None:
            return self.remote.batch(requests, notify=notify, timeout=timeout)  # type: ignore[no-any-return]

        async def go() -> list[Any]:
            return await self.remote.batch(requests, notify=notify, timeout=timeout)  # type: ignore[no-any-return]

        return self._portal.call(go)  # type: ignore[no-any-return]

    def stats(self) -> dict[str, int]:
        return self.run(lambda: self.remote.stats.as_dict())  # type: ignore[no-any-return]

    @property
    def closed(self) -> bool:
        return bool(self.run(lambda: self.remote.closed))

    def close(self) -> None:
        if self._portal is None:
            self.remote.close()
        else:
            self._portal.call(self.remote.aclose)


@contextmanager
def connecting(kind: str, address: str, *, setup: Callable[[Any], Any] | None = None,
               framing: str = "ndjson", **options: Any) -> Iterator[Peer]:
    """Connect a client of ``kind`` (``setup(client)`` registers its hooks first)."""
    client = new_client(kind, framing, **options)
    if setup is not None:
        setup(client)
    if kind == "blocking":
        with client.connect(address) as remote:
            yield Peer(kind, remote)
        return
    with start_blocking_portal(kind) as portal, \
            portal.wrap_async_context_manager(client.connect(address)) as remote:
        yield Peer(kind, remote, portal)


@contextmanager
def connecting_subprocess(kind: str, argv: list[str], *, setup: Callable[[Any], Any] | None = None,
                          framing: str = "ndjson", terminate_timeout: float = 2.0,
                          **options: Any) -> Iterator[Peer]:
    """Start ``argv`` and talk to it over its stdin/stdout with a client of ``kind``."""
    client = new_client(kind, framing, **options)
    if setup is not None:
        setup(client)
    spawn = {"stderr": subprocess.DEVNULL, "terminate_timeout": terminate_timeout}
    if kind == "blocking":
        with client.connect_subprocess(argv, **spawn) as remote:
            yield Peer(kind, remote)
        return
    with start_blocking_portal(kind) as portal, \
            portal.wrap_async_context_manager(client.connect_subprocess(argv, **spawn)) as remote:
        yield Peer(kind, remote, portal)


# ---- handlers that run on every server kind -------------------------------------------


def hub_of(server: Any) -> dict[str, Any]:
    """Make ``server`` a hub: a peer that calls ``register`` becomes ``hub["B"]``, the
    other connection its handlers call (A's handler calls B)."""
    hub: dict[str, Any] = {}

    def register(remote: Any) -> bool:
        hub["B"] = remote
        return True

    server.hook_request("register", register)
    return hub


async def call(remote: Any, method: str, params: Any = None, **kwargs: Any) -> Any:
    """``remote.request`` from a handler, on an async or a blocking ``Remote``."""
    result = remote.request(method, params, **kwargs)
    return await result if inspect.isawaitable(result) else result


async def tell(remote: Any, method: str, params: Any = None) -> None:
    """``remote.notify`` from a handler, on an async or a blocking ``Remote``."""
    result = remote.notify(method, params)
    if inspect.isawaitable(result):
        await result


async def wait_flag(flag: threading.Event, timeout: float = 15.0) -> None:
    """Wait (cancellably, on any event loop) until the test sets ``flag``."""
    deadline = time.monotonic() + timeout
    while not flag.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never set the flag")
        await anyio.sleep(0.005)


def message(method: str, params: Any = None, id: Any = None, *, notification: bool = False) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    if not notification:
        msg["id"] = id
    return msg


def error_code(answer: dict[str, Any]) -> int:
    return answer["error"]["code"]  # type: ignore[no-any-return]
