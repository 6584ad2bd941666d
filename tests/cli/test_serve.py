"""``ezipc serve``: module:attr, graceful shutdown on SIGINT and SIGTERM, logging, and
failing to listen."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ezipc_adapters._cli import main

from .conftest import CLI, cli, serving, wait_for_file

pytestmark = pytest.mark.timeout(60)

SERVICE = '''\
from ezipc_adapters import Server

server = Server(framing="ndjson")

@server.hook_request("ping")
def ping(*args):
    return ["pong", *args]

def helper():  # a public function, but the TARGET names the Server
    return "not served"
'''


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_shuts_down_gracefully(methods_file: Path, short_tmp: Path, sig: signal.Signals) -> None:
    """A request in flight when the signal arrives still gets its answer; then the server
    exits 0 and removes its Unix socket."""
    sock = short_tmp / f"graceful-{sig.name}.sock"
    started = short_tmp / f"started-{sig.name}"
    started.unlink(missing_ok=True)
    with serving(str(methods_file), "--listen", f"unix:{sock}") as server:
        call = subprocess.Popen(
            [*CLI, "call", f"unix:{sock}", "slow", "seconds=0.5", f"started_file={started}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            wait_for_file(started)
            assert server.stop(sig) == 0
            out, err = call.communicate(timeout=20)
        finally:
            if call.poll() is None:
                call.kill()
                call.communicate()
        assert (call.returncode, out) == (0, '"done"\n'), err
        server.wait_for(f"received {sig.name}: shutting down")
        server.wait_for(r"shutting down: 1 connection\(s\)")
        server.wait_for("server stopped")
        assert not sock.exists()


def test_module_attr(tmp_path: Path) -> None:
    (tmp_path / "cli_service.py").write_text(SERVICE)
    with serving("cli_service:server", "--listen", "tcp://127.0.0.1:0", cwd=tmp_path) as server:
        server.wait_for(r"serving cli_service:server \(methods: ping\); framing ndjson")
        proc = cli("call", server.address("tcp"), "ping", "1")
        assert (proc.returncode, proc.stdout) == (0, '["pong",1]\n'), proc.stderr
        proc = cli("call", server.address("tcp"), "helper")
        assert proc.returncode == 1 and json.loads(proc.stderr)["code"] == -32601
    # file.py:attr, with the framing overridden on the command line
    with serving(f"{tmp_path / 'cli_service.py'}:server", "--listen", "tcp://127.0.0.1:0",
                 "--framing", "content-length") as server:
        server.wait_for("framing content-length")
        proc = cli("call", server.address("tcp"), "ping", "--framing", "content-length")
        assert (proc.returncode, proc.stdout) == (0, '["pong"]\n'), proc.stderr


def test_logs_connections_and_errors(methods_file: Path) -> None:
    with serving(str(methods_file), "--listen", "tcp://127.0.0.1:0") as server:
        server.wait_for(r"serving the functions of .*methods\.py \(methods: add, ask_client, chatty, echo, "
                        r"fail, greet, refuse, remember, slow\); framing auto")
        assert cli("call", server.address("tcp"), "fail").returncode == 1
        server.wait_for(r"INFO connection from tcp://127\.0\.0\.1:\d+$")
        line = server.wait_for("handler for 'fail' raised")
        assert "ValueError: boom" in line
        server.wait_for(r"connection from tcp://127\.0\.0\.1:\d+ closed \(closed by the peer\)")
        server.wait_for(r"1 error\(s\) in 1 message\(s\) received and 1 sent")
        assert "Traceback" not in server.log  # one line per error unless --verbose


def test_cannot_listen_exit_4(methods_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(methods_file), "--listen", f"tcp://127.0.0.1:{port}"]) == 4
    assert "cannot serve on" in capsys.readouterr().err


def test_default_address(methods_file: Path) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 9002))
        except OSError:
            pytest.skip("port 9002 is in use here")
    with serving(str(methods_file)) as server:
        assert server.addresses == ["tcp://127.0.0.1:9002"]
        proc = cli("call", "tcp://127.0.0.1:9002", "add", "1", "1")
        assert (proc.returncode, proc.stdout) == (0, "2\n"), proc.stderr


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6(methods_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with serving(str(methods_file), "--listen", "tcp://[::1]:0") as server:
        address = server.address("tcp")
        assert address.startswith("tcp://[::1]:")
        assert main(["call", address, "add", "20", "22"]) == 0
        assert capsys.readouterr().out == "42\n"
