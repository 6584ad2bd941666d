"""Embedding ezipc_proto: JSON-RPC over WebSocket messages, with wsproto.

A WebSocket already frames messages, so the JSON-RPC connection does no framing of its
own: ``Connection(framing="message")`` takes one whole message per ``receive_data``
call, and ``send`` returns the bare JSON to put in one WebSocket text message. Both
libraries are sans-IO, so the glue between them (``RpcOverWebSocket`` below) only moves
bytes: socket -> wsproto -> text messages -> ezipc_proto -> events, and back.

A server thread and a client share a loopback TCP socket: the WebSocket opening
handshake, a few requests, a notification each way, a batch (one WebSocket message in,
one out), and a clean WebSocket close, which each side's JSON-RPC connection sees as
EOF (a ``Closed`` event).

Run it: ``python examples/embed_websocket.py``
"""

from __future__ import annotations

import socket
import threading

from wsproto import ConnectionType, WSConnection
from wsproto import events as ws
from wsproto.connection import ConnectionState

from ezipc_proto import (
    Closed,
    Connection,
    Error,
    ErrorCode,
    Event,
    Id,
    InvalidMessage,
    Notification,
    Request,
    Response,
)


class RpcOverWebSocket:
    """One end: a blocking socket, its WebSocket (wsproto) and its JSON-RPC connection."""

    def __init__(self, sock: socket.socket, role: ConnectionType) -> None:
        self.sock = sock
        self.ws = WSConnection(role)
        self.rpc = Connection(framing="message")
        self.open = False  # the opening handshake is done
        self.close_code: int | None = None  # 1000 after a clean close, 1006 if the TCP link just ended
        self._parts: list[str] = []  # the fragments of a text message still arriving

    def send(self, event: Event) -> None:
        self.send_message(self.rpc.send(event))

    def send_message(self, message: bytes) -> None:
        # b"" means "nothing to write" (e.g. an answer to one member of a batch whose
        # reply is not complete yet): it must not become an empty WebSocket message.
        if message:
            self.sock.sendall(self.ws.send(ws.TextMessage(data=message.decode())))

    def receive(self) -> None:
        """Read from the socket once; feed any whole text message to the JSON-RPC side.
        Afterwards ``self.rpc.events()`` gives the JSON-RPC events that arrived."""
        data = self.sock.recv(65536)
        self.ws.receive_data(data or None)  # wsproto says EOF with None, ezipc_proto with b""
        for event in self.ws.events():
            if isinstance(event, ws.Request):  # server: the client's opening handshake
                self.sock.sendall(self.ws.send(ws.AcceptConnection()))
                self.open = True
            elif isinstance(event, ws.AcceptConnection):  # client: the server accepted
                self.open = True
            elif isinstance(event, ws.TextMessage):
                self._parts.append(event.data)
                if event.message_finished:  # a long message may arrive in fragments
                    message = "".join(self._parts).encode()
                    self._parts.clear()
                    self._deliver(message)
            elif isinstance(event, ws.Ping):
                self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, ws.CloseConnection):
                self.close_code = event.code
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self.sock.sendall(self.ws.send(event.response()))  # answer the peer's close
                self.rpc.receive_data(b"")  # the WebSocket is closed: JSON-RPC's EOF
            elif isinstance(event, ws.RejectConnection):
                raise ConnectionError(f"the server refused the WebSocket: {event.status_code}")
        if not data:
            self.rpc.receive_data(b"")  # the TCP connection ended (without a close, or after one)

    def _deliver(self, message: bytes) -> None:
        if message:
            self.rpc.receive_data(message)
        else:
            # receive_data(b"") means EOF, so an empty message cannot be fed as a message:
            # answer it here with the parse error the connection would have given.
            self.send(Error(None, ErrorCode.PARSE_ERROR, "Parse error: empty message"))

    def close(self) -> None:
        """Start the WebSocket closing handshake; the peer's answer ends with ``Closed``."""
        self.rpc.send(Closed())  # we send nothing more (returns b"")
        self.sock.sendall(self.ws.send(ws.CloseConnection(code=1000, reason="done")))


# ---- the server --------------------------------------------------------------------


def answer(request: Request) -> Response | Error:
    params = request.params
    if request.method == "subtract" and isinstance(params, list) and len(params) == 2:
        return Response(request.id, params[0] - params[1])
    if request.method == "sum" and isinstance(params, list):
        return Response(request.id, sum(params))
    if request.method == "upper" and isinstance(params, dict) and "text" in params:
        return Response(request.id, str(params["text"]).upper())
    if request.method in ("subtract", "sum", "upper"):
        return Error(request.id, ErrorCode.INVALID_PARAMS, "Invalid params")
    return Error(request.id, ErrorCode.METHOD_NOT_FOUND, f"Method not found: {request.method}")


def serve(listener: socket.socket) -> None:
    sock, _ = listener.accept()
    sock.settimeout(5)
    server = RpcOverWebSocket(sock, ConnectionType.SERVER)
    while True:
        server.receive()
        for event in server.rpc.events():
            if isinstance(event, Request):
                server.send(answer(event))  # for a batch, the last answer sends the whole reply
            elif isinstance(event, Notification):
                print(f"server: notification {event.method} {event.params}")
                if event.method == "hello" and isinstance(event.params, dict):
                    server.send(Notification("greeting", [f"Hello, {event.params.get('name')}!"]))
            elif isinstance(event, InvalidMessage):
                server.send_message(event.reply)
            elif isinstance(event, Closed):
                print("server: the client closed the WebSocket")
                sock.close()  # RFC 6455: the server closes the TCP connection first
                return


def run_server(listener: socket.socket, failures: list[BaseException]) -> None:
    try:
        serve(listener)
    except BaseException as exc:  # reported by the main thread, so the program fails
        failures.append(exc)


# ---- the client --------------------------------------------------------------------


def main() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # port 0: any free port
    listener.settimeout(5)
    host, port = listener.getsockname()[:2]
    failures: list[BaseException] = []
    thread = threading.Thread(target=run_server, args=(listener, failures))
    thread.start()

    sock = socket.create_connection((host, port), timeout=5)
    client = RpcOverWebSocket(sock, ConnectionType.CLIENT)
    sock.sendall(client.ws.send(ws.Request(host=f"{host}:{port}", target="/rpc")))
    while not client.open:
        client.receive()
    print(f"client: WebSocket open to ws://{host}:{port}/rpc")

    calls: dict[Id, str] = {}

    def call(method: str, params: list[object] | dict[str, object]) -> Request:
        request = Request(method, params, client.rpc.next_id())
        calls[request.id] = f"{method} {params}"
        return request

    # Sent first, so that its answering notification arrives before the last answer.
    client.send(Notification("hello", {"name": "ws-client"}))
    client.send(call("subtract", [42, 23]))
    client.send(call("upper", {"text": "json-rpc over websocket"}))
    client.send(call("divide", [1, 0]))
    # A batch is one WebSocket message; so is the server's reply to it.
    client.send_message(client.rpc.send_batch([call("sum", [1, 2, 4]), call("subtract", [23, 42])]))

    while client.rpc.awaiting:
        client.receive()
        for event in client.rpc.events():
            if isinstance(event, Response):
                print(f"client: {calls.pop(event.id)} = {event.result!r}")
            elif isinstance(event, Error):
                print(f"client: {calls.pop(event.id)} -> error {event.code}: {event.message}")
            elif isinstance(event, Notification):
                print(f"client: server notification {event.method} {event.params}")
            elif isinstance(event, Closed):
                raise ConnectionError("the server went away early")

    client.close()
    while not isinstance(client.rpc.next_event(), Closed):  # wait for the server's close reply
        client.receive()
    sock.close()
    thread.join(timeout=5)
    listener.close()
    if failures:
        raise failures[0]
    print(f"client: WebSocket closed with code {client.close_code}")


if __name__ == "__main__":
    main()
