"""The blocking driver's endpoints: ``Client`` (and ``connect``, ``connect_subprocess``)
and ``Server``, which open and accept connections (the server's I/O thread accepts, and
does TLS handshakes without blocking) and hand each one to a ``Remote``
(``_blocking.py``)."""

from __future__ import annotations

import functools
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ezipc_proto import (
    AUTH_METHOD,
    AUTH_TIMEOUT,
)

from ._address import DEFAULT_ADDRESS, WEB_KINDS, Address, parse_address
from ._blocking import Remote, _local
from ._blocking_io import Loop, PipeStream, SocketStream, Stream, TLSStream, linger, monotonic
from ._blocking_runners import Pool
from ._options import Options
from ._peer import PeerCredentials, format_sockaddr, peer_credentials
from ._registry import Hooks, log
from ._serving import ConnectError, ServerBase, announcing, listen_sockets

if TYPE_CHECKING:
    import ssl as _ssl

__all__ = ["Client", "Server", "connect", "connect_subprocess"]

_HANDSHAKE_TIMEOUT = 10.0  # a TLS handshake, unless a connect timeout is given


# ---- clients ---------------------------------------------------------------------------

_client_loop: Loop | None = None
_client_loop_lock = threading.Lock()


def _shared_loop() -> Loop:
    """The I/O thread of every blocking client in this process (started on first use)."""
    global _client_loop
    with _client_loop_lock:
        if _client_loop is None:
            _client_loop = Loop("ezipc-client-io")
            _client_loop.start_thread()
        return _client_loop


def _mark_ours() -> None:
    _local.ours = True


def _open_socket(addr: Address, timeout: float | None) -> socket.socket:
    if addr.kind == "tcp":
        sock = socket.create_connection((addr.host, addr.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(addr.path)
    except BaseException:
        sock.close()
        raise
    return sock


def _handshake(stream: TLSStream, deadline: float) -> None:
    """Drive a client's TLS handshake to the end, waiting on the socket (this thread)."""

    while not stream.handshake():
        left = deadline - monotonic()
        if left <= 0 or not select.select([stream.sock], [], [], left)[0]:
            raise TimeoutError("the TLS handshake did not complete in time")


def _names(sock: socket.socket) -> tuple[str, str]:
    def name(get: Callable[[], Any]) -> str:
        try:
            return format_sockaddr(sock.family, get())
        except OSError:
            return ""

    return name(sock.getsockname), name(sock.getpeername)


class Client(Hooks):
    """A client whose hooks serve the requests and notifications its peer sends (in a
    pool of up to ``max_workers`` threads shared by its connections).

    ``client.connect(address)`` returns a connected ``Remote``; use it as a context
    manager (``with client.connect(...) as remote:``) or close it yourself.
    """

    def __init__(self, framing: str = "ndjson", **options: Any) -> None:
        super().__init__()
        self.options = Options.build({"framing": framing}, options)
        self._pool: Pool | None = None
        self._pool_users = 0
        self._pool_lock = threading.Lock()

    def connect(
        self,
        address: str | Address = DEFAULT_ADDRESS,
        *,
        ssl: _ssl.SSLContext | None = None,
        timeout: float | None = None,
        server_hostname: str | None = None,
        **options: Any,
    ) -> Remote:
        """Connect (within ``timeout`` seconds, TLS handshake included) and return the
        ``Remote``. ``ssl``: an ``SSLContext`` for TLS over TCP (``server_hostname``
        defaults to the address's host). Raises ``ConnectError`` (naming the address) if
        the connection cannot be made."""
        opts = self.options.replace(**options)
        addr = parse_address(address)
        context = ssl if ssl is not None else opts.ssl
        if addr.kind == "stdio":
            stdio = PipeStream(sys.stdin.fileno(), sys.stdout.fileno())
            return self._authenticated(self._attach(stdio, opts, "stdio", "stdio"), opts, timeout)
        if addr.kind in WEB_KINDS:
            from ._web_blocking import open_web_stream  # (wsproto and h11: the web extra)

            web = open_web_stream(addr, opts, context, timeout, server_hostname)
            return self._authenticated(self._attach(web, opts, web.local, str(addr)), opts, timeout)
        if context is not None and addr.kind != "tcp":
            raise ValueError("TLS (ssl=) is for tcp:// addresses")
        try:
            sock = _open_socket(addr, timeout)
        except OSError as exc:
            raise ConnectError.from_error(str(addr), exc) from exc
        local, peer = _names(sock)
        stream: Stream
        try:
            if context is not None:
                stream = TLSStream(
                    sock, context, server_side=False, server_hostname=server_hostname or addr.host
                )
                _handshake(stream, monotonic() + (timeout if timeout is not None else _HANDSHAKE_TIMEOUT))
            else:
                stream = SocketStream(sock)
        except (OSError, ValueError) as exc:
            sock.close()
            raise ConnectError.from_error(str(addr), exc) from exc
        remote = self._attach(stream, opts, local, peer or str(addr), peer_credentials(sock))
        return self._authenticated(remote, opts, timeout)

    def connect_subprocess(
        self,
        argv: Sequence[str],
        *,
        framing: str | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stderr: Any = None,
        terminate_timeout: float = 2.0,
        **options: Any,
    ) -> Remote:
        """Start ``argv`` and talk to it over its stdin/stdout; returns the ``Remote``.
        On close: close the child's stdin, wait up to ``terminate_timeout`` seconds for
        it to exit, then terminate it, and kill it if it still runs. ``stderr`` is
        inherited unless given (e.g. ``subprocess.DEVNULL``); the ``Popen`` object is in
        ``remote.data["process"]``."""
        if framing is not None:
            options["framing"] = framing
        opts = self.options.replace(**options)
        if opts.framing == "auto":
            opts = opts.replace(framing="ndjson")
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=cwd,
            env=env,
            bufsize=0,
        )
        assert process.stdin is not None and process.stdout is not None
        stream = PipeStream(
            process.stdout.fileno(),
            process.stdin.fileno(),
            close_read=process.stdout.close,
            close_write=process.stdin.close,
        )
        remote = self._attach(stream, opts, "stdio", f"subprocess:{process.pid}")
        remote.data["process"] = process
        # Closing: its stdout ends when it exits, so the wait for that (the linger) is the
        # wait for it to exit; terminate_timeout in all, from close(), as the async client.
        remote._linger = terminate_timeout
        remote._finalizers.append(lambda at: _end_process(process, terminate_timeout, at))
        return remote

    def _authenticated(self, remote: Remote, opts: Options, timeout: float | None) -> Remote:
        """With ``auth_token``: present it first; a refusal raises its ``RemoteError``
        (the connection is closed)."""
        if opts.auth_token is not None and not remote._stream.presents_token:
            try:
                remote.request(AUTH_METHOD, {"token": opts.auth_token}, timeout=timeout or AUTH_TIMEOUT)
            except BaseException:
                remote.close()
                raise
        return remote

    def _attach(
        self, stream: Stream, opts: Options, local: str, peer: str, creds: PeerCredentials | None = None
    ) -> Remote:
        with self._pool_lock:
            if self._pool is None:
                self._pool = Pool(opts.max_workers, "ezipc-client-worker", initializer=_mark_ours)
            self._pool_users += 1
            pool = self._pool
        loop = _shared_loop()
        remote = Remote(
            stream, self, opts, pool, loop, local_address=local, remote_address=peer, peer_credentials=creds
        )

        def finished() -> None:
            log.info("connection to %s closed (%s)", remote.remote_address, remote._session.close_reason)
            with self._pool_lock:
                self._pool_users -= 1
                if self._pool_users == 0 and self._pool is not None:
                    self._pool.shutdown(wait=False)
                    self._pool = None

        remote._on_finish.append(finished)
        log.info("connected to %s", peer)
        loop.call_soon(remote._begin)
        return remote


def _end_process(process: subprocess.Popen[bytes], timeout: float, since: float) -> None:
    """Wait until ``timeout`` seconds after ``since`` (its stdin was closed then) for
    ``process`` to exit, then terminate it, wait ``timeout`` more, then kill it."""
    try:
        process.wait(max(0.0, since + timeout - monotonic()))
        return
    except subprocess.TimeoutExpired:
        process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def connect(
    address: str | Address = DEFAULT_ADDRESS,
    *,
    framing: str = "ndjson",
    ssl: _ssl.SSLContext | None = None,
    timeout: float | None = None,
    server_hostname: str | None = None,
    **options: Any,
) -> Remote:
    """``with connect(address) as remote:``, a ``Client`` with no hooks."""
    return Client(framing, **options).connect(
        address, ssl=ssl, timeout=timeout, server_hostname=server_hostname
    )


def connect_subprocess(argv: Sequence[str], *, framing: str = "ndjson", **options: Any) -> Remote:
    """``with connect_subprocess(["prog", "arg"]) as remote:``, with no hooks."""
    keys = ("cwd", "env", "stderr", "terminate_timeout")
    kwargs = {k: options.pop(k) for k in keys if k in options}
    return Client(framing, **options).connect_subprocess(argv, **kwargs)


# ---- the server ----------------------------------------------------------------------


class Server(ServerBase[Remote]):
    """Serves connections with the hooks registered on it: one I/O thread (the one that
    serves) for every connection, and a pool of ``max_workers`` threads for handlers.

    ``serve_forever(*addresses)`` serves until ``shutdown()`` (from any thread, a handler
    included); ``start(*addresses)`` does the same and also shuts down on SIGINT/SIGTERM
    (main thread); ``serve_in_thread(*addresses)`` serves in a background thread and
    returns the bound addresses (``ready`` is set once listening). No address means
    ``tcp://127.0.0.1:9002``. ``framing="auto"`` (the default) answers each connection in
    the framing it speaks.

    Handlers may be plain functions or ``async def`` (a coroutine runs to completion with
    ``asyncio.run`` in the handler's thread). A running handler cannot be interrupted;
    one that takes a ``cancelled`` parameter gets a ``threading.Event`` to look at.
    """

    def __init__(self, framing: str = "auto", **options: Any) -> None:
        super().__init__(framing, **options)
        #: Set while the server is listening (``addresses`` is then filled in).
        self.ready = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._state_lock = threading.Lock()
        self._loop: Loop | None = None
        self._pool: Pool | None = None
        self._thread: threading.Thread | None = None
        self._connections = 0  # accepted and not ended (handshaking included)
        self._shutting_down = False
        self._listeners: list[socket.socket] = []

    # ---- running ---------------------------------------------------------------------

    def start(self, *addresses: str, ready: Callable[[list[str]], Any] | None = None) -> None:
        """Serve until SIGINT or SIGTERM (or ``shutdown()``), then shut down gracefully.
        Blocks. Signals are caught only when called from the main thread. Where it
        listens is logged (on stderr, unless the application set up logging).

        ``ready(addresses)``, if given, is called once listening, with the bound addresses
        (e.g. to print the port chosen for ``tcp://127.0.0.1:0``)."""
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, frame: Any) -> None:
                self._log_signal(signum)
                for sig, handler in previous.items():  # a second signal acts as usual
                    signal.signal(sig, handler)
                self.shutdown(wait=False)

            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            with announcing():
                self.serve_forever(*addresses, ready=ready)
        finally:
            for sig, handler in previous.items():
                if signal.getsignal(sig) is not handler:
                    signal.signal(sig, handler)

    run = start  # the original EZ-IPC's name for serving

    def serve_in_thread(self, *addresses: str, timeout: float = 10.0) -> list[str]:
        """Serve in a daemon thread; return the bound addresses once listening (raises
        what binding raised). Stop it with ``shutdown()``."""
        errors: list[BaseException] = []

        def main() -> None:
            try:
                self.serve_forever(*addresses)
            except BaseException as exc:
                errors.append(exc)
                self.ready.set()
                if not isinstance(exc, Exception):
                    raise

        self.ready.clear()
        self._thread = threading.Thread(target=main, name="ezipc-server", daemon=True)
        self._thread.start()
        if not self.ready.wait(timeout):
            raise TimeoutError("the server did not start listening in time")
        if errors:
            raise errors[0]
        return list(self.addresses)

    def shutdown(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """Shut down gracefully (from any thread): stop accepting, let requests in flight
        finish within ``shutdown_timeout``, answer the rest with SHUTTING_DOWN, close the
        connections. With ``wait``, block until done (not when called from a handler or
        from the serving thread itself)."""
        with self._state_lock:
            if self._stopped.is_set() or self._loop is None:
                return  # not serving
            self._loop.call_soon(self._begin_shutdown)
            ident = self._loop.ident
        if wait and threading.get_ident() != ident and not _local.ours:
            self._stopped.wait(timeout)

    terminate = shutdown

    def serve_forever(self, *addresses: str, ready: Callable[[list[str]], Any] | None = None) -> None:
        """Serve until ``shutdown()``, then shut down gracefully. Blocks. ``ready``: as
        for :meth:`start`."""
        with self._state_lock:
            if not self._stopped.is_set():
                raise RuntimeError("this server is already serving")
            self._stopped.clear()
            self._shutting_down = False
            loop = self._loop = Loop("ezipc-server")
        parsed = [parse_address(a) for a in (addresses or (DEFAULT_ADDRESS,))]
        unix_paths: list[str] = []
        self._pool = Pool(self.options.max_workers, "ezipc-worker", initializer=_mark_ours)
        try:
            for addr in parsed:
                if addr.kind == "stdio":
                    continue
                socks = listen_sockets(addr, self.options.unix_mode)
                if addr.kind == "unix":
                    unix_paths.append(addr.path)
                for sock in socks:
                    self._listeners.append(sock)
                    sock.setblocking(False)
                    loop.watch(sock.fileno(), read=functools.partial(self._accept, sock, addr))
            self.addresses = [format_sockaddr(sock.family, sock.getsockname()) for sock in self._listeners]
            if any(a.kind == "stdio" for a in parsed):
                self.addresses.append("stdio")
                loop.call_soon(self._serve_stdio)
            self._log_listening()
            self.ready.set()
            if ready is not None:
                ready(list(self.addresses))
            _local.ours = True
            loop.run()
        finally:
            _local.ours = False
            self._close_listeners()
            for path in unix_paths:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            self._pool.shutdown(wait=False)
            self.ready.clear()
            self.addresses = []
            self._log_stopped()
            with self._state_lock:
                loop.close()
                self._loop = None
                self._stopped.set()

    def _close_listeners(self) -> None:
        for sock in self._listeners:
            if self._loop is not None:
                self._loop.watch(sock.fileno(), read=None)
            sock.close()
        self._listeners = []

    def _begin_shutdown(self) -> None:
        if self._shutting_down:
            return
        self._shutting_down = True
        self._close_listeners()
        remotes = list(self.remotes)
        self._log_shutdown(len(remotes))
        # Every connection drains before any acts on it: one closed at once (nothing to
        # finish) fails the calls a handler of another makes on it, and that handler's
        # answer is then the shutdown's -32031, not -32603 (its session must be draining).
        now = monotonic()
        for remote in remotes:
            with remote._lock:
                remote._session.shutdown(now)
        for remote in remotes:
            remote._kick()
        self._stop_if_done()

    def _stop_if_done(self) -> None:
        if self._shutting_down and not self._connections and self._loop is not None:
            self._loop.stop()

    # ---- accepting (on the I/O thread) ---------------------------------------------------

    def _accept(self, sock: socket.socket, addr: Address) -> None:
        while not self._shutting_down:
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # EMFILE and friends: pause accepting briefly, do not spin
                log.warning("accept failed on %s: %s", addr, exc)
                self._pause_accepting(sock, addr)
                return
            self._accepted(conn, addr)

    def _pause_accepting(self, sock: socket.socket, addr: Address) -> None:
        loop = self._loop
        assert loop is not None
        loop.watch(sock.fileno(), read=None)

        def resume(now: float) -> None:
            if not self._shutting_down:
                loop.watch(sock.fileno(), read=lambda: self._accept(sock, addr))

        loop.call_at(monotonic() + 0.1, resume)

    def _accepted(self, conn: socket.socket, addr: Address) -> None:
        assert self._loop is not None
        creds = peer_credentials(conn)
        local, peer = _names(conn)
        if peer == "unix:" and creds is not None:
            peer = f"unix:pid={creds.pid},uid={creds.uid}"
        peer = peer or str(addr)
        refusal = self._refusal(creds, peer, self._connections)
        if addr.kind == "tcp":
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # (macOS: EINVAL once the peer has reset; served, it ends at its first read)
                pass
        if refusal == b"":
            conn.close()
            return
        self._connections += 1
        stream: Stream = SocketStream(conn)
        if self.options.ssl is not None and addr.kind == "tcp":
            stream = TLSStream(conn, self.options.ssl, server_side=True, server_hostname=None)
        then: Callable[[Stream], object]
        if refusal is None:
            then = functools.partial(self._serve, local=local, peer=peer, creds=creds)
        else:
            then = functools.partial(self._refuse, refusal=refusal)
        if isinstance(stream, TLSStream):
            self._handshake(
                stream, peer, then, monotonic() + (self.options.message_timeout or _HANDSHAKE_TIMEOUT)
            )
        else:
            then(stream)

    def _handshake(
        self, stream: TLSStream, peer: str, then: Callable[[Stream], object], deadline: float
    ) -> None:
        """Drive a TLS handshake on the loop; ``then(stream)`` once it is done."""
        loop = self._loop
        assert loop is not None

        def step(now: float | None = None) -> None:
            if stream.done:
                return
            try:
                if not stream.handshake():
                    if now is None or now < deadline:
                        return
                    raise TimeoutError("the TLS handshake did not complete in time")
            except (OSError, ValueError) as exc:
                loop.watch(stream.rfd, read=None)
                stream.done = True
                log.warning("%s: TLS handshake failed: %s", peer, exc)
                stream.close()
                self._connections -= 1
                self._stop_if_done()
                return
            loop.watch(stream.rfd, read=None)
            then(stream)

        loop.watch(stream.rfd, read=step)
        loop.call_at(deadline, step)
        step()

    def _refuse(self, stream: Stream, refusal: bytes) -> None:
        assert self._loop is not None
        try:
            stream.write(refusal)
        except OSError:
            pass

        def closed() -> None:
            stream.close()
            self._connections -= 1
            self._stop_if_done()

        linger(self._loop, stream, 1.0, closed)

    def _serve(self, stream: Stream, local: str, peer: str, creds: PeerCredentials | None) -> Remote:
        assert self._loop is not None and self._pool is not None
        remote = Remote(
            stream,
            self,
            self.options,
            self._pool,
            self._loop,
            server=self,
            local_address=local,
            remote_address=peer,
            peer_credentials=creds,
        )
        self._add(remote, peer)

        def ended() -> None:
            self._remove(remote, peer, remote._session.close_reason)
            self._connection_ended()

        def finished() -> None:
            # On the loop, which accepts: a connection made once it has left
            # ``remotes`` finds its slot of max_connections free.
            loop = self._loop
            if loop is not None:
                loop.call_soon(ended)
            else:
                self._remove(remote, peer, remote._session.close_reason)

        remote._on_finish.append(finished)
        remote._begin()
        if self._shutting_down:
            remote._call(lambda s: s.shutdown(monotonic()))
        return remote

    def _connection_ended(self) -> None:
        self._connections -= 1
        self._stop_if_done()

    def _serve_stdio(self) -> None:
        if self.options.allowed_uids is not None:  # (no credentials: fail closed)
            log.warning("refusing stdio: peer credentials None not allowed")
            self._begin_shutdown()
            return
        self._connections += 1
        remote = self._serve(PipeStream(sys.stdin.fileno(), sys.stdout.fileno()), "stdio", "stdio", None)
        remote._on_finish.append(lambda: self.shutdown(wait=False))  # stdin closed: nothing more can come

    # ---- calling every peer ----------------------------------------------------------

    def broadcast(
        self, method: str, params: Any = None, *, exclude: Remote | Iterable[Remote] | None = None
    ) -> None:
        """Notify every connected peer (but those in ``exclude``, e.g. the sender)."""
        self._notify_all(method, params, exclude)

    def broadcast_request(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = None,
        exclude: Remote | Iterable[Remote] | None = None,
    ) -> dict[Remote, Any]:
        """Call every connected peer at once; map each ``Remote`` to its result or to the
        exception its call ended with."""
        calls = self._request_all(method, params, timeout, exclude)
        return {remote: _outcome(call) for remote, call in calls.items()}

    bcast_notif = broadcast  # the original EZ-IPC's names
    bcast_request = broadcast_request


def _outcome(call: Future[Any] | Exception) -> Any:
    """What a broadcast call ended with: its result, or its exception (also the one that
    kept it from being sent)."""
    if not isinstance(call, Future):
        return call
    try:
        return call.result()
    except Exception as exc:
        return exc
