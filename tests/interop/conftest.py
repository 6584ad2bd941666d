"""Interop tests: ezipc against real third-party JSON-RPC peers.

Peers: python-lsp-server (pylsp), python-lsp-jsonrpc, the official MCP Python SDK
(``mcp``; all three in the ``test`` extra) and vscode-jsonrpc on node (installed here
with npm, once per session, into a cache directory outside the repository). A test
skips, saying why, only when its peer cannot be had (e.g. node or npm absent).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

import ezipc_adapters
from ezipc_adapters import Server

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE / "scripts"
NODE_SCRIPTS = HERE / "node"
BACKENDS = ["asyncio", "trio"]
#: Per-test wall-clock bound (pytest-timeout); each test also bounds itself with anyio.
TEST_TIMEOUT = 60
NPM_TIMEOUT = 40  # the install runs within the first node test's TEST_TIMEOUT


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@asynccontextmanager
async def serving(server: Server, *addresses: str) -> AsyncIterator[list[str]]:
    """Run ``server`` in the background; yield its bound addresses; shut it down after."""
    async with anyio.create_task_group() as tg:
        bound = await tg.start(server.serve, *(addresses or ("tcp://127.0.0.1:0",)))
        try:
            yield bound
        finally:
            server.shutdown()


def require(*modules: str) -> None:
    """Skip the calling test module unless these Python peers are installed (looked up,
    not imported: importing pylsp or mcp here would cost seconds of collection)."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            pytest.skip(
                f"{name} is not installed (the peers are in the test extra: pip install -e '.[test]')",
                allow_module_level=True,
            )


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def python_env() -> dict[str, str]:
    """Environment for a Python child that must import the same ezipc as this process."""
    root = str(Path(ezipc_adapters.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": root if not path else os.pathsep.join([root, path])}


# ---- node and vscode-jsonrpc ---------------------------------------------------------


def _node_cache_dir(package_json: bytes) -> Path:
    digest = hashlib.sha256(package_json).hexdigest()[:16]
    base = os.environ.get("EZIPC_INTEROP_CACHE") or tempfile.gettempdir()
    return Path(base) / f"ezipc-interop-node-{digest}"


def _installed(directory: Path) -> bool:
    return (directory / "node_modules" / "vscode-jsonrpc" / "package.json").is_file()


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The ``node_modules`` holding the vscode-jsonrpc that tests/interop/node/package.json
    pins: ``npm install --no-audit --no-fund`` into a cache directory keyed by that file's
    hash (reused when present; installed under a temporary name, then renamed, so that
    concurrent runs never see half an install)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the vscode-jsonrpc interop tests")
    package_json = (NODE_SCRIPTS / "package.json").read_bytes()
    final = _node_cache_dir(package_json)
    if not _installed(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
        try:
            (work / "package.json").write_bytes(package_json)
            try:
                proc = subprocess.run(
                    # Few, short retries: this runs inside the first test's time limit.
                    [
                        npm,
                        "install",
                        "--no-audit",
                        "--no-fund",
                        "--fetch-retries=1",
                        "--fetch-retry-mintimeout=1000",
                        "--fetch-retry-maxtimeout=5000",
                    ],
                    cwd=work,
                    capture_output=True,
                    text=True,
                    timeout=NPM_TIMEOUT,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                pytest.skip("npm install vscode-jsonrpc timed out (no access to the npm registry?)")
            if proc.returncode != 0 or not _installed(work):
                lines = (proc.stderr or proc.stdout).strip().splitlines()
                why = [line for line in lines if "error code" in line or "Error:" in line][:2] or lines[-3:]
                pytest.skip(f"npm install vscode-jsonrpc failed ({proc.returncode}): {' | '.join(why)}")
            try:
                os.rename(work, final)
            except OSError:  # another run finished first: use its install
                if not _installed(final):
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final / "node_modules"


@pytest.fixture(scope="session")
def node_env(node_modules: Path) -> dict[str, str]:
    """Environment for ``node tests/interop/node/*.js`` (vscode-jsonrpc through NODE_PATH)."""
    return {**os.environ, "NODE_PATH": str(node_modules)}


def vscode_jsonrpc_version(node_modules: Path) -> str:
    return str(json.loads((node_modules / "vscode-jsonrpc" / "package.json").read_text())["version"])
