"""The async driver's endpoints: ``Client`` (and ``connect``, ``connect_subprocess``) and
``Server``, which open and accept connections and run each one's ``Remote``
(``_async.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import sniffio
from anyio.abc import SocketListener
from anyio.streams.stapled import StapledByteStream

from ezipc_proto import (
    AUTH_METHOD,
    AUTH_TIMEOUT,
)

from ._address import DEFAULT_ADDRESS, Address, parse_address
from ._async_io import (
    ProtocolWire,
    StreamWire,
    TLSListener,
    Wire,
    end_process,
    on_asyncio,
    open_wire,
    stdio_stream,
)
from ._options import Options
from ._peer import format_sockaddr
from ._registry import Hooks, log
from ._serving import ServerBase, announcing, listen_sockets

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # (anyio's dependency before 3.11)
if TYPE_CHECKING:
    from .asgi import ASGIApp

from ._async import Call, Remote

__all__ = ["Client", "Server", "connect", "connect_subprocess"]


# ---- clients -----------------------------------------------------------------------------


class _Connecting(AbstractAsyncContextManager["Remote"]):
    """What ``connect`` returns: ``async with`` it for the ``Remote``; any other use says so."""

    def __init__(self, open: Callable[[], AbstractAsyncContextManager[Remote]], what: str) -> None:
        self._open = open
        self._what = what
        self._cm: AbstractAsyncContextManager[Remote] | None = None

    async def __aenter__(self) -> Remote:
        self._cm = self._open()
        return await self._cm.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._cm is not None
        return await self._cm.__aexit__(exc_type, exc, tb)

    def _misused(self, how: str) -> TypeError:
        return TypeError(f"{self._what}(...) {how}: use `async with {self._what}(...) as remote:`")

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"{self._what}(...) gives an async context manager, not a Remote, so it has no "
            f"{name!r}: use `async with {self._what}(...) as remote:`"
        )

    def __await__(self) -> Generator[Any, None, Remote]:
        raise self._misused("is not awaited")

    def __enter__(self) -> Remote:
        raise self._misused("needs `async with`, not `with`")

    def __exit__(self, *exc: object) -> None:
        pass


class Client(Hooks):
    """A client whose hooks serve the requests and notifications its server sends.

    ``client.connect(address)`` is an async context manager yielding the ``Remote``.
    """

    def __init__(self, framing: str = "ndjson", **options: Any) -> None:
        super().__init__()
        self.options = Options.build({"framing": framing}, options)

    def connect(
        self,
        address: str | Address = DEFAULT_ADDRESS,
        *,
        timeout: float | None = None,
        server_hostname: str | None = None,
        **options: Any,
    ) -> AbstractAsyncContextManager[Remote]:
        """``async with client.connect(address) as remote:``: connect (within ``timeout``
        seconds; ``ConnectError`` if it cannot), yield the ``Remote``, close on exit."""
        opts = self.options.replace(**options)
        addr = parse_address(address)
        return _Connecting(lambda: self._connect(addr, opts, timeout, server_hostname), "connect")

    @asynccontextmanager
    async def _connect(
        self, addr: Address, opts: Options, timeout: float | None, server_hostname: str | None
    ) -> AsyncIterator[Remote]:
        wire = await open_wire(addr, opts, timeout=timeout, server_hostname=server_hostname)
        async with _running(Remote(wire, self, opts)) as remote:
            log.info("connected to %s", remote.remote_address)
            if opts.auth_token is not None and not wire.presents_token:
                await remote.request(AUTH_METHOD, {"token": opts.auth_token}, timeout=timeout or AUTH_TIMEOUT)
            yield remote

    def connect_subprocess(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stderr: Any = None,
        terminate_timeout: float = 2.0,
        **options: Any,
    ) -> AbstractAsyncContextManager[Remote]:
        """``async with client.connect_subprocess(argv) as remote:``: start ``argv`` and
        talk to it over its stdin/stdout. On exit: close its stdin, wait up to
        ``terminate_timeout`` seconds, then terminate, and kill if need be. ``stderr`` is
        inherited unless given (e.g. ``subprocess.DEVNULL``)."""
        opts = self.options.replace(**options)
        if opts.framing == "auto":
            opts = opts.replace(framing="ndjson")
        spawn = self._spawn(
            list(argv), opts, cwd=cwd, env=env, stderr=stderr, terminate_timeout=terminate_timeout
        )
        return _Connecting(lambda: spawn, "connect_subprocess")

    @asynccontextmanager
    async def _spawn(
        self,
        argv: list[str],
        opts: Options,
        *,
        cwd: str | None,
        env: dict[str, str] | None,
        stderr: Any,
        terminate_timeout: float,
    ) -> AsyncIterator[Remote]:
        import subprocess

        process = await anyio.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=cwd, env=env
        )
        assert process.stdin is not None and process.stdout is not None
        stream = StapledByteStream(process.stdin, process.stdout)
        try:
            async with _running(
                Remote(StreamWire(stream, f"subprocess:{process.pid}"), self, opts)
            ) as remote:
                remote.data["process"] = process
                yield remote
        finally:
            with anyio.CancelScope(shield=True):
                await end_process(process, terminate_timeout)


@asynccontextmanager
async def _running(remote: Remote) -> AsyncIterator[Remote]:
    """Run ``remote`` for the duration of the block. An exception from the block is
    re-raised as itself after the connection's tasks end, not wrapped in the task group's
    ExceptionGroup (cancellation goes through the task group, as it must)."""
    raised: BaseException | None = None
    async with anyio.create_task_group() as tg:
        await tg.start(remote._run)
        try:
            yield remote
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            raised = exc
        finally:
            await remote.aclose()
            log.info("connection to %s closed (%s)", remote.remote_address, remote._session.close_reason)
    if raised is not None:
        raise raised


def connect(
    address: str | Address = DEFAULT_ADDRESS,
    *,
    framing: str = "ndjson",
    timeout: float | None = None,
    server_hostname: str | None = None,
    **options: Any,
) -> AbstractAsyncContextManager[Remote]:
    """``async with connect(address) as remote:``, a ``Client`` with no hooks."""
    return Client(framing, **options).connect(address, timeout=timeout, server_hostname=server_hostname)


def connect_subprocess(
    argv: Sequence[str], *, framing: str = "ndjson", **options: Any
) -> AbstractAsyncContextManager[Remote]:
    """``async with connect_subprocess(["prog", "arg"]) as remote:``, with no hooks."""
    keys = ("cwd", "env", "stderr", "terminate_timeout")
    kwargs = {k: options.pop(k) for k in keys if k in options}
    return Client(framing, **options).connect_subprocess(argv, **kwargs)


# ---- the server ----------------------------------------------------------------------


class Server(ServerBase[Remote]):
    """Serves connections with the hooks registered on it.

    ``start(*addresses)`` blocks (SIGINT/SIGTERM shut down gracefully); ``await
    serve(*addresses)`` does the same inside your event loop. No address means
    ``tcp://127.0.0.1:9002``. ``framing="auto"`` (the default) answers each connection in
    the framing it speaks.
    """

    backend = "asyncio"

    def __init__(self, framing: str = "auto", **options: Any) -> None:
        super().__init__(framing, **options)
        self._stop: anyio.Event | None = None
        self._stop_requested = False

    def start(
        self,
        *addresses: str,
        backend: str | None = None,
        use_uvloop: bool = False,
        ready: Callable[[list[str]], Any] | None = None,
    ) -> None:
        """Serve until SIGINT or SIGTERM, then shut down gracefully. Blocks. Where it
        listens is logged (on stderr, unless the application set up logging).

        ``ready(addresses)``, if given, is called once listening, with the bound addresses
        (e.g. to print the port chosen for ``tcp://127.0.0.1:0``)."""
        backend = backend or self.backend
        try:
            anyio.get_current_task()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "Server.start() runs its own event loop: use `await server.serve(...)` inside an event loop"
            )
        options = {"use_uvloop": True} if use_uvloop and backend == "asyncio" else {}
        with announcing():
            try:
                anyio.run(self._main, addresses, ready, backend=backend, backend_options=options)
            except BaseExceptionGroup as group:
                raise _alone(group) from None

    run = start  # the original EZ-IPC's name for serving

    async def _main(self, addresses: Sequence[str], ready: Callable[[list[str]], Any] | None) -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(self._watch_signals)  # (before anything listens: see there)
            bound = await tg.start(self._serve_then_stop, addresses, tg.cancel_scope)
            if ready is not None:
                ready(bound)

    async def _serve_then_stop(
        self,
        addresses: Sequence[str],
        scope: anyio.CancelScope,
        *,
        task_status: anyio.abc.TaskStatus[list[str]],
    ) -> None:
        await self.serve(*addresses, task_status=task_status)
        scope.cancel()

    async def _watch_signals(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Shut down on SIGINT or SIGTERM. Started before the server listens: a signal
        sent as soon as its socket appears would otherwise meet the default action (trio
        may run this task after the one that binds), killing it with its socket left."""
        with contextlib.ExitStack() as stack:
            try:
                signals = stack.enter_context(anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM))
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
                task_status.started()
                await anyio.sleep_forever()
                return
            task_status.started()
            async for signum in signals:
                self._log_signal(signum)
                self.shutdown()
                return

    def shutdown(self) -> None:
        """Begin a graceful shutdown (call it from the server's event loop thread)."""
        self._stop_requested = True
        if self._stop is not None:
            self._stop.set()

    terminate = shutdown

    async def serve(
        self, *addresses: str, task_status: anyio.abc.TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until :meth:`shutdown` (then gracefully) or until cancelled (abruptly).
        With ``await tg.start(server.serve, "tcp://127.0.0.1:0")`` the bound addresses
        are returned (also in ``server.addresses``). Raises ``OSError`` naming the
        address if one cannot be listened on."""
        self._stop = anyio.Event()
        if self._stop_requested:
            self._stop.set()
        parsed = [parse_address(a) for a in (addresses or (DEFAULT_ADDRESS,))]
        options = self.options
        sockets: list[tuple[socket.socket, Address]] = []
        listeners: list[anyio.abc.Listener[Any] | asyncio.AbstractServer] = []
        unix_paths: list[str] = []
        try:
            for addr in parsed:
                if addr.kind != "stdio":
                    sockets += [(sock, addr) for sock in listen_sockets(addr, options.unix_mode)]
                    if addr.kind == "unix":
                        unix_paths.append(addr.path)
            self.addresses = [format_sockaddr(sock.family, sock.getsockname()) for sock, _ in sockets]
            stdio = any(a.kind == "stdio" for a in parsed)
            if stdio:
                self.addresses.append("stdio")
            async with anyio.create_task_group() as connections:
                async with anyio.create_task_group() as accepting:
                    for sock, addr in sockets:
                        if options.ssl is None and on_asyncio():  # the protocol wire
                            accepted = functools.partial(self._accepted, connections)
                            server = await asyncio.get_running_loop().create_server(
                                functools.partial(ProtocolWire, accepted), sock=sock
                            )
                            listeners.append(server)
                            continue
                        listener: anyio.abc.Listener[Any] = await SocketListener.from_socket(sock)
                        if options.ssl is not None and addr.kind == "tcp":
                            listener = TLSListener(listener, options.ssl, standard_compatible=False)
                        listeners.append(listener)
                        accepting.start_soon(listener.serve, self._handle_stream, connections)
                    sockets.clear()  # (the listeners own them now)
                    if stdio:  # a connection like the others: shut down gracefully, not cancelled
                        connections.start_soon(self._serve_stdio)
                    self._log_listening()
                    task_status.started(list(self.addresses))
                    await self._stop.wait()
                    accepting.cancel_scope.cancel()
                await _close_listeners(listeners)
                await self._shut_down()
        finally:
            with anyio.CancelScope(shield=True):
                await _close_listeners(listeners)
            for sock, _ in sockets:
                sock.close()
            for path in unix_paths:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            self._stop_requested = False
            self.addresses = []
            self._log_stopped()

    async def _shut_down(self) -> None:
        remotes = list(self.remotes)
        self._log_shutdown(len(remotes))
        for remote in remotes:
            remote._session.shutdown(remote._loop_time())
            remote._kick()
        for remote in remotes:
            await remote._finished.wait()

    async def _serve_stdio(self) -> None:
        await self._handle(StreamWire(stdio_stream()))
        self.shutdown()  # stdin is closed: nothing more can come

    def _accepted(self, connections: anyio.abc.TaskGroup, wire: ProtocolWire) -> None:
        """A connection accepted by asyncio (a loop callback): served in a task of its own."""
        token = sniffio.current_async_library_cvar.set("asyncio")
        try:
            connections.start_soon(self._handle, wire)
        finally:
            sniffio.current_async_library_cvar.reset(token)

    async def _handle_stream(self, stream: anyio.abc.ByteStream) -> None:
        await self._handle(StreamWire(stream))

    async def _handle(self, wire: Wire) -> None:
        where = wire.peer
        refusal = self._refusal(wire.credentials, where, len(self._remotes))
        if refusal is not None:
            with anyio.move_on_after(1.0), contextlib.suppress(Exception):
                await wire.refuse(refusal)
            return
        remote = Remote(wire, self, self.options, server=self)
        self._add(remote, where)
        try:
            await remote._run()
        except Exception:
            # A connection's task runs in the server's task group: what escapes it would
            # end serve() and every other connection. Whatever failed, it was this one's.
            log.exception("the connection with %s failed", where)
        finally:
            self._remove(remote, where, remote._session.close_reason)

    async def broadcast(
        self, method: str, params: Any = None, *, exclude: Remote | Iterable[Remote] | None = None
    ) -> None:
        """Notify every connected peer (but those in ``exclude``, e.g. the sender)."""
        for sent in self._notify_all(method, params, exclude):
            await sent

    async def broadcast_request(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = None,
        exclude: Remote | Iterable[Remote] | None = None,
    ) -> dict[Remote, Any]:
        """Call every connected peer at once; map each ``Remote`` to its result or to the
        exception its call ended with."""
        results: dict[Remote, Any] = {}
        for remote, call in self._request_all(method, params, timeout, exclude).items():
            try:
                results[remote] = await call if isinstance(call, Call) else call
            except Exception as exc:
                results[remote] = exc
        return results

    bcast_notif = broadcast  # the original EZ-IPC's names
    bcast_request = broadcast_request

    def asgi(self, path: str | None = None) -> ASGIApp:
        """This server as an ASGI application (WebSocket and HTTP): see ``ezipc_adapters.asgi``."""
        from .asgi import ASGIApp

        return ASGIApp(self, path)


async def _close_listeners(listeners: list[anyio.abc.Listener[Any] | asyncio.AbstractServer]) -> None:
    for listener in listeners:
        if isinstance(listener, anyio.abc.Listener):
            await listener.aclose()
        else:
            listener.close()  # asyncio's (or uvloop's, not an AbstractServer subclass)
    listeners.clear()


def _alone(group: BaseExceptionGroup[Any]) -> BaseException:
    """The one error inside nested exception groups (else the group itself)."""
    while len(group.exceptions) == 1 and isinstance(group.exceptions[0], BaseExceptionGroup):
        group = group.exceptions[0]
    alone: BaseException = group.exceptions[0] if len(group.exceptions) == 1 else group
    return alone
