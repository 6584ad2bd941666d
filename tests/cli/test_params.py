"""Parsing the command line: PARAMS, --batch files, TARGETs, usage errors (in-process)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ezipc_adapters import Server
from ezipc_adapters._cli import main
from ezipc_adapters._cli.call import load_batch, parse_params
from ezipc_adapters._cli.common import UsageError
from ezipc_adapters._cli.serve import load_target, public_functions

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ([], None),
        (["[42, 23]"], [42, 23]),
        (['{"minuend": 42, "subtrahend": 23}'], {"minuend": 42, "subtrahend": 23}),
        (["[]"], []),
        (["{}"], {}),
        (["1", "2", "3"], [1, 2, 3]),
        (["5"], [5]),
        (["hello", "2.5", "true", "null"], ["hello", 2.5, True, None]),
        (['"42"'], ["42"]),
        (["NaN", "Infinity"], ["NaN", "Infinity"]),  # not JSON: strings
        (["a=1", "b=x", 'c=["p", 2]', "d=", 'e="7"'], {"a": 1, "b": "x", "c": ["p", 2], "d": "", "e": "7"}),
        (["text=a=b"], {"text": "a=b"}),
        (["path.to/key=1"], {"path.to/key": 1}),
    ],
)
def test_parse_params(tokens: list[str], expected: object) -> None:
    assert parse_params(tokens) == expected


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["[1, 2"], "not valid JSON"),
        (["{nope}"], "not valid JSON"),
        (["a=1", "2"], "mixes"),
        (["a=1", "a=2"], "given twice"),
    ],
)
def test_parse_params_errors(tokens: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_params(tokens)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main([]) == 2
    assert "serve" in capsys.readouterr().err
    assert main(["call"]) == 2
    assert "ADDRESS is missing" in capsys.readouterr().err
    assert main(["call", "tcp://127.0.0.1:9"]) == 2
    assert "METHOD is missing" in capsys.readouterr().err
    assert main(["call", "nowhere", "m"]) == 2
    assert "expected tcp://HOST:PORT" in capsys.readouterr().err
    assert main(["call", "stdio", "m"]) == 2
    assert "--spawn" in capsys.readouterr().err
    assert main(["call", "tcp://127.0.0.1:9", "m", "a=1", "2"]) == 2
    assert "mixes" in capsys.readouterr().err
    assert main(["call", "unix:/tmp/x.sock", "m", "--tls"]) == 2
    assert "tcp:// addresses only" in capsys.readouterr().err
    assert main(["call", "tcp://127.0.0.1:9", "m", "--framing", "xml"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["call", "--spawn", "", "m"]) == 2
    assert "needs a command" in capsys.readouterr().err
    batch = tmp_path / "b.json"
    batch.write_text("[]")
    assert main(["call", "tcp://127.0.0.1:9", "--batch", str(batch)]) == 2
    assert "non-empty JSON array" in capsys.readouterr().err
    assert main(["call", "tcp://127.0.0.1:9", "m", "--batch", str(batch)]) == 2
    assert "takes no METHOD" in capsys.readouterr().err
    assert main(["call", "tcp://127.0.0.1:9", "m", "--sequential"]) == 2
    assert "--sequential goes with --batch" in capsys.readouterr().err
    assert main(["serve", "nosuchmodule_xyz"]) == 2
    assert "no module named 'nosuchmodule_xyz'" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing.py")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["serve", "x.py", "--listen", "tcp://127.0.0.1:port"]) == 2
    assert "expected tcp://HOST:PORT" in capsys.readouterr().err


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["call", "--help"]) == 0
    out = capsys.readouterr().out
    assert "key=value" in out and "exit status" in out and "--spawn" in out
    assert main(["serve", "--help"]) == 0
    assert "module:attr" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("ezipc ")


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ('{"method": "x"}', "non-empty JSON array"),
        ("[1]", "item 0: expected an object"),
        ('[{"params": []}]', "'method' must be"),
        ('[{"method": "x", "params": 5}]', "'params' must be"),
        ('[{"method": "x", "id": 5}]', "unknown key"),
        ('[{"method": "x", "notify": "yes"}]', "'notify' must be"),
        ("[{", "not valid JSON"),
    ],
)
def test_bad_batch_files(
    items: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = tmp_path / "batch.json"
    batch.write_text(items)
    assert main(["call", "tcp://127.0.0.1:9", "--batch", str(batch)]) == 2
    assert message in capsys.readouterr().err


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_load_target_functions(tmp_path: Path) -> None:
    module = _write(tmp_path / "cli_target_functions.py", (
        "from os.path import join\n"
        "import json\n"
        "def one(): return 1\n"
        "async def two(x): return x\n"
        "def _hidden(): pass\n"
        "class Thing: pass\n"
        "value = 3\n"
    ))
    server, description = load_target(str(module))
    assert isinstance(server, Server)
    assert sorted(server.requests) == ["one", "two"]  # not join (imported), _hidden, Thing, value
    assert sorted(server.notifications) == ["one", "two"]
    assert "methods: one, two" in description
    assert server.options.framing == "auto"


def test_load_target_server_objects(tmp_path: Path) -> None:
    _write(tmp_path / "cli_target_objs.py", (
        "from ezipc_adapters import Server\n"
        "server = Server(framing='content-length')\n"
        "server.hook_request('ping', lambda: 'pong')\n"
        "def make(): \n"
        "    s = Server()\n"
        "    s.hook_request('made', lambda: 1)\n"
        "    return s\n"
        "other = Server()\n"
        "not_a_server = 5\n"
    ))
    sys.path.insert(0, str(tmp_path))
    try:
        server, _ = load_target("cli_target_objs:server")
        assert list(server.requests) == ["ping"] and server.options.framing == "content-length"
        made, _ = load_target(f"{tmp_path / 'cli_target_objs.py'}:make")  # file.py:attr, a factory
        assert list(made.requests) == ["made"]
        with pytest.raises(UsageError, match="not an ezipc Server"):
            load_target("cli_target_objs:not_a_server")
        with pytest.raises(UsageError, match="no attribute"):
            load_target("cli_target_objs:missing")
        # two Servers and one public function: the function is served, not a guess
        server, _ = load_target("cli_target_objs")
        assert list(server.requests) == ["make"]
    finally:
        sys.path.remove(str(tmp_path))


def test_load_target_single_server(tmp_path: Path) -> None:
    module = _write(tmp_path / "cli_target_single.py", (
        "from ezipc_adapters import Server\n"
        "server = Server()\n"
        "@server.hook_request('WRITE')\n"
        "def write_file(filename, content): return len(content)\n"
    ))
    server, description = load_target(str(module))
    assert list(server.requests) == ["WRITE"]  # the Server, not its handler under its Python name
    assert "cli_target_single.py:server" in description


def test_load_target_blocking_server(tmp_path: Path) -> None:
    module = _write(tmp_path / "cli_target_blocking.py", (
        "from ezipc_adapters.blocking import Server\n"
        "server = Server()\n"
        "server.hook_request('ping', lambda: 'pong')\n"
    ))
    server, _ = load_target(f"{module}:server")
    assert type(server).__module__ == "ezipc_adapters._blocking_endpoints"


def test_public_functions_order(tmp_path: Path) -> None:
    module = _write(tmp_path / "cli_target_order.py", "def b(): pass\ndef a(): pass\n")
    load_target(str(module))
    assert list(public_functions(sys.modules["cli_target_order"])) == ["b", "a"]


def test_nothing_to_serve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = _write(tmp_path / "cli_target_empty.py", "X = 1\n")
    assert main(["serve", str(module)]) == 2
    assert "no public function" in capsys.readouterr().err


def test_import_error_in_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = _write(tmp_path / "cli_target_broken.py", "import json\nraise RuntimeError('broken module')\n")
    assert main(["serve", str(module)]) == 2
    err = capsys.readouterr().err
    assert "RuntimeError: broken module" in err and "importing" in err


def test_batch_file_shapes(tmp_path: Path) -> None:
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps([
        {"method": "a", "params": [1]},
        {"method": "b", "notify": True},
        {"jsonrpc": "2.0", "method": "c", "params": {"x": 1}, "id": 7},
        {"jsonrpc": "2.0", "method": "d"},
    ]))
    assert load_batch(str(batch)) == [
        ("a", [1], False), ("b", None, True), ("c", {"x": 1}, False), ("d", None, True),
    ]
