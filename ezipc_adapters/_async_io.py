"""The async driver's transports: opening streams (with errors that name the address),
this process's stdio as a byte stream, TLS that logs a failed handshake in one line, and
ending a child process."""

from __future__ import annotations

import os
import stat
import sys
from typing import Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSListener as _AnyioTLSListener

from ._address import Address
from ._options import Options
from ._peer import format_sockaddr
from ._registry import log
from ._serving import ConnectError, ConnectTimeout

__all__ = ["TLSListener", "bound_addresses", "describe", "end_process", "open_stream", "stdio_stream"]

_READ_SIZE = 65536


def describe(family: Any, address: Any) -> str:
    if family is None:
        return "stdio"
    return format_sockaddr(family, address)


async def open_stream(
    address: Address, options: Options, *, timeout: float | None, server_hostname: str | None
) -> anyio.abc.ByteStream:
    """A connected stream to ``address`` (within ``timeout`` seconds), or ConnectError."""
    if address.kind == "stdio":
        return stdio_stream()
    try:
        with anyio.fail_after(timeout):
            if address.kind == "unix":
                return await anyio.connect_unix(address.path)
            if options.ssl is None:
                return await anyio.connect_tcp(address.host, address.port)
            return await anyio.connect_tcp(
                address.host,
                address.port,
                ssl_context=options.ssl,
                tls_hostname=server_hostname or address.host,
                tls_standard_compatible=False,
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
    return exc


def bound_addresses(listener: anyio.abc.Listener[Any], addr: Address) -> list[str]:
    """Every address ``listener`` listens on (the real port for port 0)."""
    if isinstance(listener, _AnyioTLSListener):
        listener = listener.listener
    inner = getattr(listener, "listeners", [listener])
    out = []
    for one in inner:
        family = one.extra(anyio.abc.SocketAttribute.family, None)
        local = one.extra(anyio.abc.SocketAttribute.local_address, None)
        out.append(format_sockaddr(family, local) if family is not None else str(addr))
    return out


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
