"""An ASGI application serving an async ``Server`` over WebSocket and HTTP.

```python
from ezipc_adapters import Server
from ezipc_adapters.asgi import ASGIApp

server = Server()
server.hook_request("add", lambda a, b: a + b)
app = ASGIApp(server)          # or server.asgi(); then: uvicorn module:app
```

* **WebSocket**: one JSON-RPC message per text frame, both ways. Each connection is a
  ``Remote`` of the server, driven by the async driver as a TCP connection is: it is in
  ``server.remotes``, ``broadcast`` reaches it, a handler's ``remote`` can call the
  client back, and the limits, the auth token, the hooks and the counters are the same.
* **HTTP POST**: the body (a request, a notification or a batch) is one short exchange
  with a session of its own: 200 with the answer as ``application/json``, 204 when none
  is owed (notifications only), 405 for another method, 415 for a body that is not
  ``application/json``, 413 over ``max_message_size``, 401 without the right
  ``Authorization: Bearer TOKEN`` when the server has ``auth_token``. Over plain HTTP the
  server cannot call the client: a handler's ``remote.request``/``notify`` raise
  ``ConnectionClosed``.

Everything runs on the ASGI server's event loop (asyncio under uvicorn, trio under
hypercorn's trio worker), through anyio. A server process's ``remotes`` and
``broadcast`` cover the WebSocket clients of that process only (docs/web.md).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import anyio.abc

from ezipc_proto import Connection, ConnectionClosed, Error, ErrorCode

from ._async import Remote
from ._async_endpoints import Server
from ._async_io import StreamWire, Wire
from ._options import Options
from ._registry import log

__all__ = ["ASGIApp", "Scope", "Receive", "Send"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_JSON_TYPES = ("application/json", "application/json-rpc", "application/jsonrequest")
_CLOSE_POLICY = 1008  # RFC 6455: policy violation (a peer refused before it is accepted)


class ASGIApp:
    """The ASGI application of ``server`` (an async ``ezipc_adapters.Server``).

    ``path``: serve only this path (404 elsewhere); None (the default) serves every
    path it is given, as an app mounted under a prefix in Starlette or FastAPI is.
    """

    def __init__(self, server: Server, path: str | None = None) -> None:
        if not isinstance(server, Server):
            raise TypeError(f"ASGIApp serves an async ezipc_adapters.Server, not {type(server).__name__}")
        self.server = server
        self.path = path
        self._options: tuple[Options, Options] | None = None  # (the server's, for HTTP exchanges)

    def __repr__(self) -> str:
        return f"<ASGIApp {self.server!r} path={self.path!r}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
        elif self.path is not None and scope.get("path") != self.path:
            await _not_here(kind, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)

    # ---- WebSocket: a connection of the server -----------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        if self.server.options.allowed_uids is not None:  # (no peer credentials: fail closed)
            log.warning("refusing %s: peer credentials None not allowed", _url(scope, "client"))
            await send({"type": "websocket.close", "code": _CLOSE_POLICY})  # (uvicorn answers 403)
            return
        await send({"type": "websocket.accept"})
        stream = _WebSocketStream(receive, send)
        wire = StreamWire(stream, _url(scope, "client"))
        wire.local = _url(scope, "server")
        wire.framing = "message"
        await self.server._handle(wire)  # admission, the registry of peers, the connection's life

    # ---- HTTP: one exchange per POST ---------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        options = self._exchange_options()
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
        }
        if scope["method"] != "POST":
            await _respond(send, 405, b"", [(b"allow", b"POST")])
            return
        if headers.get("content-type", "").partition(";")[0].strip().lower() not in _JSON_TYPES:
            await _respond(send, 415, b"")
            return
        if options.allowed_uids is not None:  # (no peer credentials over HTTP: fail closed)
            await _respond(send, 403, b"")
            return
        expected = self.server.options.auth_token
        if expected is not None and not _bearer_matches(headers.get("authorization", ""), expected):
            log.warning("%s: refused an HTTP request without the right token", _url(scope, "client"))
            error = Connection("message").send(Error(None, ErrorCode.UNAUTHORIZED, "Unauthorized"))
            await _respond(send, 401, error, [(b"www-authenticate", b"Bearer")])
            return
        limit = options.max_message_size
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _respond(send, 413, b"")
            return
        body = await _read_body(receive, limit)
        if body is None:
            await _respond(send, 413, b"")
            return
        answer = await self._exchange(body, options, scope)
        if answer:
            await _respond(send, 200, answer, [(b"content-type", b"application/json")])
        else:
            await _respond(send, 204, b"")

    async def _exchange(self, body: bytes, options: Options, scope: Scope) -> bytes:
        """Answer one POST's body: the async driver's ``Remote`` runs its jobs (handlers
        inline or in tasks, the hooks) as for a connection, but in a lighter frame than
        a connection's: no reader, writer or timer task (nothing to read after the body,
        and no deadline to keep: an HTTP handler runs to its end, as the client waits)."""
        wire = _ExchangeWire(body, _url(scope, "client"), _url(scope, "server"))
        remote = _HttpRemote(wire, self.server, options, server=self.server)
        try:
            async with anyio.create_task_group() as tg:
                remote._tg = tg
                wire.start(remote, tg)
                remote._kick()
                await remote._closing.wait()
        finally:
            remote.close()  # (cancelled, e.g. at uvicorn's shutdown: its jobs are dropped)
            if self.server.on_disconnect:
                await remote._disconnect_hooks()
        return remote._session.data_to_send()

    def _exchange_options(self) -> Options:
        """The server's options for an HTTP exchange: the token is checked in its header
        (the server's options may change after the app is made: the CLI sets them)."""
        options = self.server.options
        if self._options is None or self._options[0] is not options:
            self._options = (options, options.replace(auth_token=None))
        return self._options[1]


class _WebSocketStream(anyio.abc.ByteStream):
    """An accepted ASGI WebSocket as the byte stream of a ``StreamWire``: each
    ``receive`` is one whole message (the session's ``"message"`` framing), each line
    ``send`` is given is one text message."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._gone = False  # the client disconnected, or we closed

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._gone:
            raise anyio.ClosedResourceError
        message = await self._receive()
        if message["type"] != "websocket.receive":  # websocket.disconnect: nobody reads answers now
            self._gone = True
            raise anyio.BrokenResourceError
        text = message.get("text")
        data: bytes = text.encode() if text is not None else message.get("bytes") or b""
        return data or b" "  # (b"" means EOF to the session: an empty message is a parse error)

    async def send(self, item: bytes) -> None:
        for line in item.split(b"\n"):
            if not line:
                continue
            if self._gone:
                raise anyio.BrokenResourceError
            try:
                await self._send({"type": "websocket.send", "text": line.decode()})
            except Exception as exc:  # each ASGI server says "disconnected" its own way
                self._gone = True
                raise anyio.BrokenResourceError from exc

    async def send_eof(self) -> None:
        raise NotImplementedError("a WebSocket has no half-close")

    async def aclose(self) -> None:
        if self._gone:
            return
        self._gone = True
        try:
            await self._send({"type": "websocket.close", "code": 1000})
        except Exception:  # gone already
            pass


class _ExchangeWire(Wire):
    """One HTTP POST: the body is the peer's only message, then its EOF; what the session
    writes in the end is the answer (one message: the exchange's remote cannot call)."""

    framing = "message"

    def __init__(self, body: bytes, peer: str, local: str) -> None:
        self._body = body or b" "  # (an empty body is a parse error, not an EOF)
        self.peer = peer
        self.local = local

    def start(self, remote: Remote, tg: anyio.abc.TaskGroup) -> None:
        self.remote = remote
        session, now = remote._session, remote._loop_time()
        session.receive_data(self._body, now)
        session.receive_data(b"", now)

    def output_ready(self) -> None:
        pass  # (taken once the exchange is over)

    def set_reading(self, on: bool) -> None:
        pass

    async def drain(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def refuse(self, data: bytes) -> None:
        pass


class _HttpRemote(Remote):
    """The peer of one HTTP exchange: it can only be answered."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionClosed("over HTTP the server cannot call the client (use a WebSocket)")

    def notify(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionClosed("over HTTP the server cannot notify the client (use a WebSocket)")

    def batch(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionClosed("over HTTP the server cannot call the client (use a WebSocket)")


# ---- small parts -----------------------------------------------------------------------


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop: connections live and end with the ASGI server's."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _not_here(kind: str, send: Send) -> None:
    if kind == "http":
        await _respond(send, 404, b"")
    elif kind == "websocket":
        await send({"type": "websocket.close", "code": _CLOSE_POLICY})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request's body, or None once it is over ``limit`` bytes (read no further)."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    all_headers = [*(headers or ()), (b"content-length", str(len(body)).encode())]
    if body and not any(name == b"content-type" for name, _ in all_headers):
        all_headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


def _bearer_matches(authorization: str, expected: str) -> bool:
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode("utf-8", "surrogatepass"), expected.encode()
    )


def _url(scope: Scope, which: str) -> str:
    """``ws://host:port`` for the client; the URL served (with the path) for the server."""
    scheme = scope.get("scheme") or ("ws" if scope["type"] == "websocket" else "http")
    where = scope.get(which)
    if not where:
        return f"{scheme}:"
    host, port = where[0], where[1]
    host = f"[{host}]" if ":" in str(host) else host
    path = scope.get("root_path", "") + scope.get("path", "") if which == "server" else ""
    return f"{scheme}://{host}:{port}{path}"
