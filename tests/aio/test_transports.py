"""Transports: TCP (IPv4 and IPv6), Unix sockets (mode, peer credentials, allowlist,
stale and live socket files), TLS and mutual TLS, the process's stdio through
``connect_subprocess``, and ``Server.start()`` in its own process (signals, graceful
shutdown, the default address)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import ssl
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from ezipc_adapters import (
    Client,
    ConnectError,
    ConnectionClosed,
    ErrorCode,
    PeerCredentials,
    Remote,
    RemoteError,
    Server,
    connect,
)

from ..announce import announcements
from .conftest import serving

trustme = pytest.importorskip("trustme")

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

SCRIPTS = Path(__file__).parent / "scripts"
STARTUP = 30.0  # a fresh interpreter importing anyio/trio on a loaded machine


def make_server(**options: Any) -> Server:
    server = Server(**options)

    @server.method
    def add(a: int, b: int) -> int:
        return a + b

    @server.method
    def whoami(remote: Remote) -> dict[str, Any]:
        return {
            "remote_address": remote.remote_address,
            "local_address": remote.local_address,
            "peer_credentials": remote.peer_credentials,
            "peer_certificate": remote.peer_certificate,
        }

    return server


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# ---- TCP -------------------------------------------------------------------------------


async def test_tcp_ipv4_reports_the_real_port() -> None:
    server = make_server()
    async with serving(server, "tcp://127.0.0.1:0") as bound:
        assert bound == server.addresses
        (address,) = bound
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        async with connect(address, timeout=10) as remote:
            assert await remote.request("add", [1, 2]) == 3
            assert remote.remote_address == address
            seen = await remote.request("whoami")
            assert seen["remote_address"] == remote.local_address
            assert seen["local_address"] == address
            assert seen["peer_credentials"] is None and seen["peer_certificate"] is None


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_tcp_ipv6() -> None:
    server = make_server()
    async with serving(server, "tcp://[::1]:0") as bound:
        assert bound == server.addresses
        (address,) = bound
        assert address.startswith("tcp://[::1]:")
        port = int(address.rsplit(":", 1)[1])
        assert port > 0
        with socket.create_connection(("::1", port), timeout=5):  # really listening there
            pass
        async with connect(address, timeout=10) as remote:
            assert await remote.request("add", {"a": 20, "b": 22}) == 42
            assert remote.remote_address == address
            assert remote.local_address.startswith("tcp://[::1]:")
            seen = await remote.request("whoami")
            assert seen["remote_address"] == remote.local_address
            assert seen["local_address"] == address


async def test_tcp_two_addresses_at_once() -> None:
    server = make_server()
    async with serving(server, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0") as bound:
        assert len(bound) == 2 and bound[0] != bound[1]
        for address in bound:
            async with connect(address, timeout=10) as remote:
                assert await remote.request("add", [2, 2]) == 4


# ---- Unix sockets ----------------------------------------------------------------------


@pytest.fixture
def sock_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for Unix sockets (tmp_path, unless its path is too long for one)."""
    if len(str(tmp_path)) < 80:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="ezipc-") as short:  # pragma: no cover
        yield Path(short)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


needs_unix = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
needs_peercred = pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="no SO_PEERCRED")


@needs_unix
async def test_unix_socket_is_0600_by_default(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    server = make_server()
    async with serving(server, f"unix:{path}") as bound:
        assert bound == [f"unix:{path}"]
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert _mode(path) == 0o600
        async with connect(f"unix:{path}", timeout=10) as remote:
            assert await remote.request("add", [1, 1]) == 2
            assert remote.remote_address == f"unix:{path}"
    assert not path.exists()  # removed on shutdown


@needs_unix
@pytest.mark.parametrize("mode", [0o660, 0o666, 0o400])
async def test_unix_mode_option(sock_dir: Path, mode: int) -> None:
    path = sock_dir / "s.sock"
    async with serving(make_server(unix_mode=mode), f"unix:{path}"):
        assert _mode(path) == mode


@needs_unix
async def test_unix_absolute_url_form(sock_dir: Path) -> None:
    path = sock_dir / "abs.sock"
    assert path.is_absolute()
    server = make_server()
    async with serving(server, f"unix://{path}") as bound:  # unix:///abs/path
        assert bound == [f"unix:{path}"]
        assert path.exists()
        async with connect(f"unix://{path}", timeout=10) as remote:
            assert await remote.request("add", [3, 4]) == 7


@needs_unix
@needs_peercred
async def test_unix_peer_credentials(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    me = (os.getpid(), os.getuid(), os.getgid())
    async with serving(make_server(), f"unix:{path}"), connect(f"unix:{path}", timeout=10) as remote:
        seen = await remote.request("whoami")
        assert tuple(seen["peer_credentials"]) == me  # the server saw us
        assert remote.peer_credentials == PeerCredentials(*me)  # and we see the server
        assert isinstance(remote.peer_credentials, PeerCredentials)
        assert remote.peer_credentials.uid == os.getuid()


@needs_unix
@needs_peercred
async def test_unix_server_remote_has_credentials_object(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    server = make_server()
    seen: list[Any] = []
    server.hook_connect(lambda remote: seen.append(remote.peer_credentials))
    async with serving(server, f"unix:{path}"), connect(f"unix:{path}", timeout=10) as remote:
        assert await remote.request("add", [0, 0]) == 0
    assert seen == [PeerCredentials(os.getpid(), os.getuid(), os.getgid())]


@needs_unix
@needs_peercred
async def test_unix_allowed_uids_allows_our_uid(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    server = make_server(allowed_uids={os.getuid()})
    async with serving(server, f"unix:{path}"), connect(f"unix:{path}", timeout=10) as remote:
        assert await remote.request("add", [5, 6]) == 11


@needs_unix
@needs_peercred
async def test_unix_allowed_uids_refuses_others_before_reading(
    sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = sock_dir / "s.sock"
    other = os.getuid() + 1
    server = make_server(allowed_uids={other})
    handled: list[Any] = []
    server.hook_connect(lambda remote: handled.append("connect"))
    server.hook_request("add", lambda a, b: handled.append("add"), replace=True)  # records instead
    server.hook_notif("note", lambda: handled.append("note"))
    async with serving(server, f"unix:{path}"):
        for _ in range(2):  # refused each time, and the server keeps listening
            async with connect(f"unix:{path}", timeout=10) as remote:
                await remote.notify("note")
                with anyio.fail_after(10), pytest.raises(ConnectionClosed):
                    await remote.request("add", [1, 2])
        assert server.remotes == frozenset()
    assert handled == []
    assert "not allowed" in caplog.text


@needs_unix
async def test_unix_stale_socket_is_replaced(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # a server that died without removing its socket
    dead.close()
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    with socket.socket(socket.AF_UNIX) as probe, pytest.raises(OSError):
        probe.connect(str(path))  # nobody listens there
    async with serving(make_server(), f"unix:{path}"), connect(f"unix:{path}", timeout=10) as remote:
        assert await remote.request("add", [1, 2]) == 3
        assert _mode(path) == 0o600


@needs_unix
async def test_unix_stale_socket_of_a_killed_process_is_replaced(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys, time\n"
            "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen()\n"
            "print('ready', flush=True); time.sleep(60)",
            str(path),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
    finally:
        child.kill()
        child.wait(10)
        assert child.stdout is not None
        child.stdout.close()
    assert path.exists()
    async with serving(make_server(), f"unix:{path}"), connect(f"unix:{path}", timeout=10) as remote:
        assert await remote.request("add", [2, 3]) == 5


@needs_unix
async def test_unix_live_socket_is_not_taken_over(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    first = make_server()
    first.hook_request("which", lambda: "first")
    async with serving(first, f"unix:{path}"):
        inode = os.stat(path).st_ino
        second = make_server()
        with anyio.fail_after(10), pytest.raises(OSError):
            await second.serve(f"unix:{path}")
        assert second.addresses == []
        assert os.stat(path).st_ino == inode  # the first server's socket is untouched
        async with connect(f"unix:{path}", timeout=10) as remote:
            assert await remote.request("which") == "first"  # the first server still answers


@needs_unix
async def test_unix_failed_start_cleans_up_what_it_opened(sock_dir: Path) -> None:
    live, new = sock_dir / "live.sock", sock_dir / "new.sock"
    async with serving(make_server(), f"unix:{live}"):
        second = make_server()
        with anyio.fail_after(10), pytest.raises(OSError):
            await second.serve(f"unix:{new}", "tcp://127.0.0.1:0", f"unix:{live}")
        assert not new.exists()  # its own socket, opened first, is removed again
        assert live.exists()
        async with connect(f"unix:{live}", timeout=10) as remote:
            assert await remote.request("add", [1, 2]) == 3


@needs_unix
async def test_unix_connect_to_a_missing_socket_fails(sock_dir: Path) -> None:
    with anyio.fail_after(10), pytest.raises(ConnectError, match=r"cannot connect to unix:.*No such file"):
        async with connect(f"unix:{sock_dir / 'missing.sock'}", timeout=5):
            pytest.fail("connected to nothing")


@needs_unix
async def test_unix_path_that_is_not_a_socket_is_left_alone(sock_dir: Path) -> None:
    path = sock_dir / "data.txt"
    path.write_text("precious")
    with anyio.fail_after(10), pytest.raises(OSError):
        await make_server().serve(f"unix:{path}")
    assert path.read_text() == "precious"


# ---- Unix sockets and another user (only when the tests run as root) -------------------

NOBODY = 65534
as_root = pytest.mark.skipif(
    not hasattr(os, "getuid") or os.getuid() != 0 or not hasattr(socket, "SO_PEERCRED"),
    reason="needs root (to act as another user) and SO_PEERCRED",
)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory anyone may write to, and without the sticky bit: only the socket's own
    mode (and our checks) keep other users out."""
    path = Path(tempfile.mkdtemp(prefix="ezipc-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def as_other_user(action: str, path: Path) -> dict[str, Any]:
    argv = [sys.executable, str(SCRIPTS / "as_other_user.py"), str(NOBODY), action, str(path)]
    with anyio.fail_after(STARTUP):
        result = await anyio.run_process(argv, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@as_root
async def test_unix_0600_keeps_other_users_out(shared_dir: Path) -> None:
    path = shared_dir / "s.sock"
    async with serving(make_server(), f"unix:{path}"):
        assert await as_other_user("request", path) == {"error": "PermissionError"}


@as_root
async def test_unix_mode_lets_other_users_in_with_their_credentials(shared_dir: Path) -> None:
    path = shared_dir / "s.sock"
    async with serving(make_server(unix_mode=0o666), f"unix:{path}"):
        outcome = await as_other_user("request", path)
    _, uid, gid = outcome["reply"]["result"]["peer_credentials"]
    assert (uid, gid) == (NOBODY, NOBODY)


@as_root
async def test_unix_allowed_uids_refuses_another_user(shared_dir: Path) -> None:
    path = shared_dir / "s.sock"
    server = make_server(unix_mode=0o666, allowed_uids={0})
    handled: list[str] = []
    server.hook_connect(lambda remote: handled.append("connect"))
    server.hook_request("whoami", lambda: handled.append("whoami"), replace=True)  # records instead
    async with serving(server, f"unix:{path}"):
        outcome = await as_other_user("request", path)
        assert outcome.get("closed") is True and not outcome.get("received"), outcome
        async with connect(f"unix:{path}", timeout=10) as remote:  # root is allowed
            assert await remote.request("add", [1, 2]) == 3
    assert handled == ["connect"]  # only root's connection got that far


@as_root
async def test_unix_another_users_server_cannot_take_over_a_live_socket(shared_dir: Path) -> None:
    path = shared_dir / "s.sock"
    first = make_server()
    first.hook_request("which", lambda: "first")
    async with serving(first, f"unix:{path}"):
        inode = os.stat(path).st_ino
        # It cannot connect to tell whether the socket is live: it must not assume it is dead.
        outcome = await as_other_user("serve", path)
        assert outcome == {"error": "PermissionError", "errno": errno.EACCES}
        assert os.stat(path).st_ino == inode
        async with connect(f"unix:{path}", timeout=10) as remote:
            assert await remote.request("which") == "first"


# ---- TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> Any:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca: Any) -> Any:
    return ca.issue_cert("localhost", "127.0.0.1", "::1")


@pytest.fixture(scope="module")
def client_cert(ca: Any) -> Any:
    return ca.issue_cert("client.example.org", "client@example.org", common_name="test-client")


def server_context(cert: Any, *, require_client_cert_from: Any = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    if require_client_cert_from is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        require_client_cert_from.configure_trust(ctx)
    return ctx


def client_context(ca: Any, cert: Any = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(ctx)
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


def _subject(cert: dict[str, Any]) -> dict[str, str]:
    return {key: value for rdn in cert["subject"] for key, value in rdn}


@pytest.mark.parametrize(("host", "framing"), [("127.0.0.1", "ndjson"), ("localhost", "content-length")])
async def test_tls(ca: Any, server_cert: Any, host: str, framing: str) -> None:
    server = make_server(ssl=server_context(server_cert))  # framing="auto"
    async with serving(server, "tcp://127.0.0.1:0") as (address,):
        port = address.rsplit(":", 1)[1]
        ctx = client_context(ca)
        async with connect(f"tcp://{host}:{port}", framing=framing, ssl=ctx, timeout=10) as remote:
            assert await remote.request("add", [20, 22]) == 42
            seen = await remote.request("whoami")
            assert seen["peer_certificate"] is None  # no client certificate asked for
            assert remote.peer_certificate is not None  # we see the server's
            assert ("DNS", "localhost") in remote.peer_certificate["subjectAltName"]


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_tls_over_ipv6(ca: Any, server_cert: Any) -> None:
    server = make_server(ssl=server_context(server_cert))
    async with serving(server, "tcp://[::1]:0") as (address,):
        async with connect(address, ssl=client_context(ca), timeout=10) as remote:
            assert await remote.request("add", [1, 2]) == 3


async def test_mutual_tls_gives_handlers_the_client_certificate(
    ca: Any, server_cert: Any, client_cert: Any
) -> None:
    server = make_server(ssl=server_context(server_cert, require_client_cert_from=ca))
    seen: list[dict[str, Any]] = []

    @server.method
    def who(remote: Remote) -> str:
        assert remote.peer_certificate is not None
        seen.append(remote.peer_certificate)
        return _subject(remote.peer_certificate)["commonName"]

    async with serving(server, "tcp://127.0.0.1:0") as (address,):
        ctx = client_context(ca, client_cert)
        async with connect(address, ssl=ctx, timeout=10) as remote:
            assert await remote.request("who") == "test-client"
    (cert,) = seen
    assert _subject(cert)["commonName"] == "test-client"
    sans = cert["subjectAltName"]
    assert ("DNS", "client.example.org") in sans
    assert ("email", "client@example.org") in sans


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    ca: Any, server_cert: Any, client_cert: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(ssl=server_context(server_cert, require_client_cert_from=ca))
    async with serving(server, "tcp://127.0.0.1:0") as (address,):
        # TLS 1.3 lets the client finish its handshake before the server checks; either
        # the handshake or the first request fails, and nothing is served.
        with anyio.fail_after(10), pytest.raises((ConnectionClosed, ConnectError, anyio.BrokenResourceError)):
            async with connect(address, ssl=client_context(ca), timeout=10) as remote:
                await remote.request("add", [1, 2])
        assert server.remotes == frozenset()
        async with connect(address, ssl=client_context(ca, client_cert), timeout=10) as remote:
            assert await remote.request("add", [1, 2]) == 3  # still serving


async def test_mutual_tls_refuses_a_certificate_from_another_ca(
    ca: Any, server_cert: Any, caplog: pytest.LogCaptureFixture
) -> None:
    other_ca = trustme.CA()
    stranger = other_ca.issue_cert("client.example.org")
    server = make_server(ssl=server_context(server_cert, require_client_cert_from=ca))
    async with serving(server, "tcp://127.0.0.1:0") as (address,):
        with anyio.fail_after(10), pytest.raises((ConnectionClosed, ConnectError, anyio.BrokenResourceError)):
            async with connect(address, ssl=client_context(ca, stranger), timeout=10) as remote:
                await remote.request("add", [1, 2])
        assert server.remotes == frozenset()


async def test_tls_client_rejects_an_untrusted_server(
    server_cert: Any, caplog: pytest.LogCaptureFixture
) -> None:
    other_ca = trustme.CA()
    server = make_server(ssl=server_context(server_cert))
    async with serving(server, "tcp://127.0.0.1:0") as (address,):
        with anyio.fail_after(10), pytest.raises(ConnectError) as info:
            async with connect(address, ssl=client_context(other_ca), timeout=10):
                pytest.fail("connected to a server signed by an unknown CA")
        text = repr(info.value) + repr(info.value.__cause__)
        assert "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text


@pytest.mark.parametrize("sends", [False, True])
async def test_a_tls_client_that_resets_right_after_the_handshake_does_not_stop_the_server(
    ca: Any, server_cert: Any, sends: bool
) -> None:
    """Found by ``bench/soak.py --tls``: on asyncio, a peer's reset closes the socket at
    once, and it came before the server had made the connection's wire, whose look at
    the socket's addresses then raised (EBADF) out of the server's task group: the whole
    server stopped. A few tries, as the reset races with the server's last handshake step."""
    server = make_server(ssl=server_context(server_cert))
    async with serving(server, "tcp://127.0.0.1:0") as (address,):
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        ctx = client_context(ca)
        for _ in range(10):
            stream = await anyio.connect_tcp(host, int(port), ssl_context=ctx, tls_standard_compatible=False)
            if sends:
                await stream.send(b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}\n')
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            await anyio.aclose_forcefully(stream)
        with anyio.fail_after(10):
            async with connect(address, ssl=ctx, timeout=10) as remote:
                assert await remote.request("add", [20, 22]) == 42
            while server.remotes:  # and each reset connection has ended
                await anyio.sleep(0.01)


async def test_tls_client_checks_the_hostname(ca: Any, caplog: pytest.LogCaptureFixture) -> None:
    wrong = ca.issue_cert("elsewhere.example.org")
    server = make_server(ssl=server_context(wrong))
    async with serving(server, "tcp://127.0.0.1:0") as (address,):
        with anyio.fail_after(10), pytest.raises(ConnectError):
            async with connect(address, ssl=client_context(ca), timeout=10):
                pytest.fail("connected to a server whose certificate names another host")
        # server_hostname= names the host the certificate must be for
        async with connect(
            address, ssl=client_context(ca), server_hostname="elsewhere.example.org", timeout=10
        ) as remote:
            assert await remote.request("add", [1, 1]) == 2


async def test_tls_connect_timeout_covers_the_handshake(ca: Any) -> None:
    async def silent(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            await anyio.sleep(30)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, silent)
        start = anyio.current_time()
        with anyio.fail_after(10), pytest.raises(TimeoutError):
            async with connect(f"tcp://127.0.0.1:{port}", ssl=client_context(ca), timeout=0.5):
                pytest.fail("a handshake with a silent peer succeeded")
        assert anyio.current_time() - start < 5
        tg.cancel_scope.cancel()


async def test_plain_client_to_a_tls_server_fails_cleanly(
    ca: Any, server_cert: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(ssl=server_context(server_cert))
    async with serving(server, "tcp://127.0.0.1:0") as (address,):
        for framing in ("ndjson", "content-length"):
            with anyio.fail_after(10), pytest.raises(ConnectionClosed):
                async with connect(address, framing=framing, timeout=10) as remote:
                    await remote.request("add", [1, 2])
        assert server.remotes == frozenset()
        async with connect(address, ssl=client_context(ca), timeout=10) as remote:
            assert await remote.request("add", [1, 2]) == 3  # the server keeps serving


async def test_tls_client_to_a_plain_server_fails_cleanly(ca: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = make_server()
    async with serving(server, "tcp://127.0.0.1:0") as (address,):
        with anyio.fail_after(10), pytest.raises((ssl.SSLError, anyio.BrokenResourceError, OSError)):
            async with connect(address, ssl=client_context(ca), timeout=10):
                pytest.fail("a TLS handshake with a plain JSON-RPC server succeeded")
        async with connect(address, timeout=10) as remote:
            assert await remote.request("add", [1, 2]) == 3


# ---- stdio: connect_subprocess ---------------------------------------------------------


def parent_client(framing: str) -> tuple[Client, list[Any]]:
    """A client whose hooks the child calls back into."""
    client = Client(framing=framing)
    notes: list[Any] = []

    @client.hook_request("client/ping")
    def ping() -> str:
        return "pong"

    @client.hook_request("client/add_via_child")
    async def add_via_child(remote: Remote, a: int, b: int) -> Any:
        return await remote.request("add", [a, b])  # nested: parent -> child -> parent -> child

    client.hook_notif("client/note", lambda *args: notes.append(list(args)))
    return client, notes


@asynccontextmanager
async def child(client: Client, script: str, *args: str, log: Path, **kwargs: Any) -> AsyncIterator[Remote]:
    with open(log, "wb") as stderr:
        async with client.connect_subprocess(
            [sys.executable, str(SCRIPTS / script), *args], stderr=stderr, **kwargs
        ) as remote:
            yield remote


@pytest.mark.parametrize("framing", ["ndjson", "content-length"])
async def test_stdio_child_requests_both_ways(framing: str, tmp_path: Path) -> None:
    client, notes = parent_client(framing)
    with anyio.fail_after(STARTUP):
        async with child(client, "stdio_server.py", framing, log=tmp_path / "stderr") as remote:
            process = remote.data["process"]
            assert remote.remote_address == f"subprocess:{process.pid}"
            assert remote.framing == framing
            assert await remote.request("add", [2, 3]) == 5
            assert await remote.request("pid") == process.pid
            assert await remote.request("ask_parent", ["client/ping"]) == "pong"
            assert await remote.request("ask_parent", ["client/add_via_child", [20, 22]]) == 42
            assert await remote.request("tell_parent", ["client/note", [1, 2]]) == "sent"
            with anyio.fail_after(5):
                while not notes:
                    await anyio.sleep(0.01)
            assert notes == [[1, 2]]
            calls = [remote.request("add", [i, i]) for i in range(50)]  # pipelined
            assert [await call for call in calls] == [2 * i for i in range(50)]
            assert remote.stats.messages_in >= 55 and remote.stats.bytes_out > 0
    assert process.returncode == 0, (tmp_path / "stderr").read_text()


async def test_stdio_child_ends_when_the_context_exits(tmp_path: Path) -> None:
    client, _ = parent_client("ndjson")
    with anyio.fail_after(STARTUP):
        async with child(client, "stdio_server.py", "ndjson", log=tmp_path / "stderr",
                         terminate_timeout=30.0) as remote:
            process = remote.data["process"]
            assert await remote.request("add", [1, 1]) == 2
            running = process.returncode
            assert running is None
            start = anyio.current_time()
    elapsed = anyio.current_time() - start
    # It saw its stdin close and exited by itself (status 0: not terminated), long before
    # terminate_timeout ran out.
    assert process.returncode == 0, (tmp_path / "stderr").read_text()
    assert elapsed < 10.0
    # Nothing to complain about: start() only says where it serves and when it stops.
    assert announcements((tmp_path / "stderr").read_text()) == ["serving on stdio", "server stopped"]


async def test_stdio_pending_request_fails_when_the_child_dies(tmp_path: Path) -> None:
    client, _ = parent_client("ndjson")
    with anyio.fail_after(STARTUP):
        async with child(client, "stdio_server.py", "ndjson", log=tmp_path / "stderr") as remote:
            process = remote.data["process"]
            assert await remote.request("add", [1, 1]) == 2
            call = remote.request("sleep", [60])
            process.kill()
            with anyio.fail_after(10), pytest.raises(ConnectionClosed):
                await call
            assert remote.closed
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize(
    ("ignore_term", "returncode"),
    [(False, -signal.SIGTERM), (True, -signal.SIGKILL)],
    ids=["terminated", "killed"],
)
async def test_stdio_stubborn_child_is_ended(ignore_term: bool, returncode: int, tmp_path: Path) -> None:
    client = Client(framing="ndjson")
    ready = anyio.Event()
    client.hook_notif("ready", ready.set)
    args = ["--ignore-term"] if ignore_term else []
    terminate_timeout = 0.5
    with anyio.fail_after(STARTUP):
        async with child(client, "stubborn_child.py", *args, log=tmp_path / "stderr",
                         terminate_timeout=terminate_timeout) as remote:
            process = remote.data["process"]
            await ready.wait()  # it has set up its signal handling
            start = anyio.current_time()
    elapsed = anyio.current_time() - start
    assert process.returncode == returncode
    steps = 2 if ignore_term else 1  # wait after EOF, (wait after SIGTERM,) then it ends
    assert steps * terminate_timeout * 0.9 <= elapsed < steps * terminate_timeout + 5.0


# ---- Server.start() in its own process -------------------------------------------------


@asynccontextmanager
async def server_process(*args: str, log: Path) -> AsyncIterator[anyio.abc.Process]:
    with open(log, "wb") as stderr:
        process = await anyio.open_process(
            [sys.executable, str(SCRIPTS / "unix_server.py"), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.move_on_after(10), anyio.CancelScope(shield=True):
                await process.wait()
            await process.aclose()


async def _wait_for_socket(path: Path, process: anyio.abc.Process, log: Path) -> None:
    """Until the socket exists and the server says it is serving (the file appears at
    bind(), a moment before listen())."""
    with anyio.fail_after(STARTUP):
        while not (path.exists() and f"serving on unix:{path}" in log.read_text()):
            if process.returncode is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()}")
            await anyio.sleep(0.02)


SERVER_BACKENDS = ["asyncio", "uvloop", "trio"]


@needs_unix
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("server_backend", SERVER_BACKENDS)
async def test_start_in_a_process_shuts_down_gracefully_on_signal(
    server_backend: str, signum: signal.Signals, sock_dir: Path, tmp_path: Path
) -> None:
    path = sock_dir / "srv.sock"
    log = tmp_path / "stderr"
    client = Client()
    started = anyio.Event()
    client.hook_notif("started", started.set)
    async with server_process(str(path), server_backend, "10", log=log) as process:
        await _wait_for_socket(path, process, log)
        with anyio.fail_after(STARTUP):
            async with client.connect(f"unix:{path}", timeout=10) as remote:
                info = await remote.request("info")
                assert info["pid"] == process.pid
                expected_loop = {"asyncio": "asyncio.unix_events", "uvloop": "uvloop", "trio": "trio"}
                assert info["loop"] == expected_loop[server_backend]
                assert _mode(path) == 0o600
                slow = remote.request("slow", [1.0])
                await started.wait()  # the handler is running
                process.send_signal(signum)
                assert await slow == "done"  # in-flight work finished
                while not remote.closed:  # then the server closed the connection
                    await anyio.sleep(0.02)
        with anyio.fail_after(20):
            assert await process.wait() == 0, log.read_text()
    text = log.read_text()
    assert f"received {signum.name}: shutting down" in text
    assert "server stopped" in text
    assert "Traceback" not in text
    assert not path.exists()  # the server removed its socket


@needs_unix
@pytest.mark.parametrize("server_backend", SERVER_BACKENDS)
async def test_start_in_a_process_without_connections(
    server_backend: str, sock_dir: Path, tmp_path: Path
) -> None:
    path = sock_dir / "srv.sock"
    log = tmp_path / "stderr"
    async with server_process(str(path), server_backend, log=log) as process:
        await _wait_for_socket(path, process, log)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            assert await process.wait() == 0, log.read_text()
    assert "server stopped" in log.read_text()
    assert not path.exists()


@needs_unix
async def test_start_in_a_process_answers_leftover_work_after_the_deadline(
    sock_dir: Path, tmp_path: Path
) -> None:
    path = sock_dir / "srv.sock"
    log = tmp_path / "stderr"
    client = Client()
    started = anyio.Event()
    client.hook_notif("started", started.set)
    async with server_process(str(path), "asyncio", "0.3", log=log) as process:
        await _wait_for_socket(path, process, log)
        with anyio.fail_after(STARTUP):
            async with client.connect(f"unix:{path}", timeout=10) as remote:
                slow = remote.request("slow", [60])
                await started.wait()
                process.send_signal(signal.SIGINT)
                with pytest.raises(RemoteError) as info:
                    await slow
                assert info.value.code == ErrorCode.SHUTTING_DOWN
        with anyio.fail_after(20):
            assert await process.wait() == 0, log.read_text()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_start_with_no_address_listens_on_9002(tmp_path: Path) -> None:
    if not _port_is_free(9002):
        pytest.skip("port 9002 is in use")
    log = tmp_path / "stderr"
    async with server_process("default", "asyncio", log=log) as process:
        with anyio.fail_after(STARTUP):
            while True:
                if process.returncode is not None:
                    if "in use" in log.read_text():
                        pytest.skip("port 9002 was taken meanwhile")
                    pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()}")
                try:
                    async with connect("tcp://127.0.0.1:9002", timeout=5) as remote:
                        info = await remote.request("info")
                    break
                except (OSError, ConnectionClosed):
                    await anyio.sleep(0.05)
        if info.get("pid") != process.pid:
            pytest.skip("another process is serving on port 9002")
        assert "serving on tcp://127.0.0.1:9002" in log.read_text()
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            assert await process.wait() == 0, log.read_text()
    assert "server stopped" in log.read_text()
