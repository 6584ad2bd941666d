"""``ezipc call --spawn``: a child over its stdin/stdout, in both framings; ``ezipc serve
--listen stdio`` as that child; a language-server-like child that calls the client."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest

from ezipc_adapters._cli import main

from .conftest import cli, cli_command, wait_for_file

pytestmark = pytest.mark.timeout(60)

FRAMINGS = ["ndjson", "content-length"]


@pytest.mark.parametrize("framing", FRAMINGS)
def test_spawn_serve_stdio(methods_file: Path, framing: str, capfd: pytest.CaptureFixture[str]) -> None:
    child = cli_command("serve", str(methods_file), "--listen", "stdio")
    assert main(["call", "--spawn", child, "--framing", framing, "add", "[40, 2]"]) == 0
    out, err = capfd.readouterr()
    assert out == "42\n"
    # the child logged to stderr only (its stdout carries the protocol), then stopped on EOF
    assert "serving on stdio" in err and "server stopped" in err


@pytest.mark.parametrize("framing", FRAMINGS)
def test_spawn_subprocess(methods_file: Path, framing: str) -> None:
    child = cli_command("serve", str(methods_file), "--listen", "stdio")
    proc = cli("call", "--spawn", child, "--framing", framing, "greet", "name=Ada")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == '"hello, Ada"\n'
    proc = cli("call", "--spawn", child, "--framing", framing, "refuse")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("{")]  # the child logs too
    assert [json.loads(line)["code"] for line in errors] == [4000]


@pytest.mark.parametrize("framing", FRAMINGS)
def test_spawn_server_to_client_request(
    methods_file: Path, framing: str, capfd: pytest.CaptureFixture[str]
) -> None:
    child = cli_command("serve", str(methods_file), "--listen", "stdio")
    assert main(["call", "--spawn", child, "--framing", framing, "ask_client"]) == 0
    assert json.loads(capfd.readouterr().out) == {"client answered": -32601}


def test_spawn_notify_and_batch(
    methods_file: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    child = cli_command("serve", str(methods_file), "--listen", "stdio")
    marker = tmp_path / "notified"
    assert main(["call", "--spawn", child, "--notify", "remember", "value=7", f"path={marker}"]) == 0
    assert capfd.readouterr().out == ""
    assert wait_for_file(marker) == "7"
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps([{"method": "add", "params": [1, 2]}, {"method": "nope"}]))
    assert main(["call", "--spawn", child, "--framing", "content-length", "--batch", str(batch)]) == 1
    assert json.loads(capfd.readouterr().out) == [
        {"method": "add", "result": 3},
        {"method": "nope", "error": {"code": -32601, "message": "Method not found: nope"}},
    ]


def test_spawn_handler_prints_go_to_stderr(methods_file: Path, capfd: pytest.CaptureFixture[str]) -> None:
    child = cli_command("serve", str(methods_file), "--listen", "stdio")
    for framing in FRAMINGS:
        assert main(["call", "--spawn", child, "--framing", framing, "chatty"]) == 0
        out, err = capfd.readouterr()
        assert out == '"ok"\n'
        assert "printed by a handler" in err


def test_spawn_verbose_server_logs_each_message(methods_file: Path) -> None:
    child = cli_command("serve", str(methods_file), "--listen", "stdio", "--verbose")
    proc = cli("call", "--spawn", child, "add", "1", "2")
    assert (proc.returncode, proc.stdout) == (0, "3\n"), proc.stderr
    assert "DEBUG received from stdio: Request(method='add'" in proc.stderr  # the child's log, on stderr
    assert 'DEBUG sent to stdio: {"jsonrpc":"2.0","id":1,"result":3}' in proc.stderr


def test_spawn_failures_exit_4(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["call", "--spawn", "ezipc-no-such-program-xyz --flag", "m"]) == 4
    assert "cannot start 'ezipc-no-such-program-xyz --flag'" in capfd.readouterr().err
    quitter = shlex.join([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert main(["call", "--spawn", quitter, "m"]) == 4
    assert "exited with status 3 before answering" in capfd.readouterr().err


def test_spawn_timeout_exit_3(capfd: pytest.CaptureFixture[str]) -> None:
    silent = shlex.join([sys.executable, "-c", "import sys; sys.stdin.read()"])  # reads, never answers
    assert main(["call", "--spawn", silent, "m", "--timeout", "0.3"]) == 3
    assert "no answer to 'm'" in capfd.readouterr().err


# A language server in miniature (standard library only): Content-Length framing; before
# answering `initialize` it sends a notification and a request of its own, as real ones
# do, and reports in its result what the client answered. It exits when stdin closes.
FAKE_LSP = r'''
import json, sys

def read():
    headers = {}
    while True:
        line = sys.stdin.buffer.readline()
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            break
        key, _, value = line.decode().partition(":")
        headers[key.strip().lower()] = value.strip()
    return json.loads(sys.stdin.buffer.read(int(headers["content-length"])))

def write(message):
    body = json.dumps(message).encode()
    head = b"Content-Length: %d\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n"
    sys.stdout.buffer.write(head % len(body) + body)
    sys.stdout.buffer.flush()

request = read()
assert request["method"] == "initialize", request
write({"jsonrpc": "2.0", "method": "window/logMessage", "params": {"type": 3, "message": "starting"}})
write({"jsonrpc": "2.0", "id": "srv-1", "method": "window/workDoneProgress/create", "params": {"token": "t"}})
answer = read()
write({"jsonrpc": "2.0", "id": request["id"],
       "result": {"capabilities": {"hoverProvider": True}, "clientAnswered": answer}})
rest = read()
open(sys.argv[1], "w").write("clean exit" if rest is None else "unexpected: %r" % (rest,))
'''


def test_spawn_language_server_like_child(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "fake_lsp.py"
    script.write_text(FAKE_LSP)
    exited = tmp_path / "exited"
    command = shlex.join([sys.executable, str(script), str(exited)])
    params = '{"processId": null, "rootUri": null, "capabilities": {}}'
    assert main(["call", "--spawn", command, "--framing", "content-length", "initialize", params]) == 0
    result = json.loads(capfd.readouterr().out)
    assert result["capabilities"] == {"hoverProvider": True}
    assert result["clientAnswered"]["id"] == "srv-1"
    assert result["clientAnswered"]["error"]["code"] == -32601
    assert wait_for_file(exited) == "clean exit"  # its stdin was closed, and it ended by itself


@pytest.mark.skipif(importlib.util.find_spec("pylsp") is None, reason="python-lsp-server is not installed")
def test_spawn_pylsp() -> None:
    params = '{"processId": null, "rootUri": null, "capabilities": {}}'
    command = shlex.join([sys.executable, "-m", "pylsp"])
    proc = cli("call", "--spawn", command, "--framing", "content-length", "initialize", params)
    assert proc.returncode == 0, proc.stderr
    assert "hoverProvider" in json.loads(proc.stdout)["capabilities"]
