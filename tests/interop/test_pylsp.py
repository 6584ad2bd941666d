"""ezipc as the client of a real language server: python-lsp-server (``pylsp``) over its
stdio with LSP framing, through ``Client.connect_subprocess``. The client declares
``window.workDoneProgress``, so pylsp's linter asks the client to create a progress token
(``window/workDoneProgress/create``: a server->client request that ezipc's hook answers)
before it reports ``$/progress`` and publishes diagnostics."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from ezipc_adapters import Client, RequestCancelled

from .conftest import TEST_TIMEOUT, require

require("pylsp", "pyflakes")  # python-lsp-server[pyflakes]

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(TEST_TIMEOUT)]

SOURCE = '''import os
import sys


def greet(name: str) -> str:
    """Return a friendly greeting."""
    return "hello " + name


greet(os.sep)
'''
GREET_CALL = {"line": 9, "character": 2}  # on "greet" in the last line


def position_params(uri: str, position: dict[str, int]) -> dict[str, Any]:
    return {"textDocument": {"uri": uri}, "position": position}


async def test_pylsp_session(tmp_path: Path) -> None:
    module = tmp_path / "greeting.py"
    module.write_text(SOURCE)
    uri = module.as_uri()

    client = Client(framing="content-length")
    tokens: list[str] = []
    progress: list[tuple[str, dict[str, Any]]] = []
    lint: list[dict[str, Any]] = []
    published = anyio.Event()
    progress_ended = anyio.Event()

    @client.hook_request("window/workDoneProgress/create")
    def create_progress(token: str) -> None:
        tokens.append(token)

    @client.hook_notif("$/progress")
    def on_progress(token: str, value: dict[str, Any]) -> None:
        progress.append((token, value))
        if value.get("kind") == "end":
            progress_ended.set()

    @client.hook_notif("textDocument/publishDiagnostics")
    def on_diagnostics(uri: str, diagnostics: list[dict[str, Any]], **_: Any) -> None:
        if uri == module.as_uri():
            lint.extend(diagnostics)
            published.set()

    @client.hook_notif("window/logMessage")
    def on_log(type: int, message: str) -> None:
        pass

    # pylsp's own log goes to a file beside the workspace (see it with --basetemp).
    with anyio.fail_after(TEST_TIMEOUT - 10), (tmp_path / "pylsp.stderr").open("wb") as stderr:
        async with client.connect_subprocess(
            [sys.executable, "-m", "pylsp"], cwd=str(tmp_path), stderr=stderr
        ) as remote:
            process = remote.data["process"]
            result = await remote.request(
                "initialize",
                {
                    "processId": os.getpid(),
                    "clientInfo": {"name": "ezipc-interop-test"},
                    "rootUri": tmp_path.as_uri(),
                    "workspaceFolders": [{"uri": tmp_path.as_uri(), "name": "ws"}],
                    "capabilities": {
                        "window": {"workDoneProgress": True},
                        "workspace": {"configuration": True, "workspaceFolders": True},
                        "textDocument": {"hover": {"contentFormat": ["markdown", "plaintext"]}},
                    },
                },
                timeout=20,
            )
            assert result["serverInfo"]["name"] == "pylsp"
            capabilities = result["capabilities"]
            assert capabilities["hoverProvider"] is True
            assert capabilities["definitionProvider"] is True
            await remote.notify("initialized", {})

            await remote.notify(
                "textDocument/didOpen",
                {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": SOURCE}},
            )

            hover = await remote.request("textDocument/hover", position_params(uri, GREET_CALL), timeout=20)
            text = (
                hover["contents"]["value"] if isinstance(hover["contents"], dict) else str(hover["contents"])
            )
            assert "greet(name: str) -> str" in text
            assert "Return a friendly greeting." in text

            definition = await remote.request(
                "textDocument/definition", position_params(uri, GREET_CALL), timeout=20
            )
            assert [d["range"]["start"]["line"] for d in definition] == [4]  # "def greet" on line 4
            assert definition[0]["uri"] == uri

            # The linter runs shortly after didOpen (pylsp debounces it), on a thread of
            # its own: it asks us for a progress token first (server -> client request).
            with anyio.fail_after(15):
                await published.wait()
                await progress_ended.wait()
            assert len(tokens) == 1
            assert [(t, v["kind"]) for t, v in progress] == [(tokens[0], "begin"), (tokens[0], "end")]
            assert progress[0][1]["title"] == "lint: pyflakes"
            assert [d["message"] for d in lint] == ["'sys' imported but unused"]
            assert lint[0]["range"]["start"] == {"line": 1, "character": 0}

            # Cancellation: Call.cancel() right after sending sends $/cancelRequest in the
            # same write. pylsp answers hover synchronously (before it reads the cancel),
            # then ignores the cancel for an id it has answered; ezipc drops the late
            # answer quietly and counts it. The session goes on.
            call = remote.request("textDocument/hover", position_params(uri, GREET_CALL))
            assert call.cancel()
            with pytest.raises(RequestCancelled):
                await call
            with anyio.fail_after(10):
                while remote.stats.late_responses < 1:
                    await anyio.sleep(0.01)
            assert remote.stats.late_responses == 1
            hover_again = await remote.request(
                "textDocument/hover", position_params(uri, GREET_CALL), timeout=20
            )
            assert hover_again == hover
            assert remote.stats.errors == 0  # nothing malformed, no answer to an unknown id

            assert await remote.request("shutdown", timeout=10) is None
            await remote.notify("exit")
            with anyio.fail_after(15):
                assert await process.wait() == 0
        assert remote.closed
