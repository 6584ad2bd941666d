"""The README's code runs, and prints what the README says it prints.

Every ```python block in README.md is preceded by a marker, ``<!-- readme-test: NAME -->``,
and this module runs each one (a block without a marker fails the test, so a new example
cannot go untested):

* the server blocks (``asyncio-server``, ``trio-server``, ``blocking-server``) call
  ``server.start(...)``, which blocks: each runs as a subprocess, its address
  ``tcp://127.0.0.1:9002`` replaced with a free port; once it listens, the matching client
  block runs against it (another subprocess), and its output must be the lines the README's
  comments give; then the server gets SIGINT (Ctrl-C) and must exit 0, having printed what
  the client's notification asked it to;
* the standalone blocks (``lsp``, ``client-hooks``, ``tls``, ``core``) run as they are
  (``tls`` in a directory where the test has made ``server.pem`` and ``ca.pem``) and must
  print their comments.

The command-line block is run line by line (the server in the background, again on a free
port), each ``ezipc call`` checked against its comment; it names the virtual environment's
programs (``.venv/bin/ezipc``, ``.venv/bin/python``) so that it works as written after the
"Try it" commands, and the test runs this environment's. The "Try it" commands must appear
verbatim, and ``.ci/run`` must run the second one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .announce import announcements

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ADDRESS = "tcp://127.0.0.1:9002"  # every example's address, replaced by a free port here
TIMEOUT = 30  # seconds, for any one process or wait

TRY_DEMO = "python3 -m venv .venv && .venv/bin/python -m pip install -q . && .venv/bin/ezipc demo"
TRY_TESTS = (
    "python3 -m venv .venv && .venv/bin/python -m pip install -q -e '.[test]' && .venv/bin/python -m pytest"
)

pytestmark = pytest.mark.timeout(120)

FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<code>.*?)^```$", re.S | re.M)
MARKED = re.compile(r"<!-- readme-test: (?P<name>[\w-]+) -->\n```python\n(?P<code>.*?)^```$", re.S | re.M)

# What each client prints (each line also appears in the block as a comment "# <line>"),
# and what its server prints when the client's notification arrives.
PAIRS = {
    "asyncio": (["19", "19", "6", "error -32601 Method not found: divide"], "client says: hello"),
    "trio": (["[1.0, 0.5, 0.25]", "error 4000 cannot divide by zero {'dividend': 1}"],
             "client says: hello from trio"),
    "blocking": (["[0, 1, 4, 9]", "25", "error -32602 Invalid params: expected 1 positional params, got 2"],
                 "client says: hello"),
}
STANDALONE = {
    "lsp": ["pylsp hover: True"],
    "client-hooks": ["hello, Ada"],
    "tls": ["pong"],
    "core": [
        """b'{"jsonrpc":"2.0","method":"subtract","params":[42,23],"id":1}\\n'""",
        "Response(id=1, result=19)",
    ],
}


def blocks(lang: str) -> list[str]:
    return [m["code"] for m in FENCE.finditer(README) if m["lang"] == lang]


def block(name: str) -> str:
    [code] = [m["code"] for m in MARKED.finditer(README) if m["name"] == name]
    return code


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    """Is a socket listening on this TCP port? From /proc where there is one (no probe
    connection), else by connecting."""
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


def wait_listening(proc: subprocess.Popen, port: int, report) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + TIMEOUT
    while not listening(port):
        assert proc.poll() is None, f"the server exited instead of listening:\n{report()}"
        assert time.monotonic() < deadline, f"the server is not listening on {port}:\n{report()}"
        time.sleep(0.02)


def interrupt(proc: subprocess.Popen, report) -> int:  # type: ignore[type-arg]
    """Ctrl-C; the exit status (the test fails if it does not exit in time)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"did not exit after SIGINT:\n{report()}")


def run_python(code: str, cwd: Path, name: str) -> list[str]:
    path = cwd / f"{name}.py"
    path.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(path)], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT,
        check=False, stdin=subprocess.DEVNULL,
    )
    report = f"{name} exited with {proc.returncode}\n--- stdout:\n{proc.stdout}\n--- stderr:\n{proc.stderr}"
    assert proc.returncode == 0, report
    assert proc.stderr == "", report
    return proc.stdout.splitlines()


def test_every_python_block_is_run() -> None:
    marked = [m["name"] for m in MARKED.finditer(README)]
    assert len(marked) == len(blocks("python")), "a ```python block in README.md has no readme-test marker"
    assert sorted(marked) == sorted(
        [f"{kind}-{side}" for kind in PAIRS for side in ("server", "client")] + list(STANDALONE)
    )


def test_try_it_commands() -> None:
    """The two commands a newcomer runs, verbatim, each alone in a sh block; CI runs the second."""
    sh = [code.strip() for code in blocks("sh")]
    assert TRY_DEMO in sh
    assert TRY_TESTS in sh
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert TRY_TESTS in ci


@pytest.mark.parametrize("kind", list(PAIRS))
def test_server_and_client(kind: str, tmp_path: Path) -> None:
    expected, server_says = PAIRS[kind]
    server_code, client_code = block(f"{kind}-server"), block(f"{kind}-client")
    for code in (server_code, client_code):
        assert code.count(ADDRESS) == 1, "each example names the address once"
    for line in expected:  # the README's comments say what the client prints
        assert f"# {line}" in client_code, f"README: the {kind} client's comments do not show {line!r}"

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    (tmp_path / "server.py").write_text(server_code.replace(ADDRESS, address))
    out, err = tmp_path / "server.stdout", tmp_path / "server.stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        server = subprocess.Popen(
            [sys.executable, "server.py"], cwd=tmp_path, stdout=stdout, stderr=stderr,
            stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def report() -> str:
        return (f"server: exit status {server.poll()}\n--- stdout:\n{out.read_text()}"
                f"\n--- stderr:\n{err.read_text()}")

    try:
        wait_listening(server, port, report)
        lines = run_python(client_code.replace(ADDRESS, address), tmp_path, "client")
        assert lines == expected
        assert interrupt(server, report) == 0, report()
        assert server_says in out.read_text().splitlines(), report()
        assert announcements(err.read_text()), report()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.mark.skipif(importlib.util.find_spec("pylsp") is None,
                    reason="python-lsp-server is not installed (it is in the test extra)")
def test_language_server_block(tmp_path: Path) -> None:
    code = block("lsp")
    assert run_python(code, tmp_path, "lsp") == STANDALONE["lsp"]
    assert all(f"# {line}" in code for line in STANDALONE["lsp"])


def test_client_hooks_block(tmp_path: Path) -> None:
    code = block("client-hooks")
    assert "client.connect(" in code
    assert run_python(code, tmp_path, "client_hooks") == STANDALONE["client-hooks"]
    assert all(f"# {line}" in code for line in STANDALONE["client-hooks"])


def test_tls_block(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem")
    )
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    code = block("tls")
    assert run_python(code, tmp_path, "tls") == STANDALONE["tls"]
    assert all(f"# {line}" in code for line in STANDALONE["tls"])


def test_core_block(tmp_path: Path) -> None:
    code = block("core")
    assert run_python(code, tmp_path, "core") == STANDALONE["core"]
    assert all(f"# {line}" in code for line in STANDALONE["core"])


def test_commands_name_the_venv() -> None:
    """Every command in a ```sh block runs the virtual environment's `ezipc` and `python`
    (`.venv/bin/...`, which the "Try it" commands create): a bare `ezipc`, or a bare
    `python` in `--spawn`, works only with the environment active."""
    for code in blocks("sh"):
        for line in code.splitlines():
            words = line.split()
            if words and words[0].endswith("ezipc"):
                assert words[0] == ".venv/bin/ezipc", line
            for spawned in re.findall(r'--spawn "(\S+)', line):
                assert spawned == ".venv/bin/python", line


def test_command_line_block(tmp_path: Path) -> None:
    """The command-line section, line by line: `ezipc serve ... &` in the background, each
    `ezipc call` checked against its comment (`# 19`), with this environment's `ezipc` and
    `python` in place of `.venv/bin/`'s."""
    bindir = Path(sys.executable).parent
    if shutil.which("ezipc", path=str(bindir)) is None:
        pytest.skip(f"no ezipc console script next to {sys.executable} (pip install -e .)")
    [code] = [c for c in blocks("sh") if "ezipc serve" in c]
    code = code.replace(".venv/bin/", f"{bindir}{os.sep}")
    port = free_port()
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    server: subprocess.Popen | None = None  # type: ignore[type-arg]
    err = tmp_path / "serve.stderr"

    def report() -> str:
        return f"ezipc serve: exit status {server and server.poll()}\n--- stderr:\n{err.read_text()}"

    try:
        for line in code.replace("127.0.0.1:9002", f"127.0.0.1:{port}").splitlines():
            command, _, comment = line.partition("  # ")
            command = command.strip()
            if command.endswith("&"):  # the server, in the background
                with err.open("wb") as stderr:
                    server = subprocess.Popen(
                        ["bash", "-c", "exec " + command.rstrip("&")], cwd=tmp_path, env=env,
                        stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL,
                    )
                wait_listening(server, port, report)
                continue
            if "pylsp" in command and importlib.util.find_spec("pylsp") is None:
                continue
            proc = subprocess.run(
                ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                timeout=TIMEOUT, check=False, stdin=subprocess.DEVNULL,
            )
            assert proc.returncode == 0, f"{command}\n--- stdout:\n{proc.stdout}\n--- stderr:\n{proc.stderr}"
            if comment:
                assert proc.stdout.strip() == comment.strip(), command
            elif command.startswith(f"{bindir}{os.sep}ezipc call"):
                assert "capabilities" in json.loads(proc.stdout), command  # pylsp's initialize
        assert server is not None, "the command-line block starts no server"
        assert interrupt(server, report) == 0, report()
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
