"""The optional extras. Without trio (the ``trio`` extra), ``import ezipc_adapters.trio``
fails at once, in one line that says what to install, while the rest of the package
imports and works without it."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Two ways trio can be missing: not installed at all, or blocked in sys.modules.
NO_TRIO = {
    "not installed": textwrap.dedent("""
        import sys

        class NoTrio:
            def find_spec(self, name, path=None, target=None):
                if name == "trio" or name.startswith("trio."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NoTrio())
    """),
    "None in sys.modules": "import sys\nsys.modules['trio'] = None\n",
}
MESSAGE = "ModuleNotFoundError: ezipc_adapters.trio needs trio, which is not installed: pip install 'ezipc[trio]'"


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("how", list(NO_TRIO))
def test_trio_adapter_without_trio(how: str) -> None:
    proc = run(NO_TRIO[how] + "import ezipc_adapters.trio\n")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == MESSAGE, proc.stderr
    assert "During handling" not in proc.stderr and "direct cause" not in proc.stderr, proc.stderr
    assert [line for line in lines if re.match(r"[\w.]+(Error|Exception): ", line)] == [MESSAGE], proc.stderr


@pytest.mark.parametrize("how", list(NO_TRIO))
def test_the_rest_works_without_trio(how: str) -> None:
    code = NO_TRIO[how] + textwrap.dedent("""
        import ezipc_adapters, ezipc_adapters.asyncio, ezipc_adapters.blocking
        from ezipc_adapters.blocking import Server, connect

        server = Server()
        server.hook_request("ping", lambda: "pong")
        [address] = server.serve_in_thread("tcp://127.0.0.1:0")
        with connect(address) as remote:
            print(remote.request("ping"))
        server.shutdown()
        print("trio" in sys.modules and sys.modules["trio"] is not None)
    """)
    proc = run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["pong", "False"]
