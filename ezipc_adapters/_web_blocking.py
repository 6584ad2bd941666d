"""The blocking driver's ws://, wss://, http:// and https:// clients: ``Stream``s that carry
whole messages (``_web``'s wsproto and h11 parts), under the same ``Remote`` and I/O loop
as every other stream.

* ``WebSocketStream`` wraps a ``SocketStream`` or ``TLSStream``: each ``recv`` gives one
  whole message, each line written is one text message.
* ``HttpStream`` POSTs from a thread of its own (one POST at a time, on a keep-alive
  connection renewed when the server closes it: a new socket would be a new descriptor,
  which the loop cannot be told of) and hands the answers to the loop through a pipe.
"""

from __future__ import annotations

import os
import queue
import select
import socket
import ssl as _ssl
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ._address import Address
from ._blocking_io import SocketStream, Stream, TLSStream, monotonic
from ._options import Options
from ._peer import format_sockaddr
from ._serving import ConnectError
from ._web import HttpClient, WebSocketClient, answer_for

__all__ = ["open_web_stream", "WebSocketStream", "HttpStream"]

_HANDSHAKE_TIMEOUT = 10.0
_CLOSE_WAIT = 1.0  # seconds for the POST thread to end once the stream is closed


def open_web_stream(
    addr: Address,
    opts: Options,
    context: _ssl.SSLContext | None,
    timeout: float | None,
    server_hostname: str | None,
) -> Stream:
    """A connected stream to a web address (TLS for wss:// and https://), or ConnectError."""
    if context is None and addr.secure:
        context = _ssl.create_default_context()
    hostname = server_hostname or addr.host
    deadline = monotonic() + (timeout if timeout is not None else _HANDSHAKE_TIMEOUT)
    try:
        if addr.kind in ("http", "https"):

            def connect() -> socket.socket:
                return _connect(addr, context, hostname, timeout)

            first = connect()
            http = HttpStream(first, connect, lambda: HttpClient(addr, opts.auth_token))
            http.local = format_sockaddr(first.family, first.getsockname())
            return http
        sock = _connect(addr, None, hostname, timeout)
        inner: Stream
        if context is None:
            inner = SocketStream(sock)
        else:
            inner = TLSStream(sock, context, server_side=False, server_hostname=hostname)
        try:
            ws = WebSocketClient(addr, opts.max_message_size)
            _until(inner, deadline, lambda: inner.handshake() if isinstance(inner, TLSStream) else True)
            inner.write(ws.handshake)
            _until(inner, deadline, lambda: _receive_handshake(inner, ws))
        except BaseException:
            sock.close()
            raise
        stream = WebSocketStream(inner, ws)
        stream.local = format_sockaddr(sock.family, sock.getsockname())
        return stream
    except (OSError, ValueError) as exc:
        raise ConnectError.from_error(str(addr), exc) from exc


def _connect(
    addr: Address, context: _ssl.SSLContext | None, hostname: str, timeout: float | None
) -> socket.socket:
    sock = socket.create_connection((addr.host, addr.port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=hostname)
    except BaseException:
        sock.close()
        raise
    return sock


def _until(stream: Stream, deadline: float, done: Callable[[], bool]) -> None:
    """Wait on ``stream`` (this thread) until ``done()`` (TimeoutError at ``deadline``)."""
    while not stream.flush() or not done():
        left = deadline - monotonic()
        writing = [stream.wfd] if stream.backlog() else []
        if left <= 0 or not any(select.select([stream.rfd], writing, [], left)):
            raise TimeoutError("the handshake did not complete in time")


def _receive_handshake(stream: Stream, ws: WebSocketClient) -> bool:
    data = stream.recv()
    if data is None:
        return False
    ws.receive_data(data)
    if ws.eof and not ws.accepted:
        raise ConnectionError("the server closed the connection during the WebSocket handshake")
    return ws.accepted


class WebSocketStream(Stream):
    """A WebSocket client over ``inner`` (a connected ``SocketStream`` or ``TLSStream``)."""

    framing = "message"

    def __init__(self, inner: Stream, ws: WebSocketClient) -> None:
        super().__init__()
        self.inner = inner
        self.rfd, self.wfd = inner.rfd, inner.wfd
        self._ws = ws

    def recv(self) -> bytes | None:
        ws = self._ws
        if not ws.messages and not ws.eof:
            data = self.inner.recv()
            if data is None:
                return None
            ws.receive_data(data)
            control = ws.control()
            if control:
                self.inner.write(control)
        if ws.messages:
            return ws.messages.popleft()
        return b"" if ws.eof else None  # (the server's close, or the end of the connection, is EOF)

    def buffered(self) -> bool:
        return bool(self._ws.messages) or self.inner.buffered()

    def write(self, data: bytes) -> None:
        self.inner.write(self._ws.frames(data))

    def flush(self) -> bool:
        return self.inner.flush()

    def backlog(self) -> int:
        return self.inner.backlog()

    def shutdown_write(self) -> None:
        """Start the closing handshake: the server answers, then closes the connection."""
        try:
            closing = self._ws.close()
            if closing:
                self.inner.write(closing)
        except OSError:
            pass

    def close(self) -> None:
        self.inner.close()

    def peer_certificate(self) -> dict[str, Any] | None:
        return self.inner.peer_certificate()


class HttpStream(Stream):
    """An HTTP client: lines written are POSTed in order by a thread of its own, and each
    answer is one ``recv`` (the loop watches a pipe that the thread writes to)."""

    framing = "message"
    presents_token = True

    def __init__(
        self, sock: socket.socket, connect: Callable[[], socket.socket], new_http: Callable[[], HttpClient]
    ) -> None:
        super().__init__()
        self.rfd, self.wfd = os.pipe()  # (the loop reads rfd; wfd is never watched: no backlog)
        os.set_blocking(self.rfd, False)
        self._sock: socket.socket | None = sock
        sock.settimeout(None)
        self._connect = connect
        self._new_http = new_http
        self._http = new_http()
        self._bodies: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._answers: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._failed: OSError | None = None
        self._done = False
        self._closing = False
        self._awaiting = False  # a POST is sent, its answer not yet read
        self._abandoned = False  # closing, we stopped waiting for that answer
        self._thread = threading.Thread(target=self._run, name="ezipc-http-client", daemon=True)
        self._thread.start()

    def recv(self) -> bytes | None:
        try:
            os.read(self.rfd, 4096)
        except (BlockingIOError, OSError):
            pass
        with self._lock:
            if self._answers:
                return self._answers.popleft()
            if self._failed is not None:
                raise self._failed
            return b"" if self._done else None

    def buffered(self) -> bool:
        with self._lock:
            return bool(self._answers)

    def write(self, data: bytes) -> None:
        if self._closing:
            raise BrokenPipeError("the HTTP client is closed")
        for body in data.split(b"\n"):
            if body:
                self._bodies.put(body)

    def flush(self) -> bool:
        return True

    def shutdown_write(self) -> None:
        if not self._closing:
            self._closing = True
            with self._lock:
                # A POST whose answer is awaited: nobody wants that answer now (our calls
                # have failed), so the wait ends at once, and what is queued after it goes
                # on a new connection. (close() took the 2 s linger whenever a call was in
                # flight: after a timeout, say.) Its body is sent: the server has it.
                abandon = self._awaiting
                self._abandoned = abandon
            self._bodies.put(None)  # the thread POSTs what is queued, then ends
            if abandon and self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.shutdown_write()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # (a POST still waiting for its answer ends)
            except OSError:
                pass
        self._thread.join(_CLOSE_WAIT)
        for fd in (self.rfd, self.wfd):
            try:
                os.close(fd)
            except OSError:
                pass

    def _run(self) -> None:
        try:
            while (body := self._bodies.get()) is not None:
                try:
                    answer = self._post(body)
                except OSError:
                    with self._lock:
                        abandoned, self._abandoned = self._abandoned, False
                    if not abandoned:
                        raise
                    continue  # (see shutdown_write)
                with self._lock:
                    self._abandoned = False  # (if it was, its answer had come meanwhile)
                    if answer is not None:
                        self._answers.append(answer)
                if answer is not None:
                    self._wake()
        except OSError as exc:
            with self._lock:
                self._failed = exc
        finally:
            with self._lock:
                self._done = True
            if self._sock is not None:
                self._sock.close()
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self.wfd, b"x")
        except OSError:  # closed meanwhile, or full (the loop will read anyway)
            pass

    def _post(self, body: bytes) -> bytes | None:
        sock = self._sock
        if sock is None or not self._http.reusable or _closed_by_peer(sock):
            if sock is not None:
                sock.close()
            self._http = self._new_http()
            sock = self._sock = self._connect()
            sock.settimeout(None)
        http = self._http
        sock.sendall(http.request(body))
        with self._lock:
            self._awaiting = not self._closing
        try:
            while (response := http.receive_data(sock.recv(65536))) is None:
                pass
        finally:
            with self._lock:
                self._awaiting = False
        return answer_for(body, *response)


def _closed_by_peer(sock: socket.socket) -> bool:
    """Is an idle keep-alive connection readable (closed by the server)?"""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True
