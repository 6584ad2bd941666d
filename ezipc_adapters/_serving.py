"""What the two drivers share beyond the session: a server's set of peers, admitting a
new connection (or refusing it), broadcasting, errors that name their address, and
telling where a server listens."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from ezipc_proto import Connection, ConnectionClosed, Error, ErrorCode, LimitExceeded, Session, Stats

from ._address import WEB_KINDS, Address
from ._options import Options
from ._peer import PeerCredentials, free_unix_path
from ._registry import Hooks, log

_ANNOUNCE = {"announce": True}

__all__ = [
    "RemoteBase",
    "ServerBase",
    "ConnectError",
    "ConnectTimeout",
    "bind_error",
    "announcing",
    "listen_sockets",
]


class _Peer(Protocol):
    """What a server needs of its drivers' ``Remote``."""

    @property
    def closed(self) -> bool: ...

    @property
    def admitted(self) -> bool: ...

    def notify(self, method: str, params: Any = None) -> Any: ...

    def _call_soon(self, method: str, params: Any, timeout: float | None) -> Any: ...


R = TypeVar("R", bound=_Peer)


class RemoteBase:
    """What a ``Remote`` is on every driver: its session (made with its options), its
    hooks, who the peer is, and the application's ``data`` dict."""

    def __init__(
        self,
        hooks: Hooks,
        options: Options,
        server: Any,
        *,
        local: str,
        peer: str,
        certificate: dict[str, Any] | None,
        credentials: PeerCredentials | None,
        now: float,
        framing: str | None = None,
    ) -> None:
        self._hooks = hooks
        self.options = options
        self.server = server
        self.data: dict[str, Any] = {}
        self.local_address = local
        self.remote_address = peer
        self.peer_certificate = certificate
        self.peer_credentials = credentials
        self._session: Session = options.session(
            now=now, name=peer, server=server is not None, framing=framing
        )

    def __repr__(self) -> str:
        return f"<Remote {self.remote_address} {'closed' if self.closed else 'open'}>"

    @property
    def stats(self) -> Stats:
        """Counters of this connection (a live object)."""
        return self._session.stats

    @property
    def closed(self) -> bool:
        """True once no more requests can be made (closed, or the peer sends nothing more)."""
        return not self._session.can_request

    @property
    def admitted(self) -> bool:
        """False while the server waits for this peer's authentication token."""
        return self._session.admitted

    @property
    def framing(self) -> str:
        return self._session.framing


class ConnectError(ConnectionError):
    """A connection could not be made (refused, no such socket, no route, a timeout, a
    failed TLS handshake...). ``address`` is where to; the original error is chained as
    ``__cause__`` and its ``errno`` kept. The same from every driver."""

    def __init__(self, address: str, why: str, errno: int | None = None) -> None:
        super().__init__(f"cannot connect to {address}: {why}")
        self.address = address
        self.errno = errno

    @classmethod
    def from_error(cls, address: str, exc: BaseException) -> ConnectError:
        """The error to raise ``from exc``, with its text and errno."""
        ssl = sys.modules.get("ssl")  # (not loaded: no TLS, and no SSLError)
        if isinstance(exc, OSError) and exc.errno and not (ssl is not None and isinstance(exc, ssl.SSLError)):
            why = os.strerror(exc.errno)  # (asyncio's says "Connect call failed (host, port)")
        elif isinstance(exc, OSError) and exc.strerror:
            why = exc.strerror
        else:
            why = str(exc) or type(exc).__name__
        kind = ConnectTimeout if isinstance(exc, TimeoutError) else cls
        return kind(address, why, exc.errno if isinstance(exc, OSError) else None)


class ConnectTimeout(ConnectError, TimeoutError):
    """A connection (and its TLS handshake) did not complete within the timeout given."""


def bind_error(address: str, exc: OSError) -> OSError:
    """The error to raise ``from exc`` (binding a listening socket), naming the address."""
    return OSError(exc.errno, f"cannot listen on {address}: {exc.strerror or exc}")


class ServerBase(Hooks, Generic[R]):
    """The part of a ``Server`` that both drivers share: its options, its peers, who may
    connect, and calls to every peer at once."""

    def __init__(self, framing: str = "auto", **options: Any) -> None:
        super().__init__()
        self.options = Options.build({"framing": framing}, options)
        self._remotes: set[R] = set()
        self._remotes_lock = threading.Lock()  # (the blocking driver's threads share it)
        #: The addresses being served (with the real port for port 0), once listening.
        self.addresses: list[str] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {' '.join(self.addresses) or 'not serving'}>"

    @property
    def remotes(self) -> frozenset[R]:
        """The connected peers."""
        with self._remotes_lock:
            return frozenset(self._remotes)

    # What start() shows on stderr when the application has not set up logging (the
    # life of the server, not each connection): lines marked "announce".

    def _log_listening(self) -> None:
        for address in self.addresses:
            log.info("serving on %s", address, extra=_ANNOUNCE)

    def _log_shutdown(self, connections: int) -> None:
        if connections:
            grace = self.options.shutdown_timeout
            log.info(
                "shutting down: %d connection(s), up to %.1fs for work in flight",
                connections,
                grace,
                extra=_ANNOUNCE,
            )

    @staticmethod
    def _log_signal(signum: int) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name, extra=_ANNOUNCE)

    @staticmethod
    def _log_stopped() -> None:
        log.info("server stopped", extra=_ANNOUNCE)

    def _refusal(self, credentials: PeerCredentials | None, where: str, connections: int) -> bytes | None:
        """Before serving a new connection (``connections`` are served already): None to
        serve it; ``b""`` to close it unread (a peer that ``allowed_uids`` leaves out
        learns nothing, not even that the server is busy); else the bytes to write
        before closing it (``max_connections`` reached)."""
        options = self.options
        if options.allowed_uids is not None and (
            credentials is None or credentials.uid not in options.allowed_uids
        ):
            log.warning("refusing %s: peer credentials %s not allowed", where, credentials)
            return b""
        if connections >= options.max_connections:
            log.warning("refusing %s: max_connections (%d) reached", where, options.max_connections)
            framing = "ndjson" if options.framing == "auto" else options.framing
            return Connection(framing).send(Error(None, ErrorCode.SERVER_BUSY, "Too many connections"))
        return None

    def _add(self, remote: R, peer: str) -> None:
        with self._remotes_lock:
            self._remotes.add(remote)
        log.info("connection from %s", peer)

    def _remove(self, remote: R, peer: str, reason: str) -> None:
        with self._remotes_lock:
            if remote not in self._remotes:
                return
            self._remotes.discard(remote)
        log.info("connection from %s closed (%s)", peer, reason)

    def _audience(self, exclude: R | Iterable[R] | None) -> list[R]:
        """Connected and admitted peers, minus ``exclude`` (one peer, or several)."""
        skip: set[Any] = set(exclude) if isinstance(exclude, Iterable) else {exclude}
        return [r for r in self.remotes if r.admitted and not r.closed and r not in skip]

    def _notify_all(self, method: str, params: Any, exclude: R | Iterable[R] | None) -> list[Any]:
        """Send a notification to every peer now; what each ``notify`` returned."""
        sent = []
        for remote in self._audience(exclude):
            try:
                sent.append(remote.notify(method, params))
            except ConnectionClosed:
                pass
        return sent

    def _request_all(
        self, method: str, params: Any, timeout: float | None, exclude: R | Iterable[R] | None
    ) -> dict[R, Any]:
        """Send a request to every peer now: each peer's call, or the exception that
        stopped it from being sent."""
        calls: dict[R, Any] = {}
        for remote in self._audience(exclude):
            try:
                calls[remote] = remote._call_soon(method, params, timeout)
            except (ConnectionClosed, LimitExceeded) as exc:
                calls[remote] = exc
        return calls


@contextlib.contextmanager
def announcing() -> Iterator[None]:
    """For ``Server.start()``: unless the application has set up logging, show on stderr
    where the server listens, its shutdown and its warnings, as uvicorn does."""
    if log.handlers or logging.getLogger().handlers:
        yield
        return
    ours = logging.StreamHandler(sys.stderr)
    ours.setFormatter(logging.Formatter("%(asctime)s ezipc: %(message)s", "%H:%M:%S"))
    ours.addFilter(lambda record: getattr(record, "announce", False) or record.levelno >= logging.WARNING)
    previous = log.level
    log.addHandler(ours)
    if previous == logging.NOTSET or previous > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(ours)
        log.setLevel(previous)


def listen_sockets(addr: Address, unix_mode: int) -> list[socket.socket]:
    """Listening sockets for a ``tcp://`` or ``unix:`` address (OSError naming it if not).
    A web address is refused: WebSocket and HTTP are an ASGI server's to serve."""
    if addr.kind in WEB_KINDS:
        raise ValueError(
            f"{addr}: ws:// and http:// addresses are served through an ASGI server: "
            "`ezipc serve TARGET --listen ADDRESS` runs uvicorn, or serve `server.asgi()` yourself "
            "(docs/web.md)"
        )
    if addr.kind == "unix":
        return [_listen_unix(addr.path, unix_mode)]
    return _listen_tcp(addr)


def _listen_tcp(addr: Address) -> list[socket.socket]:
    """Listening sockets for every address ``addr.host`` resolves to (one port for all)."""
    try:
        infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise bind_error(str(addr), exc) from exc
    socks: list[socket.socket] = []
    port = addr.port
    seen = set()
    try:
        for family, _, _, _, sockaddr in infos:
            if (family, sockaddr[0]) in seen:
                continue
            seen.add((family, sockaddr[0]))
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            if os.name == "posix":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((sockaddr[0], port, *sockaddr[2:]))
            sock.listen(socket.SOMAXCONN)
            port = sock.getsockname()[1]
    except BaseException as exc:
        for sock in socks:
            sock.close()
        if isinstance(exc, OSError):
            raise bind_error(str(addr), exc) from exc
        raise
    return socks


def _listen_unix(path: str, mode: int) -> socket.socket:
    try:
        free_unix_path(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, mode)  # before listen(): nobody can connect in between
            sock.listen(socket.SOMAXCONN)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise bind_error(f"unix:{path}", exc) from exc
    return sock
