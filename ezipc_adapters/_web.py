"""The clients' side of WebSocket and HTTP, sans-IO: wsproto and h11 turn bytes into whole
JSON-RPC messages and back, for the session's ``"message"`` framing. The async driver
(``_web_async``) and the blocking one (``_web_blocking``) only move the bytes.

A session with ``"message"`` framing gives its output one message per line
(``Session.data_to_send``): each line becomes one WebSocket text message, or one POST.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

try:
    import h11
    import wsproto
    from wsproto import events as ws_events
    from wsproto.connection import ConnectionState
except ModuleNotFoundError as exc:  # pragma: no cover  (checked by tests/test_extras.py)
    raise ModuleNotFoundError(
        f"ws:// and http:// clients need {exc.name}, which is not installed: pip install 'ezipc[web]'",
        name=exc.name,
    ) from None

from ezipc_proto import ErrorCode

from ._address import Address

__all__ = ["WebSocketClient", "HttpClient", "WebSocketRefused", "host_header", "answer_for"]

_USER_AGENT = (b"user-agent", b"ezipc")


class WebSocketRefused(ConnectionError):
    """The server answered the opening handshake with an HTTP status, not a WebSocket."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the server refused the WebSocket (HTTP {status})")
        self.status = status


def host_header(address: Address) -> str:
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"{host}:{address.port}"


class WebSocketClient:
    """wsproto on a client's side. ``handshake`` is the opening request to send;
    ``receive_data(data)`` (``b""``: the connection ended) fills ``messages`` with whole
    messages (a text or binary message, reassembled from its frames), sets ``accepted``
    and ``eof`` (the server closed), and leaves in ``control()`` what must be sent back
    (pongs, the answer to a close). ``frames(data)`` turns a session's output into text
    messages; ``close()`` starts the closing handshake.

    A message over ``max_size`` is not kept: the session gets a stand-in just over the
    limit, ``bytes(max_size + 1)`` (allocated zeroed, so its pages are never touched), and
    answers it -32007 as it answers any oversize message, and the connection goes on.
    """

    def __init__(self, address: Address, max_size: int) -> None:
        self._ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.handshake = self._ws.send(
            ws_events.Request(host=host_header(address), target=address.path, extra_headers=[_USER_AGENT])
        )
        self.messages: deque[bytes] = deque()
        self.accepted = False
        self.eof = False
        self._max = max_size
        self._parts: list[bytes] = []
        self._size = 0
        self._control = bytearray()

    def receive_data(self, data: bytes) -> None:
        """Raises ``WebSocketRefused`` if the server answered the handshake with a status."""
        ws = self._ws
        ws.receive_data(data or None)
        for event in ws.events():
            if isinstance(event, ws_events.Message):
                self._collect(event.data, event.message_finished)
            elif isinstance(event, ws_events.Ping):
                self._control += ws.send(event.response())
            elif isinstance(event, ws_events.CloseConnection):
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    self._control += ws.send(event.response())
                self.eof = True
            elif isinstance(event, ws_events.AcceptConnection):
                self.accepted = True
            elif isinstance(event, ws_events.RejectConnection):
                raise WebSocketRefused(event.status_code)
        if not data:
            self.eof = True

    def _collect(self, data: str | bytes | bytearray, finished: bool) -> None:
        part = data.encode() if isinstance(data, str) else bytes(data)
        self._size += len(part)
        if self._size <= self._max:
            self._parts.append(part)
        else:
            self._parts.clear()  # over the limit: kept no more
        if finished:
            parts, self._parts = self._parts, []
            if self._size > self._max:
                message = bytes(self._max + 1)
            else:
                message = (parts[0] if len(parts) == 1 else b"".join(parts)) or b" "  # (b"": EOF)
            self._size = 0
            self.messages.append(message)

    def control(self) -> bytes:
        """What must be sent back now (pongs, the answer to the server's close)."""
        out = bytes(self._control)
        self._control.clear()
        return out

    def frames(self, data: bytes) -> bytes:
        """A session's output (one message per line) as text messages. Raises
        ``BrokenPipeError`` once the WebSocket is closing: nothing more can be sent."""
        ws = self._ws
        if ws.state is not ConnectionState.OPEN:
            raise BrokenPipeError("the WebSocket is closed")
        if b"\n" not in data:
            return ws.send(ws_events.TextMessage(data=data.decode()))
        return b"".join(
            ws.send(ws_events.TextMessage(data=line.decode())) for line in data.split(b"\n") if line
        )

    def close(self, code: int = 1000) -> bytes:
        """The close frame to send (``b""`` if closing already)."""
        if self._ws.state is not ConnectionState.OPEN:
            return b""
        return self._ws.send(ws_events.CloseConnection(code=code))


class HttpClient:
    """h11 on a client's side: one POST at a time on a keep-alive connection.
    ``request(body)`` gives the bytes to send; ``receive_data(data)`` gives
    ``(status, reason, body)`` once the response is complete (else None), and raises
    ``ConnectionError`` if the connection ended before. ``reusable`` says whether the
    next POST may go on the same connection."""

    def __init__(self, address: Address, token: str | None) -> None:
        self._target = address.path.encode()
        self._headers: list[tuple[bytes, bytes]] = [
            (b"host", host_header(address).encode()),
            (b"content-type", b"application/json"),
            (b"accept", b"application/json"),
            _USER_AGENT,
        ]
        if token is not None:
            self._headers.append((b"authorization", f"Bearer {token}".encode()))
        self._conn = h11.Connection(h11.CLIENT)
        self._response: h11.Response | None = None
        self._body: list[bytes] = []

    def request(self, body: bytes) -> bytes:
        conn = self._conn
        headers = [*self._headers, (b"content-length", b"%d" % len(body))]
        return (
            conn.send(h11.Request(method="POST", target=self._target, headers=headers))
            + conn.send(h11.Data(data=body))
            + conn.send(h11.EndOfMessage())
        )

    def receive_data(self, data: bytes) -> tuple[int, str, bytes] | None:
        conn = self._conn
        conn.receive_data(data)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ConnectionError(f"bad HTTP response: {exc}") from None
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.Response):
                self._response = event
            elif isinstance(event, h11.Data):
                self._body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                response, body = self._response, b"".join(self._body)
                assert response is not None
                self._response, self._body = None, []
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                return response.status_code, response.reason.decode("latin-1"), body
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the server closed the connection before answering")

    @property
    def reusable(self) -> bool:
        return self._conn.our_state is h11.IDLE and self._conn.their_state is h11.IDLE


#: HTTP statuses with a JSON-RPC error code of their own; any other failure is -32603.
_STATUS_CODES = {401: ErrorCode.UNAUTHORIZED, 403: ErrorCode.UNAUTHORIZED, 413: ErrorCode.MESSAGE_TOO_LARGE}


def answer_for(sent: bytes, status: int, reason: str, body: bytes) -> bytes | None:
    """What the session receives for the POST of ``sent``: the answer in ``body``; or,
    when the server gave none while one is owed (an HTTP error: 401, 413, 500 from a
    proxy...), an error answer for each request in ``sent``, so that each call ends with
    a ``RemoteError`` (-32030 for 401 and 403, -32007 for 413, else -32603) instead of
    waiting forever. None when nothing is owed."""
    if status == 200 and body:
        return body
    try:
        message: Any = json.loads(sent)
    except ValueError:
        return None
    members = message if isinstance(message, list) else [message]
    ids = [m["id"] for m in members if isinstance(m, dict) and "id" in m]
    if not ids:
        return None
    code = _STATUS_CODES.get(status, ErrorCode.INTERNAL_ERROR)
    text = f"HTTP {status} {reason}".strip() if status != 200 else "HTTP 200 without an answer"
    errors = [{"jsonrpc": "2.0", "id": id, "error": {"code": int(code), "message": text}} for id in ids]
    return json.dumps(errors if isinstance(message, list) else errors[0]).encode()
