"""The async driver's wires: how a connection's bytes move between its transport and its
session. Two kinds, one interface (``Wire``):

* ``StreamWire``: any anyio byte stream (trio, TLS, stdio, a child's pipes), with a reader
  task and a writer task;
* ``ProtocolWire``: an asyncio ``Protocol`` on a plain TCP or Unix socket (asyncio and
  uvloop), with no task at all: ``data_received`` feeds the session and what it produces
  goes out in the same step, through ``transport.write``.

Plus opening connections and listening (with errors that name the address), this
process's stdio as a byte stream, TLS that logs a failed handshake in one line, and
ending a child process.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
import sniffio
from anyio.streams.tls import TLSAttribute
from anyio.streams.tls import TLSListener as _AnyioTLSListener

from ezipc_proto import FLUSH_TIMEOUT

from ._address import WEB_KINDS, Address
from ._options import Options
from ._peer import PeerCredentials, format_sockaddr, peer_credentials
from ._registry import log
from ._serving import ConnectError, ConnectTimeout

if TYPE_CHECKING:
    from ._async import Remote

__all__ = [
    "Wire",
    "StreamWire",
    "ProtocolWire",
    "TLSListener",
    "describe",
    "end_process",
    "open_wire",
    "on_asyncio",
    "stdio_stream",
]

_READ_SIZE = 65536
#: Up to this many bytes, the reader writes what handling a chunk produced itself rather
#: than waking the writer: a task switch less per message, and a small write is taken by
#: the kernel at once (unless the peer does not read: then the reader waits with it).
_SEND_DIRECTLY = 65536
#: What a received chunk's requests produce is written every STREAM_EVERY answers, or
#: once it is STREAM_AT bytes, not all at the end of the chunk: the peer works on those
#: answers while we make the rest, both processes busy at once, instead of taking turns.
#: Measured with 64 pipelined calls, interleaved: asyncio add 50-55k -> 72-75k calls/s,
#: echo (1 KiB) 41-46k -> 60-63k; trio add 51-52k -> 75-79k, echo 41k -> 60-64k. Every
#: 8 or 12 answers, or 512, 1024, 2048 and 16384 bytes, did worse on one of the two.
STREAM_AT = 8192
STREAM_EVERY = 16
_CLOSED_ERRORS = (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError)


def describe(family: Any, address: Any) -> str:
    if family is None:
        return "stdio"
    return format_sockaddr(family, address)


def on_asyncio() -> bool:
    """Is this asyncio (or uvloop), where the protocol wire can be used?"""
    return sniffio.current_async_library() == "asyncio"


class Event(Protocol):
    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    async def wait(self) -> Any: ...


def native_event_class() -> Callable[[], Event]:
    """The running backend's own event class (asyncio's or trio's), for the events set
    on every call (the timer's, the stream wire's): ``anyio.Event()`` looks the backend
    up and wraps one, ~2 µs each. A call's waiters: see ``Parking``."""
    if on_asyncio():
        return asyncio.Event
    import trio

    return trio.Event


class Parking(Protocol):
    """Where tasks wait for a call's answer: ``new()`` makes one waiting task's waiter,
    ``awaitable(w)`` is what it awaits, ``wake(w)`` wakes it (a waiter whose task was
    cancelled is left alone). One waiter per task: a task cancelled while it waits
    cancels the request, and every other task waiting gets the call's outcome
    (``RequestCancelled``), not a cancellation of its own."""

    def new(self) -> Any: ...
    def awaitable(self, waiter: Any) -> Awaitable[Any]: ...
    def wake(self, waiter: Any) -> None: ...


class AsyncioParking:
    """On asyncio a waiter is a bare future, awaited directly. ``asyncio.Event`` costs
    ~1.5 µs more per call (a lock on its first wait, a coroutine frame, a deque): 64
    pipelined calls, add, interleaved runs: 60-62k -> 65-69k calls/s."""

    def __init__(self) -> None:
        self.new = asyncio.get_running_loop().create_future

    @staticmethod
    def awaitable(waiter: asyncio.Future[None]) -> Awaitable[Any]:
        return waiter

    @staticmethod
    def wake(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():  # (done: its task was cancelled)
            waiter.set_result(None)


class TrioParking:
    """On trio a waiter is a ``trio.Event``: ``anyio.Event()`` looks the backend up and
    wraps one, ~2 µs of each call."""

    def __init__(self) -> None:
        import trio

        self.new = trio.Event

    @staticmethod
    def awaitable(waiter: Any) -> Awaitable[Any]:
        return waiter.wait()  # type: ignore[no-any-return]

    @staticmethod
    def wake(waiter: Any) -> None:
        waiter.set()


def native_parking() -> Parking:
    """The running backend's parking for calls' waiting tasks."""
    return AsyncioParking() if on_asyncio() else TrioParking()


def loop_clock() -> Callable[[], float]:
    """The running event loop's clock (``anyio.current_time``'s), read directly: anyio's
    looks the backend up on every call, ~2 µs of a round trip on trio."""
    if on_asyncio():
        return asyncio.get_running_loop().time
    import trio

    return trio.lowlevel.current_clock().current_time


class Wire:
    """How a ``Remote``'s bytes move. ``local``, ``peer``, ``certificate`` and
    ``credentials`` describe the connection; ``start(remote, tg)`` begins moving bytes;
    ``output_ready()`` says the session has bytes to write; ``set_reading(on)`` pauses or
    resumes reading (the session said PAUSED); ``drain()`` waits until everything is
    written; ``aclose()`` closes."""

    local = peer = ""
    certificate: dict[str, Any] | None = None
    credentials: PeerCredentials | None = None
    remote: Remote
    #: The session's framing, if the transport sets it (``"message"``: WebSocket, HTTP).
    framing: str | None = None
    #: The transport presents ``auth_token`` itself (an HTTP header), not ``$/authenticate``.
    presents_token = False
    #: Called as the connection begins to close, before ``drain()`` (HTTP: the answer to
    #: the POST in flight is no longer awaited).
    closing: Callable[[], None] | None = None

    def start(self, remote: Remote, tg: anyio.abc.TaskGroup) -> None:
        raise NotImplementedError

    def output_ready(self) -> None:
        raise NotImplementedError

    def output_due(self) -> bool:
        """Part of a chunk's answers is due (``STREAM_EVERY`` answers, or ``STREAM_AT``
        bytes): send it now if the wire can. False: stop that work here (the reader sends,
        then goes on)."""
        self.output_ready()
        return True

    def set_reading(self, on: bool) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def refuse(self, data: bytes) -> None:
        """Write ``data`` (if any) and close: a connection the server will not serve."""
        raise NotImplementedError

    def _describe(self, family: Any, local: Any, peer: Any, raw: socket.socket | None) -> None:
        self.local = describe(family, local)
        self.peer = describe(family, peer)
        self.credentials = peer_credentials(raw) if raw is not None else None
        if self.peer == "unix:" and self.credentials is not None:
            self.peer = f"unix:pid={self.credentials.pid},uid={self.credentials.uid}"


class StreamWire(Wire):
    """An anyio byte stream: a reader task and a writer task."""

    def __init__(self, stream: anyio.abc.ByteStream, description: str | None = None) -> None:
        self.stream = stream
        extra = stream.extra
        family = extra(anyio.abc.SocketAttribute.family, None)
        raw = extra(anyio.abc.SocketAttribute.raw_socket, None)
        try:
            local = extra(anyio.abc.SocketAttribute.local_address, None)
            peer = extra(anyio.abc.SocketAttribute.remote_address, None)
        except OSError:
            # Its socket is closed already: asyncio closes it as soon as the peer resets
            # the connection, which may come before this (right after a TLS handshake).
            # The wire is made all the same, and ends at its first read.
            self._describe(family, "", "", raw)
            self.peer = description or "a peer that has disconnected"
        else:
            self._describe(family, local, peer, raw)
            if description is not None:
                self.peer = description
        self.certificate = extra(TLSAttribute.peer_certificate, None)
        self._writing = False
        self._reading = True
        self._reader_kicking = False
        self._new_event = native_event_class()
        self._write_wanted = self._new_event()
        self._drained = self._new_event()

    def start(self, remote: Remote, tg: anyio.abc.TaskGroup) -> None:
        self.remote = remote
        tg.start_soon(self._write_loop)
        tg.start_soon(self._read_loop)

    def output_ready(self) -> None:
        if not self._writing:
            self._write_wanted.set()

    def output_due(self) -> bool:
        if self._reader_kicking and not self._writing and self.remote._session.output_size <= _SEND_DIRECTLY:
            return False  # (the reader sends it at once, as its loop does, and kicks again)
        self.output_ready()
        return True

    def set_reading(self, on: bool) -> None:
        self._reading = on

    async def drain(self) -> None:
        session = self.remote._session
        while session.output_size or self._writing:
            self._write_wanted.set()
            await self._wait_drained()

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def refuse(self, data: bytes) -> None:
        try:
            if data:
                await self.stream.send(data)
        finally:
            await anyio.aclose_forcefully(self.stream)

    async def _wait_drained(self) -> None:
        if self._drained.is_set():
            self._drained = self._new_event()
        await self._drained.wait()

    async def _read_loop(self) -> None:
        remote, stream = self.remote, self.stream
        session, now = remote._session, remote._loop_time
        try:
            while True:
                self._reader_kicking = True
                try:
                    remote._kick()
                finally:
                    self._reader_kicking = False
                if not session.reading:
                    return
                if not self._reading:  # our output is over its bound: the peer does not read
                    await self._wait_drained()
                    continue
                if session.output_size and not self._writing and session.output_size <= _SEND_DIRECTLY:
                    await self._send(session.data_to_send())
                    continue
                try:
                    data = await stream.receive(_READ_SIZE)
                except anyio.EndOfStream:
                    data = b""  # the peer sends nothing more, but may still read our answers
                except _CLOSED_ERRORS:
                    # Reset or closed under us: nobody will read an answer, so stop at once.
                    session.close("connection lost", remote._loop_time(), abort=True)
                    remote._kick()
                    return
                session.receive_data(data, now())
        except Exception:
            log.exception("reader of %s failed", self.peer)
            session.close("internal error", remote._loop_time())
            remote._kick()

    async def _write_loop(self) -> None:
        session = self.remote._session
        while True:
            if self._writing:  # the reader is sending what its chunk produced
                await self._wait_drained()
                continue
            data = session.data_to_send()
            if not data:
                self._drained.set()
                await self._write_wanted.wait()
                self._write_wanted = self._new_event()
                continue
            if not await self._send(data):
                return

    async def _send(self, data: bytes) -> bool:
        remote = self.remote
        session = remote._session
        self._writing = True
        try:
            await self.stream.send(data)
        except _CLOSED_ERRORS as exc:
            session.close(f"write failed: {exc!r}", remote._loop_time(), abort=True)
            remote._kick()
            return False
        finally:
            self._writing = False
            self._drained.set()  # (the writer may wait for the reader's send)
        if not self._reading and session.output_size <= session.write_buffer_size:
            remote._kick()  # reading, and work held back while our output was over its bound, go on
        return True


class ProtocolWire(asyncio.Protocol, Wire):
    """A plain socket on asyncio (or uvloop): the loop calls ``data_received``, which
    feeds the session and does what it says; what that produced is written every
    ``STREAM_EVERY`` answers or ``STREAM_AT`` bytes, and the rest when it is done. What
    tasks produce (requests, async handlers' answers) is written at the end of the loop
    iteration, all of it in one write (unless it reaches ``STREAM_AT``): 64 pipelined
    requests cost one system call, not 64. ``on_connect`` is called with the wire once the transport is
    there (a server's accept)."""

    def __init__(self, on_connect: Callable[[ProtocolWire], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self._on_connect = on_connect
        self._early: list[bytes] = []  # received before the Remote was attached
        self._receiving = False  # in data_received: it writes when done
        self._flush_soon = False  # a write is due at the end of this loop iteration
        self._blocked = False  # the transport's buffer is over its high-water mark
        self._reading = True
        self._lost: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self.attached = False

    # ---- asyncio's side -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's is not a subclass)
        raw = transport.get_extra_info("socket")
        family = raw.family if raw is not None else None
        self._describe(
            family, transport.get_extra_info("sockname"), transport.get_extra_info("peername"), raw
        )
        self._lost = asyncio.get_running_loop().create_future()
        if self._on_connect is not None:
            self._on_connect(self)

    def data_received(self, data: bytes) -> None:
        if not self.attached:
            self._early.append(data)
            return
        self._receive(data)

    def eof_received(self) -> bool:
        if not self.attached:
            self._early.append(b"")
        else:
            self._receive(b"")
        return True  # keep the transport open: the peer may still read our answers

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self.attached:
            token = sniffio.current_async_library_cvar.set("asyncio")  # (a loop callback)
            try:
                remote = self.remote
                remote._session.close("connection lost", remote._loop_time(), abort=True)
                remote._kick()
            finally:
                sniffio.current_async_library_cvar.reset(token)

    def pause_writing(self) -> None:
        self._blocked = True

    def resume_writing(self) -> None:
        self._blocked = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if self.attached:
            token = sniffio.current_async_library_cvar.set("asyncio")
            try:
                self._write_now()
                self.remote._kick()  # (reading, and work held back, may go on)
            finally:
                sniffio.current_async_library_cvar.reset(token)

    def _receive(self, data: bytes) -> None:
        token = sniffio.current_async_library_cvar.set("asyncio")  # anyio, from a loop callback
        try:
            remote = self.remote
            self._receiving = True
            try:
                remote._session.receive_data(data, remote._loop_time())
                remote._kick()
            finally:
                self._receiving = False
            self._write_now()
        finally:
            sniffio.current_async_library_cvar.reset(token)

    # ---- the Remote's side ----------------------------------------------------------

    def start(self, remote: Remote, tg: anyio.abc.TaskGroup) -> None:
        self.remote = remote
        self.attached = True
        early, self._early = self._early, []
        for data in early:
            self._receive(data)

    def output_due(self) -> bool:
        self._write_now()
        return True

    def output_ready(self) -> None:
        if self.remote._session.output_size >= STREAM_AT:
            self._write_now()
            return
        if self._receiving or self._flush_soon:
            return
        self._flush_soon = True
        asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        token = sniffio.current_async_library_cvar.set("asyncio")  # (a loop callback)
        try:
            self._write_now()
        finally:
            sniffio.current_async_library_cvar.reset(token)

    def _write_now(self) -> None:
        transport = self.transport
        if self._blocked or transport is None or transport.is_closing():
            return
        data = self.remote._session.data_to_send()
        if data:
            transport.write(data)
        if not self._reading:  # paused while our output was over its bound: go on
            self.remote._kick()

    def set_reading(self, on: bool) -> None:
        transport = self.transport
        if on != self._reading and transport is not None and not transport.is_closing():
            self._reading = on
            if on:
                transport.resume_reading()
            else:
                transport.pause_reading()

    async def drain(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._write_now()
        transport.set_write_buffer_limits(high=0)  # resume_writing once it is all written
        if transport.get_write_buffer_size():
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    async def refuse(self, data: bytes) -> None:
        if self.transport is not None:
            if data:
                self.transport.write(data)
            await self.aclose()

    async def aclose(self) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.close()  # (writes what it holds first)
        if self._lost is not None:
            with anyio.move_on_after(FLUSH_TIMEOUT):
                await self._lost
                return
        transport.abort()


# ---- opening connections -----------------------------------------------------------------


async def open_wire(
    address: Address, options: Options, *, timeout: float | None, server_hostname: str | None
) -> Wire:
    """A connected wire to ``address`` (within ``timeout`` seconds), or ConnectError."""
    if address.kind == "stdio":
        return StreamWire(stdio_stream())
    if address.kind in WEB_KINDS:
        from ._web_async import open_web_wire  # (wsproto and h11: the web extra)

        return await open_web_wire(address, options, timeout=timeout, server_hostname=server_hostname)
    try:
        with anyio.fail_after(timeout):
            if options.ssl is None and on_asyncio():
                loop = asyncio.get_running_loop()
                if address.kind == "unix":
                    _, wire = await loop.create_unix_connection(ProtocolWire, address.path)
                else:
                    _, wire = await loop.create_connection(ProtocolWire, address.host, address.port)
                    wire.transport.get_extra_info("socket").setsockopt(  # type: ignore[union-attr]
                        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
                    )
                return wire
            if address.kind == "unix":
                return StreamWire(await anyio.connect_unix(address.path))
            if options.ssl is None:
                return StreamWire(await anyio.connect_tcp(address.host, address.port))
            return StreamWire(
                await anyio.connect_tcp(
                    address.host,
                    address.port,
                    ssl_context=options.ssl,
                    tls_hostname=server_hostname or address.host,
                    tls_standard_compatible=False,
                )
            )
    except TimeoutError as exc:
        raise ConnectTimeout(str(address), f"timed out after {timeout}s") from exc
    except OSError as exc:
        raise ConnectError.from_error(str(address), _first_cause(exc)) from exc


def _first_cause(exc: OSError) -> BaseException:
    """anyio's "All connection attempts failed" hides each attempt's error in its cause."""
    cause = exc.__cause__
    inner = getattr(cause, "exceptions", None)
    if inner:
        return inner[0]  # type: ignore[no-any-return]
    return cause if isinstance(cause, OSError) else exc


class TLSListener(_AnyioTLSListener):
    """anyio's TLS listener, logging a failed handshake (a scanner, a plain-text client, a
    wrong certificate) as one line on the "ezipc" logger instead of a traceback."""

    @staticmethod
    async def handle_handshake_error(exc: BaseException, stream: anyio.abc.AnyByteStream) -> None:
        try:  # before closing: a closed socket no longer knows its peer
            peer = describe(
                stream.extra(anyio.abc.SocketAttribute.family, None),
                stream.extra(anyio.abc.SocketAttribute.remote_address, None),
            )
        except OSError:
            peer = "a TLS client"
        await anyio.aclose_forcefully(stream)
        if isinstance(exc, anyio.get_cancelled_exc_class()) or not isinstance(exc, Exception):
            raise exc
        log.warning("%s: TLS handshake failed: %s", peer, exc.__cause__ or exc)


async def end_process(process: anyio.abc.Process, timeout: float) -> None:
    """Close the child's stdin (its cue to exit), wait ``timeout`` seconds, then
    terminate it, wait again, and kill it if need be."""
    try:
        if process.stdin is not None:
            await process.stdin.aclose()
    except Exception:
        pass
    with anyio.move_on_after(timeout):
        await process.wait()
        return
    try:
        process.terminate()
    except ProcessLookupError:
        return
    with anyio.move_on_after(timeout):
        await process.wait()
        return
    try:
        process.kill()
    except ProcessLookupError:
        return
    await process.wait()


# ---- this process's stdio as a byte stream ------------------------------------------------


class FdStream(anyio.abc.ByteStream):
    """A byte stream over two file descriptors (this process's stdin and stdout).

    Pipes, sockets and terminals are polled without threads (non-blocking descriptors),
    so nothing is left blocked in a read when the connection closes; a regular file
    (stdin redirected from a file) is read in a worker thread, where reads never block.
    """

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._rfd = read_fd
        self._wfd = write_fd
        self._closed = False
        self._restore: list[tuple[int, bool]] = []
        self._poll_read = self._pollable(read_fd)
        self._poll_write = self._pollable(write_fd)

    def _pollable(self, fd: int) -> bool:
        if sys.platform == "win32":
            return False
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return False
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            return False
        if all(fd != done for done, _ in self._restore):
            self._restore.append((fd, os.get_blocking(fd)))
            os.set_blocking(fd, False)
        return True

    async def receive(self, max_bytes: int = _READ_SIZE) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        if not self._poll_read:
            data = await anyio.to_thread.run_sync(os.read, self._rfd, max_bytes)
        else:
            while True:
                try:
                    data = os.read(self._rfd, max_bytes)
                    break
                except BlockingIOError:
                    await anyio.wait_readable(self._rfd)
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        view = memoryview(item)
        while view:
            if not self._poll_write:
                written = await anyio.to_thread.run_sync(os.write, self._wfd, view)
            else:
                try:
                    written = os.write(self._wfd, view)
                except BlockingIOError:
                    await anyio.wait_writable(self._wfd)
                    continue
                except BrokenPipeError as exc:
                    raise anyio.BrokenResourceError from exc
            view = view[written:]

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd, blocking in self._restore:
            try:
                os.set_blocking(fd, blocking)
            except OSError:
                pass


def stdio_stream() -> anyio.abc.ByteStream:
    return FdStream(sys.stdin.fileno(), sys.stdout.fileno())
