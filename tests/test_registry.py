"""Registering handlers (ezipc_adapters._registry.Hooks, shared by every Server and
Client): a name taken twice raises ValueError unless the call says replace=True, in
every form (two arguments, decorator, bare decorator, ``method``)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ezipc_adapters
import ezipc_adapters.blocking

ROOT = Path(__file__).resolve().parent.parent

KINDS: dict[str, Callable[[], Any]] = {
    "async Server": ezipc_adapters.Server,
    "async Client": ezipc_adapters.Client,
    "blocking Server": ezipc_adapters.blocking.Server,
    "blocking Client": ezipc_adapters.blocking.Client,
}


@pytest.fixture(params=list(KINDS))
def hooks(request: pytest.FixtureRequest) -> Any:
    return KINDS[request.param]()


def one() -> int:
    return 1


def two() -> int:
    return 2


def test_the_newcomers_example(hooks: Any) -> None:
    hooks.hook_request("m", lambda: 1)
    with pytest.raises(ValueError, match=r"'m' already has a request handler .*pass replace=True"):
        hooks.hook_request("m", lambda: 2)
    assert hooks.requests["m"].fn() == 1  # the first one stays


@pytest.mark.parametrize("table", ["requests", "notifications"])
def test_every_form_refuses_a_second_handler(hooks: Any, table: str) -> None:
    hook = hooks.hook_request if table == "requests" else hooks.hook_notif
    kind = "request" if table == "requests" else "notification"
    registered = getattr(hooks, table)

    hook("one", one)  # two-argument form
    with pytest.raises(ValueError, match=rf"'one' already has a {kind} handler"):
        hook("one", two)
    with pytest.raises(ValueError, match=r"replace=True"):
        hook("one")(two)  # decorator form
    with pytest.raises(ValueError, match=r"replace=True"):
        hook(one)  # bare decorator form, under the function's name
    with pytest.raises(ValueError, match=r"replace=True"):
        hook()(one)  # the keyword's decorator form, under the function's name
    assert registered["one"].fn is one

    hook("one", two, replace=True)
    assert registered["one"].fn is two
    assert hook("one", replace=True)(one) is one  # decorators return the function
    assert registered["one"].fn is one
    assert hook(replace=True)(one) is one
    assert registered["one"].fn is one
    assert hook(one, replace=True) is one
    assert registered["one"].fn is one
    hook("fresh", one, replace=True)  # replace=True with nothing to replace is fine
    assert registered["fresh"].fn is one


def test_method(hooks: Any) -> None:
    assert hooks.method(one) is one
    with pytest.raises(ValueError, match=r"'one' already has a request handler .*pass replace=True"):
        hooks.method(one)
    with pytest.raises(ValueError, match=r"replace=True"):
        hooks.hook_request("one", two)  # method and hook_request share the table
    assert hooks.method(one, replace=True) is one
    assert hooks.method(replace=True)(one) is one
    assert hooks.method()(two) is two
    with pytest.raises(ValueError):
        hooks.method()(two)
    assert hooks.requests["one"].fn is one
    with pytest.raises(TypeError):
        hooks.method("not a function")


def test_a_request_and_a_notification_may_share_a_name(hooks: Any) -> None:
    """One name may be requested and notified (as `ezipc serve` registers a module's functions)."""
    hooks.hook_request("log", one)
    hooks.hook_notif("log", two)
    assert (hooks.requests["log"].fn, hooks.notifications["log"].fn) == (one, two)


def test_a_refused_handler_changes_nothing(hooks: Any) -> None:
    hooks.hook_request("m", one)
    with pytest.raises(ValueError):
        hooks.hook_request("m", lambda x: x)
    assert list(hooks.requests) == ["m"]
    assert hooks.requests["m"].fn is one
    with pytest.raises(TypeError):  # not callable: refused before the name is checked
        hooks.hook_request("m", 42, replace=True)
    assert hooks.requests["m"].fn is one


def test_the_replacement_answers() -> None:
    server = ezipc_adapters.blocking.Server()
    server.hook_request("m", lambda: 1)
    server.hook_request("m", lambda: 2, replace=True)
    [address] = server.serve_in_thread("tcp://127.0.0.1:0")
    try:
        with ezipc_adapters.blocking.connect(address) as remote:
            assert remote.request("m") == 2
    finally:
        server.shutdown()


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
@pytest.mark.timeout(300)
def test_the_overloads_keep_the_types(tmp_path: Path) -> None:
    """Every form returns the function it was given (or a decorator that does), with
    or without replace=True, for mypy --strict."""
    snippet = tmp_path / "forms.py"
    snippet.write_text(textwrap.dedent('''
        from collections.abc import Callable
        from typing_extensions import assert_type
        from ezipc_adapters import Client, Server
        from ezipc_adapters.blocking import Server as BlockingServer

        def _f(x: int) -> str:
            return str(x)

        f: Callable[[int], str] = _f

        for hooks in (Server(), Client(), BlockingServer()):
            assert_type(hooks.hook_request("f", f), Callable[[int], str])
            assert_type(hooks.hook_request("f", f, replace=True), Callable[[int], str])
            assert_type(hooks.hook_request("f")(f), Callable[[int], str])
            assert_type(hooks.hook_request("f", replace=True)(f), Callable[[int], str])
            assert_type(hooks.hook_request(f), Callable[[int], str])
            assert_type(hooks.hook_request(f, replace=True), Callable[[int], str])
            assert_type(hooks.hook_request(replace=True)(f), Callable[[int], str])
            assert_type(hooks.hook_notif("f", f, replace=True), Callable[[int], str])
            assert_type(hooks.hook_notif(replace=True)(f), Callable[[int], str])
            assert_type(hooks.method(f), Callable[[int], str])
            assert_type(hooks.method(f, replace=True), Callable[[int], str])
            assert_type(hooks.method(replace=True)(f), Callable[[int], str])
            hooks.hook_request("f", f, replace="yes")  # E: not a bool
    '''))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
         "--config-file", str(ROOT / "pyproject.toml"), str(snippet)],
        cwd=ROOT, capture_output=True, text=True, timeout=280, check=False,
    )
    bad = 1 + snippet.read_text().splitlines().index('    hooks.hook_request("f", f, replace="yes")  # E: not a bool')
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert [f":{bad}: error:" in line for line in errors] == [True], proc.stdout + proc.stderr
