"""Transports: Unix sockets (mode 0600, peer credentials, allowed uids, stale files), TLS
and mutual TLS (certificates made by trustme), a subprocess over stdio, and IPv6."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
import stat
import struct
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from ezipc_adapters.blocking import (
    Client,
    ConnectError,
    ConnectionClosed,
    Remote,
    Server,
    connect,
    connect_subprocess,
)

from .conftest import interrupted_elsewhere, raw_connect, serving

pytestmark = pytest.mark.timeout(30)

unix_only = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets here")


@unix_only
def test_unix_socket_mode_and_peer_credentials(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    server = Server()
    seen: list[Any] = []

    @server.hook_request("whoami")
    def whoami(remote: Remote) -> Any:
        seen.append(remote.peer_credentials)
        return remote.peer_credentials.uid if remote.peer_credentials else None

    with serving(server, f"unix:{path}") as addresses:
        assert addresses == [f"unix:{path}"]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with connect(f"unix:{path}") as remote:
            assert remote.request("whoami") == os.getuid()
            assert remote.remote_address == f"unix:{path}"
            assert remote.peer_credentials is not None and remote.peer_credentials.pid == os.getpid()
    assert seen[0].pid == os.getpid() and seen[0].gid == os.getgid()
    assert not path.exists()  # removed on shutdown


@unix_only
def test_unix_socket_mode_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "shared.sock"
    with serving(Server(unix_mode=0o660), f"unix://{path}"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660


@unix_only
def test_peers_not_in_allowed_uids_are_refused_before_anything_is_read(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    server = Server(allowed_uids={os.getuid() + 1})
    handled: list[Any] = []
    server.hook_request("ping", lambda: handled.append(1) or "pong")
    with serving(server, f"unix:{path}"), raw_connect(f"unix:{path}") as peer:
        try:
            peer.send({"jsonrpc": "2.0", "method": "ping", "id": 1})
        except OSError:
            pass
        assert peer.receive_eof() == b""
    assert handled == []
    allowed = Server(allowed_uids={os.getuid()})
    allowed.hook_request("ping", lambda: "pong")
    with serving(allowed, f"unix:{path}"), connect(f"unix:{path}") as remote:
        assert remote.request("ping") == "pong"


@unix_only
def test_a_stale_socket_file_is_replaced_and_a_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    server = Server()
    server.hook_request("ping", lambda: "pong")
    with serving(server, f"unix:{path}"):
        with connect(f"unix:{path}") as remote:
            assert remote.request("ping") == "pong"
        with pytest.raises(OSError, match="already listening"):
            Server().serve_in_thread(f"unix:{path}")
    path.write_text("not a socket")
    with pytest.raises(FileExistsError):
        Server().serve_in_thread(f"unix:{path}")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_contexts(ca: trustme.CA, *, mutual: bool) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client_ctx)
    if mutual:
        server_ctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(server_ctx)
        ca.issue_cert("client@example.org").configure_cert(client_ctx)
    return server_ctx, client_ctx


def test_tls(ca: trustme.CA) -> None:
    server_ctx, client_ctx = tls_contexts(ca, mutual=False)
    server = Server(ssl=server_ctx)
    server.hook_request("echo", lambda x: x)
    big = "y" * 200_000
    with serving(server) as (address,):
        with connect(address, ssl=client_ctx, server_hostname="localhost", timeout=5) as remote:
            assert remote.request("echo", ["secret"]) == "secret"
            assert remote.request("echo", [big]) == big  # many TLS records each way
            futures = [remote.submit("echo", [i]) for i in range(50)]
            assert [f.result(timeout=5) for f in futures] == list(range(50))
            assert remote.peer_certificate is not None
            assert remote.peer_certificate["subjectAltName"][0] == ("DNS", "localhost")
        with raw_connect(address) as plain:  # no TLS: the handshake fails, the server lives on
            plain.send({"jsonrpc": "2.0", "method": "echo", "params": [1], "id": 1})
            plain.receive_eof()
        with pytest.raises(ConnectError) as info:  # a client that does not trust the server's CA
            connect(address, ssl=ssl.create_default_context(), server_hostname="localhost", timeout=5)
        assert isinstance(info.value.__cause__, ssl.SSLError) and address in str(info.value)
        with connect(address, ssl=client_ctx, server_hostname="localhost") as remote:
            assert remote.request("echo", [2]) == 2


def test_mutual_tls_shows_the_client_certificate_to_handlers(ca: trustme.CA) -> None:
    server_ctx, client_ctx = tls_contexts(ca, mutual=True)
    server = Server(ssl=server_ctx)

    @server.hook_request("whoami")
    def whoami(remote: Remote) -> Any:
        assert remote.peer_certificate is not None
        return remote.peer_certificate["subjectAltName"]

    with serving(server) as (address,):
        with connect(address, ssl=client_ctx, server_hostname="localhost") as remote:
            assert remote.request("whoami") == [["email", "client@example.org"]]
        anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ca.configure_trust(anonymous)
        with pytest.raises((ssl.SSLError, ConnectionClosed, OSError)):
            with connect(address, ssl=anonymous, server_hostname="localhost", timeout=5) as remote:
                remote.request("whoami", timeout=5)  # TLS 1.3: refused after the handshake


@pytest.mark.parametrize("wait", ["request", "result"])
def test_a_ctrl_c_that_another_thread_takes_interrupts_a_caller_over_tls(ca: trustme.CA, wait: str) -> None:
    # Over TLS the I/O thread reads: the caller waits on a lock (request) or on the
    # future's condition (result), which must wake for the signal too.
    server_ctx, client_ctx = tls_contexts(ca, mutual=False)
    server = Server(ssl=server_ctx)
    release = threading.Event()
    server.hook_request("slow", lambda: release.wait(20))
    with serving(server) as (address,):
        try:
            with connect(address, ssl=client_ctx, server_hostname="localhost") as remote:
                with interrupted_elsewhere(remote.close):
                    if wait == "request":
                        remote.request("slow")
                    else:
                        remote.submit("slow").result()
        finally:
            release.set()


def test_a_tls_connection_ends_though_its_peer_left_before_the_answer(ca: trustme.CA) -> None:
    # The answer goes out to a closed socket, which resets the connection; the TLS close
    # that follows (close_notify) then fails with a broken pipe. It must still end.
    server_ctx, client_ctx = tls_contexts(ca, mutual=False)
    server = Server(ssl=server_ctx)
    started, release, ended = threading.Event(), threading.Event(), threading.Event()
    server.hook_request("slow", lambda: (started.set(), release.wait(10))[1])
    server.hook_disconnect(lambda remote: ended.set())
    with serving(server) as (address,):
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        with socket.create_connection((host, int(port))) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="localhost") as peer:
                peer.sendall(b'{"jsonrpc": "2.0", "method": "slow", "id": 1}\n')
                assert started.wait(5)
                peer.settimeout(0.2)
                with contextlib.suppress(OSError):  # our close_notify (theirs does not come)
                    peer.unwrap()
        release.set()  # (answered now, to nobody)
        assert ended.wait(10)


@pytest.mark.parametrize("sends", [False, True])
def test_a_tls_client_that_resets_right_after_the_handshake_does_not_stop_the_server(
    ca: trustme.CA, sends: bool
) -> None:
    # The async adapter's twin found a server that stopped (tests/aio/test_transports.py).
    server_ctx, client_ctx = tls_contexts(ca, mutual=False)
    server = Server(ssl=server_ctx)
    server.hook_request("echo", lambda x: x)
    with serving(server) as (address,):
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        for _ in range(10):
            with socket.create_connection((host, int(port))) as raw:
                peer = client_ctx.wrap_socket(raw, server_hostname="localhost")
                if sends:
                    peer.sendall(b'{"jsonrpc": "2.0", "method": "echo", "params": [1], "id": 1}\n')
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
                peer.close()
        with connect(address, ssl=client_ctx, server_hostname="localhost", timeout=5) as remote:
            assert remote.request("echo", [2]) == 2
        deadline = time.monotonic() + 10
        while server.remotes and time.monotonic() < deadline:  # and each reset one has ended
            time.sleep(0.01)
        assert not server.remotes


def test_tls_with_server_to_client_calls(ca: trustme.CA) -> None:
    server_ctx, client_ctx = tls_contexts(ca, mutual=False)
    server = Server(ssl=server_ctx)
    client = Client(ssl=client_ctx)
    client.hook_request("client/name", lambda: "me")
    server.hook_request("hello", lambda remote: "hello " + remote.request("client/name"))
    with serving(server) as (address,), client.connect(address, server_hostname="localhost") as remote:
        assert remote.request("hello") == "hello me"


STDIO_SERVER = textwrap.dedent("""
    import sys
    from ezipc_adapters.blocking import Server
    server = Server(framing=sys.argv[1])

    @server.hook_request("subtract")
    def subtract(minuend, subtrahend):
        return minuend - subtrahend

    @server.hook_request("ask_parent")
    def ask_parent(remote):
        return remote.request("parent/name")

    server.hook_request("pid", lambda: __import__("os").getpid())
    server.start("stdio")
""")


@pytest.mark.parametrize("framing", ["ndjson", "content-length"])
def test_stdio_with_a_subprocess(framing: str, tmp_path: Path) -> None:
    script = tmp_path / "server.py"
    script.write_text(STDIO_SERVER)
    client = Client(framing=framing)
    client.hook_request("parent/name", lambda: "the parent")
    with client.connect_subprocess([sys.executable, str(script), framing]) as remote:
        assert remote.request("subtract", [42, 23], timeout=10) == 19
        assert remote.request("ask_parent", timeout=5) == "the parent"
        process = remote.data["process"]
        assert remote.request("pid") == process.pid
        assert remote.remote_address == f"subprocess:{process.pid}"
    assert process.poll() == 0  # stdin closed: it shut down by itself


def test_a_subprocess_that_ignores_eof_is_terminated(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text("import signal, time\nwhile True: time.sleep(1)\n")
    with connect_subprocess([sys.executable, str(script)], terminate_timeout=0.3) as remote:
        pass
    assert remote.data["process"].poll() is not None
    assert remote.closed


def test_a_subprocess_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "very_stubborn.py"
    script.write_text("import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                      "print('{\"jsonrpc\":\"2.0\",\"method\":\"ready\"}', flush=True)\n"
                      "while True: time.sleep(1)\n")
    client = Client()
    ready = threading.Event()
    client.hook_notif("ready", ready.set)
    with client.connect_subprocess([sys.executable, str(script)], terminate_timeout=0.3) as remote:
        assert ready.wait(10)  # SIGTERM is ignored from here on
    assert remote.data["process"].returncode == -9


def test_a_subprocess_that_dies_fails_pending_calls(tmp_path: Path) -> None:
    script = tmp_path / "dies.py"
    script.write_text("import sys\nsys.stdin.readline()\nsys.exit(3)\n")
    with connect_subprocess([sys.executable, str(script)]) as remote:
        with pytest.raises(ConnectionClosed):
            remote.request("anything", timeout=10)


def _ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_available(), reason="no IPv6 loopback")
def test_ipv6() -> None:
    server = Server()
    server.hook_request("where", lambda remote: remote.remote_address)
    with serving(server, "tcp://[::1]:0") as (address,):
        assert address.startswith("tcp://[::1]:")
        with connect(address) as remote:
            assert remote.request("where") == remote.local_address
            assert remote.remote_address == address


def test_an_accepted_socket_whose_options_cannot_be_set_is_still_served(monkeypatch: pytest.MonkeyPatch) -> None:
    # macOS answers setsockopt(TCP_NODELAY) with EINVAL once the peer has reset: the
    # server's accept callback raised, and the connection was neither served nor closed.
    server = Server()
    server.hook_request("echo", lambda x: x)
    with serving(server) as (address,):
        port = int(address.rsplit(":", 1)[1])
        setsockopt = socket.socket.setsockopt

        def failing(self: socket.socket, level: int, option: int, *value: Any) -> None:
            if option == socket.TCP_NODELAY and self.getsockname()[1] == port:  # (the server's side)
                raise OSError(errno.EINVAL, "Invalid argument")
            setsockopt(self, level, option, *value)

        monkeypatch.setattr(socket.socket, "setsockopt", failing)
        with connect(address, timeout=5) as remote:
            assert remote.request("echo", [1], timeout=5) == 1
