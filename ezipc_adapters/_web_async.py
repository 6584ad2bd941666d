"""The async driver's ws://, wss://, http:// and https:// clients: byte streams that carry
whole messages (``_web``'s wsproto and h11 parts over an anyio TCP or TLS stream), under
the same ``StreamWire`` as every other stream. Sans-IO composed with sans-IO: wsproto or
h11 frames the messages, the session does the rest."""

from __future__ import annotations

import math
import select
import ssl as _ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import anyio.abc

from ._address import Address
from ._async_io import StreamWire
from ._options import Options
from ._serving import ConnectError, ConnectTimeout
from ._web import HttpClient, WebSocketClient, answer_for

__all__ = ["open_web_wire", "WebSocketStream", "HttpStream"]

_CLOSE_WAIT = 1.0  # seconds to wait for the server's answer to our close


async def open_web_wire(
    address: Address, options: Options, *, timeout: float | None, server_hostname: str | None
) -> StreamWire:
    """A wire to a ws:// or http:// address (TLS for wss:// and https://), or ConnectError."""
    context = options.ssl if options.ssl is not None or not address.secure else _ssl.create_default_context()
    hostname = server_hostname or address.host

    async def connect() -> anyio.abc.ByteStream:
        if context is None:
            return await anyio.connect_tcp(address.host, address.port)
        return await anyio.connect_tcp(
            address.host,
            address.port,
            ssl_context=context,
            tls_hostname=hostname,
            tls_standard_compatible=False,
        )

    stream: anyio.abc.ByteStream
    try:
        with anyio.fail_after(timeout):
            first = await connect()
            if address.kind in ("ws", "wss"):
                stream = await WebSocketStream.open(first, WebSocketClient(address, options.max_message_size))
            else:
                stream = HttpStream(first, connect, lambda: HttpClient(address, options.auth_token))
    except TimeoutError as exc:
        raise ConnectTimeout(str(address), f"timed out after {timeout}s") from exc
    except OSError as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        raise ConnectError.from_error(str(address), cause) from exc
    wire = StreamWire(stream, str(address))
    wire.framing = "message"
    if isinstance(stream, HttpStream):
        wire.presents_token = True
        wire.closing = stream.abandon_answer
    return wire


class WebSocketStream(anyio.abc.ByteStream):
    """A WebSocket client over ``stream``: ``receive`` gives one whole message, ``send``
    sends each line of a session's output as a text message."""

    def __init__(self, stream: anyio.abc.ByteStream, ws: WebSocketClient) -> None:
        self._stream = stream
        self._ws = ws
        self._lock = anyio.Lock()  # (the reader answers pings while the writer writes)

    @classmethod
    async def open(cls, stream: anyio.abc.ByteStream, ws: WebSocketClient) -> WebSocketStream:
        """Do the opening handshake on ``stream`` (ConnectionError if refused)."""
        try:
            await stream.send(ws.handshake)
            while not ws.accepted:
                ws.receive_data(await _receive(stream))
                if ws.eof and not ws.accepted:
                    raise ConnectionError("the server closed the connection during the WebSocket handshake")
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
        return cls(stream, ws)

    @property
    def extra_attributes(self) -> Mapping[Any, Any]:
        return self._stream.extra_attributes  # the TCP (or TLS) connection's addresses, certificate

    async def receive(self, max_bytes: int = 65536) -> bytes:
        ws = self._ws
        while not ws.messages:
            if ws.eof:
                raise anyio.EndOfStream
            ws.receive_data(await _receive(self._stream))
            control = ws.control()
            if control:
                await self._send(control)
        return ws.messages.popleft()

    async def send(self, item: bytes) -> None:
        await self._send(self._ws.frames(item))

    async def _send(self, data: bytes) -> None:
        async with self._lock:
            await self._stream.send(data)

    async def send_eof(self) -> None:
        raise NotImplementedError("a WebSocket has no half-close")

    async def aclose(self) -> None:
        """Close the WebSocket (the closing handshake, briefly), then the connection."""
        ws = self._ws
        try:
            closing = ws.close()
            if closing:
                with anyio.move_on_after(_CLOSE_WAIT):
                    await self._send(closing)
                    while not ws.eof:  # (messages still arriving are dropped)
                        ws.receive_data(await _receive(self._stream))
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            await anyio.aclose_forcefully(self._stream)


class HttpStream(anyio.abc.ByteStream):
    """An HTTP client as a byte stream: ``send`` POSTs each line of a session's output,
    one at a time on a keep-alive connection (a new one when the server has closed it),
    and ``receive`` gives the answers, in order."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        connect: Callable[[], Awaitable[anyio.abc.ByteStream]],
        new_http: Callable[[], HttpClient],
    ) -> None:
        self._stream: anyio.abc.ByteStream | None = stream
        self._connect = connect
        self._new_http = new_http
        self._http = new_http()
        self._answers_in, self._answers_out = anyio.create_memory_object_stream[bytes](math.inf)
        self._extra = stream.extra_attributes
        self._awaiting: anyio.CancelScope | None = None  # a POST sent: the wait for its answer

    @property
    def extra_attributes(self) -> Mapping[Any, Any]:
        return self._extra  # (the first connection's: the local address may change later)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self._answers_out.receive()
        except anyio.EndOfStream:
            raise
        except anyio.ClosedResourceError:
            raise anyio.EndOfStream from None

    async def send(self, item: bytes) -> None:
        for body in item.split(b"\n"):
            if body:
                answer = await self._post(body)
                if answer is not None:
                    self._answers_in.send_nowait(answer)

    async def _post(self, body: bytes) -> bytes | None:
        stream = self._stream
        if stream is None or not self._http.reusable or _closed_by_peer(stream):
            if stream is not None:
                await anyio.aclose_forcefully(stream)
            self._http = self._new_http()
            stream = self._stream = await self._connect()
        http = self._http
        await stream.send(http.request(body))
        response = None
        scope = self._awaiting = anyio.CancelScope()
        try:
            with scope:
                while (response := http.receive_data(await _receive(stream))) is None:
                    pass
        finally:
            self._awaiting = None
        if response is None:  # (abandoned: see abandon_answer)
            self._stream = None
            await anyio.aclose_forcefully(stream)
        return None if response is None else answer_for(body, *response)

    def abandon_answer(self) -> None:
        """The connection begins to close: stop waiting for the answer to the POST in
        flight, if any (nobody wants it now: our calls have failed; its body is sent, the
        server has it). What is written after it goes on a new connection. (The close
        took FLUSH_TIMEOUT, 2 s, whenever a call was in flight: after a timeout, say.)"""
        if self._awaiting is not None:
            self._awaiting.cancel()

    async def send_eof(self) -> None:
        self._answers_in.close()  # we ask nothing more: the answers end here

    async def aclose(self) -> None:
        self._answers_in.close()
        self._answers_out.close()
        if self._stream is not None:
            await anyio.aclose_forcefully(self._stream)


async def _receive(stream: anyio.abc.ByteStream) -> bytes:
    """Bytes from ``stream``, ``b""`` at its end."""
    try:
        return await stream.receive()
    except anyio.EndOfStream:
        return b""


def _closed_by_peer(stream: anyio.abc.ByteStream) -> bool:
    """Is an idle keep-alive connection readable (so closed by the server: it owes us
    nothing)? Then the next POST goes on a new one, as HTTP clients do."""
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
    if sock is None:
        return False
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True
