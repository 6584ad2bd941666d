"""The adapter examples in examples/ run as a user runs them, and do what they say.

Each example runs in its own interpreter: a server in the background on a free port (its
output going to a file), then its client(s), each bounded in time. The assertions are on
what the examples print and do: the file really written, the chat message relayed to the
other client, the handler cancelled on the server, pylsp's hover text and diagnostics.
Servers are stopped with SIGINT (Ctrl-C) and must exit 0 after a graceful shutdown.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..announce import announcements

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT = 30  # seconds, for any one process or wait

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    """Is some socket listening on this TCP port? Read from /proc (no connection made, so a
    server's connect hooks see no probe); elsewhere, try to connect."""
    try:
        table = Path("/proc/net/tcp").read_text() + Path("/proc/net/tcp6").read_text()
    except OSError:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True
    want = f":{port:04X}"
    return any(
        fields[1].endswith(want) and fields[3] == "0A"  # 0A: LISTEN
        for fields in (line.split() for line in table.splitlines()[1:])
        if len(fields) > 3
    )


class Background:
    """An example running in the background; stdout and stderr go to files."""

    def __init__(self, tmp_path: Path, name: str, args: list[str], *, cwd: Path | None = None,
                 env: dict[str, str] | None = None, stdin: int | None = subprocess.DEVNULL) -> None:
        self.name = name
        self.out_path = tmp_path / f"{name}.stdout"
        self.err_path = tmp_path / f"{name}.stderr"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, *args], stdout=out, stderr=err, stdin=stdin,
                cwd=cwd, env={**os.environ, **(env or {})},
            )

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def report(self) -> str:
        return (f"{self.name} (exit status {self.proc.poll()})\n--- stdout:\n{self.stdout}"
                f"\n--- stderr:\n{self.stderr}")

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stdout:
            assert self.proc.poll() is None, f"exited before printing {text!r}:\n{self.report()}"
            assert time.monotonic() < deadline, f"did not print {text!r}:\n{self.report()}"
            time.sleep(0.02)

    def wait_listening(self, port: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not listening(port):
            assert self.proc.poll() is None, f"exited instead of listening:\n{self.report()}"
            assert time.monotonic() < deadline, f"not listening on {port}:\n{self.report()}"
            time.sleep(0.02)

    def interrupt(self) -> int:
        """Ctrl-C, then the exit status (killed, and failed, if it does not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"did not exit after SIGINT:\n{self.report()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def background(tmp_path: Path) -> Iterator[Callable[..., Background]]:
    """Start examples in the background; whatever still runs at the end is killed."""
    started: list[Background] = []

    def start(name: str, *args: str, **kwargs: object) -> Background:
        proc = Background(tmp_path, name, list(args), **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        expect: int = 0) -> list[str]:
    """Run an example to completion; return its stdout lines (stderr must be empty)."""
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False,
        cwd=cwd, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
    )
    report = f"{args} exited with {proc.returncode}\n--- stdout:\n{proc.stdout}\n--- stderr:\n{proc.stderr}"
    assert proc.returncode == expect, report
    if expect == 0:
        assert proc.stderr == "", report
    return proc.stdout.splitlines()


def assert_lines(lines: list[str], expected: list[str]) -> None:
    """Every expected line was printed, in this order (other lines may come between)."""
    position = 0
    for line in expected:
        assert line in lines[position:], f"missing (in order) {line!r} in:\n" + "\n".join(lines)
        position = lines.index(line, position) + 1


def example(name: str) -> str:
    return str(EXAMPLES / name)


# ---- the original EZ-IPC README's example ------------------------------------------------


def test_write_server_and_client(tmp_path: Path, background) -> None:
    workdir = tmp_path / "files"
    workdir.mkdir()
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    server = background("write_server", example("write_server.py"), address, cwd=tmp_path,
                        env={"WRITE_DIR": str(workdir)})
    server.wait_listening(port)

    lines = run(example("write_client.py"), env={"EZIPC_ADDRESS": address}, cwd=tmp_path)
    assert lines == [
        "sent WRITE hello.txt (a notification: no answer)",
        "write notes.txt: 21 bytes written",
        "write notes.txt: error -32602: Invalid params: missing required params: content",
        "write no/such/dir/x.txt: error -32000: cannot write 'no/such/dir/x.txt': No such file or directory",
        "write ../escape.txt: error -32000: '../escape.txt' is outside the server's directory",
    ]
    # The notification and the request really wrote their files, and nothing else.
    assert (workdir / "hello.txt").read_text() == "Hello, world!\n"
    assert (workdir / "notes.txt").read_text() == "written by a request\n"
    assert sorted(p.name for p in workdir.iterdir()) == ["hello.txt", "notes.txt"]
    assert not (tmp_path / "escape.txt").exists()

    assert server.interrupt() == 0, server.report()
    assert_lines(server.stdout.splitlines(), [
        f"serving on {address}, writing into {workdir.resolve()} (Ctrl-C to stop)",
        "WRITE: 14 bytes to hello.txt",
        "write: 21 bytes to notes.txt",
        "server stopped",
    ])
    assert announcements(server.stderr), server.report()


# ---- chat: broadcast, connect and disconnect hooks ---------------------------------------


def test_chat_relays_messages_to_every_client(tmp_path: Path, background) -> None:
    port = free_port()
    env = {"EZIPC_ADDRESS": f"tcp://127.0.0.1:{port}"}
    server = background("chat_server", example("chat_server.py"), env=env)
    server.wait_listening(port)

    # alice chats interactively: she reads her stdin (left open) and prints what comes.
    alice = background("alice", example("chat_client.py"), "alice", env=env, stdin=subprocess.PIPE)
    alice.wait_for("here now: ['alice']")

    # bob says two things and leaves.
    bob = run(example("chat_client.py"), "bob", "hi alice", "bye", env=env)
    assert_lines(bob, [
        "* bob joined",
        f"connected to tcp://127.0.0.1:{port} as bob; here now: ['alice', 'bob']",
        "<bob> hi alice",
        "(reached 2 clients)",
        "<bob> bye",
        "(reached 2 clients)",
    ])

    # alice got bob's arrival, his messages (relayed by broadcast) and his departure.
    alice.wait_for("* bob left")
    assert alice.proc.stdin is not None
    alice.proc.stdin.write(b"bye bob\n")  # alice says something, then ends her input
    alice.proc.stdin.close()
    assert alice.proc.wait(TIMEOUT) == 0, alice.report()
    assert alice.stdout.splitlines() == [
        "* alice joined",
        f"connected to tcp://127.0.0.1:{port} as alice; here now: ['alice']",
        "* bob joined",
        "<bob> hi alice",
        "<bob> bye",
        "* bob left",
        "<alice> bye bob",
        "left the chat",
    ]
    assert alice.stderr == "", alice.report()

    assert server.interrupt() == 0, server.report()
    server_lines = server.stdout.splitlines()
    joins = [line.split(" from ")[0] for line in server_lines if " joined from tcp://127.0.0.1:" in line]
    assert joins == ["alice joined", "bob joined"], server.report()
    assert_lines(server_lines, [
        "<bob> hi alice",
        "<bob> bye",
        "bob left",
        "<alice> bye bob",
        "alice left",
        "chat server stopped",
    ])
    assert announcements(server.stderr), server.report()


# ---- trio, and the blocking client against the trio service -------------------------------

TRIO_CLIENT_LINES = [
    "client: add -> [0.5, 1.5, 2.5]",
    "client: tick 3",
    "client: tick 2",
    "client: tick 1",
    "client: countdown -> liftoff",
    "client: gave up on slow: True",
    "client: stats -> {'slow started': 1, 'slow cancelled': 1}",
]


def test_trio_service_in_one_process() -> None:
    lines = run(example("trio_service.py"))
    assert lines[0].startswith("server: listening on tcp://127.0.0.1:")
    assert_lines(lines, [*TRIO_CLIENT_LINES, "server: stopped"])
    # The server saw the cancellation before the client asked for the stats.
    assert lines.index("server: slow was cancelled by its caller") < lines.index(TRIO_CLIENT_LINES[-1])


def test_trio_service_with_trio_and_blocking_clients(background) -> None:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    server = background("trio_service", example("trio_service.py"), "serve", address)
    server.wait_listening(port)

    assert run(example("trio_service.py"), "client", address) == TRIO_CLIENT_LINES

    lines = run(example("blocking_client.py"), env={"EZIPC_ADDRESS": address})
    assert_lines(lines, [
        "add from 4 threads: [100, 101, 102, 103]",
        "tick 2",
        "tick 1",
        "countdown: liftoff",
    ])
    [timed_out] = [line for line in lines if line.startswith("slow: TimeoutError after ")]
    assert 0.25 <= float(timed_out.split()[-2]) < 5, timed_out
    assert_lines(lines, [
        timed_out,
        "stats: {'slow started': 2, 'slow cancelled': 2}",  # the trio client's, and ours
        "divide[1, 0]: error -32601: Method not found: divide",
        "add[1]: error -32602: Invalid params: expected 2 positional params, got 1",
        "closed: True",
    ])

    assert server.interrupt() == 0, server.report()
    assert_lines(server.stdout.splitlines(), [
        f"server: listening on {address}",
        "server: slow was cancelled by its caller",
        "server: slow was cancelled by its caller",
        "server: shutting down",
        "server: stopped",
    ])
    assert server.stderr == "", server.report()  # (it serves in its own nursery: no start())


def test_blocking_client_without_a_server() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"  # nobody listens there
    proc = subprocess.run(
        [sys.executable, example("blocking_client.py"), address],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )
    assert proc.returncode == 1
    assert f"cannot connect to {address}" in proc.stderr
    assert "python examples/trio_service.py serve" in proc.stderr


# ---- a real language server ---------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("pylsp") is None,
                    reason="python-lsp-server is not installed (it is in the test extra)")
def test_lsp_client_talks_to_pylsp(tmp_path: Path) -> None:
    lines = run(example("lsp_client.py"), cwd=tmp_path)
    assert lines[0].startswith("initialized pylsp "), lines
    assert lines[0].endswith("; hover: True"), lines
    # pylsp's hover shows json.dumps's signature (its docstring follows).
    [hover] = [line for line in lines if line.startswith("hover on json.dumps: ")]
    assert hover.startswith("hover on json.dumps: dumps( obj"), hover
    # The server asked us (a server->client request, answered by a hook) before linting,
    # then published pyflakes' diagnostic for the unused import.
    assert any(line.startswith("server asks: may I report progress?") for line in lines), lines
    assert "diagnostic: example.py:1: 'os' imported but unused (pyflakes)" in lines
    assert lines[-1] == "pylsp has exited"
