"""``ezipc call`` against a real ``ezipc serve`` (a module file served on TCP and a Unix
socket, framing auto): in-process through ``main()`` and as a subprocess."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ezipc_adapters._cli import main
from ezipc_adapters._cli.call import BATCH_HINT

from ..rawpeer import raw_server
from .conftest import Served, cli, wait_for_file

pytestmark = pytest.mark.timeout(60)

FRAMINGS = ["ndjson", "content-length"]


@pytest.fixture(params=["tcp", "unix"])
def address(request: pytest.FixtureRequest, server: Served) -> str:
    return server.address(request.param)


@pytest.mark.parametrize("framing", FRAMINGS)
def test_request_json_params(address: str, framing: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["call", address, "add", "[42, 23]", "--framing", framing]) == 0
    assert capsys.readouterr() == ("65\n", "")
    assert main(["call", address, "greet", '{"name": "Ada", "greeting": "hi"}', "--framing", framing]) == 0
    assert capsys.readouterr().out == '"hi, Ada"\n'


@pytest.mark.parametrize("framing", FRAMINGS)
def test_request_positional_and_key_value(
    address: str, framing: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["call", "--framing", framing, address, "add", "1", "2"]) == 0
    assert capsys.readouterr().out == "3\n"
    assert main(["call", address, "greet", "name=Ada", "--framing", framing]) == 0  # options after
    assert capsys.readouterr().out == '"hello, Ada"\n'
    assert main(["call", address, "echo", "n=42", "s=text", 'q="42"', "l=[1,2]", "z=null"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"args": [], "kwargs": {"n": 42, "s": "text", "q": "42", "l": [1, 2], "z": None}}
    assert main(["call", address, "echo"]) == 0  # no params at all
    assert json.loads(capsys.readouterr().out) == {"args": [], "kwargs": {}}


def test_pretty_and_compact(server: Served, capsys: pytest.CaptureFixture[str]) -> None:
    address = server.address("tcp")
    assert main(["call", address, "echo", "1", "x", "--pretty"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("{\n  ") and json.loads(out) == {"args": [1, "x"], "kwargs": {}}
    assert main(["call", address, "echo", "1", "x"]) == 0  # not a terminal: compact
    assert capsys.readouterr().out == '{"args":[1,"x"],"kwargs":{}}\n'


@pytest.mark.parametrize("framing", FRAMINGS)
def test_notify(address: str, framing: str, short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = short_tmp / f"notified-{framing}-{address.partition(':')[0]}"
    marker.unlink(missing_ok=True)
    assert main(["call", address, "--notify", "remember", "value=[1, 2]", f"path={marker}",
                 "--framing", framing]) == 0
    assert capsys.readouterr() == ("", "")  # a notification has no answer: nothing printed
    assert json.loads(wait_for_file(marker)) == [1, 2]


def test_error_reply_exit_1(server: Served, capsys: pytest.CaptureFixture[str]) -> None:
    address = server.address("unix")
    assert main(["call", address, "no_such_method"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert json.loads(err) == {"code": -32601, "message": "Method not found: no_such_method"}
    assert main(["call", address, "refuse"]) == 1
    refused = {"code": 4000, "message": "refused", "data": {"why": "a test"}}
    assert json.loads(capsys.readouterr().err) == refused
    assert main(["call", address, "add", "1"]) == 1
    assert json.loads(capsys.readouterr().err)["code"] == -32602
    assert main(["call", address, "fail"]) == 1
    assert json.loads(capsys.readouterr().err) == {"code": -32603, "message": "Internal error"}
    # the server logged the crash on one line, and the connection's errors when it closed
    server.wait_for(r"handler for 'fail' raised: ValueError: boom \(at methods.py:\d+ in fail\)")
    server.wait_for(r"unix:.*error\(s\) in \d+ message\(s\) received")


def test_timeout_exit_3(server: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["call", server.address("tcp"), "slow", "seconds=30", "--timeout", "0.3"]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert "no answer to 'slow'" in err and "within 0.3s" in err
    assert "--sequential" not in err  # the batch hint is for batches only


def test_connection_refused_exit_4(capsys: pytest.CaptureFixture[str], short_tmp: Path) -> None:
    with socket.socket() as probe:  # a port that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["call", f"tcp://127.0.0.1:{port}", "add", "1", "2"]) == 4
    err = capsys.readouterr().err
    assert f"cannot connect to tcp://127.0.0.1:{port}" in err
    assert main(["call", f"unix:{short_tmp / 'nobody.sock'}", "add", "1", "2"]) == 4
    assert "cannot connect" in capsys.readouterr().err


def test_batch(server: Served, tmp_path: Path, short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = short_tmp / "batch-notified"
    marker.unlink(missing_ok=True)
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps([
        {"method": "add", "params": [1, 2]},
        {"method": "remember", "params": {"value": "from a batch", "path": str(marker)}, "notify": True},
        {"method": "nope"},
        {"jsonrpc": "2.0", "method": "greet", "params": ["Ada"], "id": "mine"},
    ]))
    assert main(["call", server.address("tcp"), "--batch", str(batch)]) == 1  # one item is an error
    out = json.loads(capsys.readouterr().out)
    assert out == [
        {"method": "add", "result": 3},
        {"method": "nope", "error": {"code": -32601, "message": "Method not found: nope"}},
        {"method": "greet", "result": "hello, Ada"},
    ]
    assert json.loads(wait_for_file(marker)) == "from a batch"
    batch.write_text(json.dumps([{"method": "add", "params": [1, 2]}, {"method": "add", "params": [3, 4]}]))
    assert main(["call", server.address("unix"), "--batch", str(batch), "--framing", "content-length"]) == 0
    expected = [{"method": "add", "result": 3}, {"method": "add", "result": 7}]
    assert json.loads(capsys.readouterr().out) == expected


def test_sequential(
    server: Served, tmp_path: Path, short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--sequential: the calls one at a time, in the file's order, each request awaiting
    its answer; the output lists the requests' outcomes."""
    marker = short_tmp / "sequential-notified"
    marker.unlink(missing_ok=True)
    calls = tmp_path / "calls.json"
    calls.write_text(json.dumps([
        {"method": "add", "params": [1, 2]},
        {"method": "remember", "params": {"value": "between", "path": str(marker)}, "notify": True},
        {"method": "refuse"},
        {"method": "echo", "params": {"x": 1}},
    ]))
    assert main(["call", server.address("tcp"), "--batch", str(calls), "--sequential"]) == 1
    assert json.loads(capsys.readouterr().out) == [
        {"method": "add", "result": 3},
        {"method": "refuse", "error": {"code": 4000, "message": "refused", "data": {"why": "a test"}}},
        {"method": "echo", "result": {"args": [], "kwargs": {"x": 1}}},
    ]
    assert wait_for_file(marker) == '"between"'
    calls.write_text(json.dumps([{"method": "add", "params": [1, 2]}, {"method": "slow", "params": [30]}]))
    assert main(["call", server.address("tcp"), "-b", str(calls), "-s", "--timeout", "0.3"]) == 3
    err = capsys.readouterr().err
    assert "no answer to 'slow'" in err and BATCH_HINT not in err


@contextlib.contextmanager
def peer_without_batches(framing: str, answer: str) -> Iterator[tuple[str, list[Any]]]:
    """A raw server that takes one message (collected in the list it yields with its
    address) and then ``answer``s: "nothing", "null-id error" (an Invalid Request for the
    message as a whole), or "close"; it holds the connection until the client closes it."""
    received: list[Any] = []
    with raw_server(framing) as (address, accept):

        def serve() -> None:
            peer = accept()
            received.append(peer.receive())
            if answer == "close":
                peer.close()
                return
            if answer == "null-id error":
                peer.send({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid Request"}})
            with contextlib.suppress(OSError, TimeoutError):
                peer.receive_eof()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield address, received
        finally:
            thread.join(10)


@pytest.mark.parametrize(
    ("framing", "answer", "status"),
    [
        ("content-length", "nothing", 3),  # pylsp, vscode-jsonrpc
        ("ndjson", "nothing", 3),  # the MCP SDKs
        ("ndjson", "null-id error", 3),
        ("content-length", "close", 4),
    ],
)
def test_batch_not_answered_hints_sequential(
    framing: str, answer: str, status: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that does not support batches: after the timeout (or the close), ezipc
    call says what to do about it."""
    calls = tmp_path / "calls.json"
    calls.write_text(json.dumps([{"method": "add", "params": [1, 2]}, {"method": "add", "params": [3, 4]}]))
    with peer_without_batches(framing, answer) as (address, received):
        assert main(["call", address, "--batch", str(calls), "--framing", framing, "--timeout", "0.3"]) == status
    assert [item["method"] for item in received[0]] == ["add", "add"]  # one batch
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()  # the adapter may log the null-id error first
    expected = "no answer to the batch" if status == 3 else "closed before the answer"
    assert expected in lines[-2], err
    assert lines[-1] == f"ezipc: {BATCH_HINT}"
    assert "--sequential" in BATCH_HINT


def test_sequential_not_answered_no_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls = tmp_path / "calls.json"
    calls.write_text(json.dumps([{"method": "add", "params": [1, 2]}]))
    with peer_without_batches("content-length", "nothing") as (address, received):
        assert main(["call", address, "-b", str(calls), "-s", "--framing", "content-length", "-t", "0.3"]) == 3
    assert received[0]["method"] == "add"  # one request, not a batch
    err = capsys.readouterr().err
    assert "no answer to 'add'" in err and BATCH_HINT not in err


def test_server_to_client_request_is_answered(server: Served, capsys: pytest.CaptureFixture[str]) -> None:
    """A request from the server during the call is answered (method not found), and the
    call goes on."""
    assert main(["call", server.address("tcp"), "ask_client", "--timeout", "10"]) == 0
    assert json.loads(capsys.readouterr().out) == {"client answered": -32601}


def test_verbose_logs_messages(server: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["call", server.address("tcp"), "add", "1", "2", "--verbose"]) == 0
    out, err = capsys.readouterr()
    assert out == "3\n"
    assert '"method":"add"' in err and "DEBUG" in err


# ---- as a user runs it: a subprocess ---------------------------------------------------


@pytest.mark.parametrize("framing", FRAMINGS)
def test_subprocess_call(server: Served, framing: str) -> None:
    for kind in ("tcp", "unix"):
        proc = cli("call", server.address(kind), "add", "[2, 3]", "--framing", framing)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "5\n", "")


def test_subprocess_exit_codes(server: Served) -> None:
    proc = cli("call", server.address("tcp"), "refuse")
    assert proc.returncode == 1 and proc.stdout == ""
    assert json.loads(proc.stderr)["code"] == 4000
    proc = cli("call", server.address("tcp"), "slow", "30", "--timeout", "0.2")
    assert proc.returncode == 3, proc.stderr
    proc = cli("call", server.address("tcp"), "add", "1", "a=2")
    assert proc.returncode == 2 and "usage:" in proc.stderr
    proc = cli("call", server.address("unix") + ".missing", "add", "1", "2")
    assert proc.returncode == 4, proc.stderr


def test_subprocess_batch_from_stdin(server: Served) -> None:
    calls = json.dumps([{"method": "add", "params": [1, 1]}, {"method": "greet", "params": {"name": "x"}}])
    proc = cli("call", server.address("unix"), "--batch", "-", stdin=calls)
    assert proc.returncode == 0, proc.stderr
    expected = [{"method": "add", "result": 2}, {"method": "greet", "result": "hello, x"}]
    assert json.loads(proc.stdout) == expected
