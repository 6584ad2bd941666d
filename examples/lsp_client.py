"""Talk to a real language server: python-lsp-server (``pylsp``), over its stdin/stdout.

    pip install 'python-lsp-server[pyflakes]'       # (it is in ezipc's test extra)
    python examples/lsp_client.py

The Language Server Protocol is JSON-RPC 2.0 with ``Content-Length`` framing, so ezipc
speaks it as is: ``Client(framing="content-length").connect_subprocess(argv)`` starts
the server and talks to it. A session: ``initialize``, ``initialized``, open a document
(``textDocument/didOpen``), ask for ``textDocument/hover``, then ``shutdown`` and ``exit``.

A language server calls its client too. pylsp asks ``window/workDoneProgress/create``
before it lints (we said we support progress), then sends ``$/progress`` and
``textDocument/publishDiagnostics`` notifications: the client answers and handles them
with hooks, exactly as a server would.
"""

import asyncio
import subprocess
import sys
from pathlib import Path

from ezipc_adapters import Client

SOURCE = """\
import os
import json

print(json.dumps({"answer": 42}))
"""
ROOT = Path.cwd().as_uri()
URI = f"{ROOT}/example.py"  # a document the editor has open (it need not exist on disk)

client = Client(framing="content-length")
diagnosed = asyncio.Event()


@client.hook_request("window/workDoneProgress/create")
def create_progress(token: str) -> None:  # returns None: the answer's result is null
    print(f"server asks: may I report progress? (token {token[:8]}...) -> yes")


@client.hook_notif("$/progress")
def progress(token: str, value: dict) -> None:
    if value["kind"] == "begin":
        print(f"server progress: {value['title']}")


@client.hook_notif("textDocument/publishDiagnostics")
def diagnostics(uri: str, diagnostics: list, version: int | None = None) -> None:
    for d in diagnostics:
        line = d["range"]["start"]["line"] + 1
        print(f"diagnostic: {Path(uri).name}:{line}: {d['message']} ({d.get('source')})")
    diagnosed.set()


@client.hook_notif("window/logMessage")
def log_message(type: int, message: str) -> None:
    print(f"server log: {message}")


async def main() -> None:
    argv = [sys.executable, "-m", "pylsp"]
    # pylsp logs to its stderr (and so does black, which it runs to format signatures):
    # hidden here; pass stderr=None to see it.
    async with client.connect_subprocess(argv, stderr=subprocess.DEVNULL) as lsp:
        init = await lsp.request(
            "initialize",
            {
                "processId": None,
                "rootUri": ROOT,
                "capabilities": {"window": {"workDoneProgress": True}},
            },
            timeout=30,
        )
        info = init.get("serverInfo", {})
        print(
            f"initialized {info.get('name')} {info.get('version')}; "
            f"hover: {init['capabilities'].get('hoverProvider')}"
        )
        await lsp.notify("initialized", {})

        await lsp.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": SOURCE}},
        )

        # Hover over "dumps" in line 4 (LSP counts lines and characters from 0).
        hover = await lsp.request(
            "textDocument/hover",
            {"textDocument": {"uri": URI}, "position": {"line": 3, "character": 12}},
            timeout=30,
        )
        contents = hover["contents"] if hover else {}
        text = contents.get("value", "") if isinstance(contents, dict) else str(contents)
        signature = " ".join(text.replace("```python", "").split())[:60]
        print(f"hover on json.dumps: {signature}...")

        # Linting runs in the background: wait (a little) for its diagnostics.
        try:
            await asyncio.wait_for(diagnosed.wait(), 15)
        except asyncio.TimeoutError:
            print("no diagnostics yet")

        await lsp.request("shutdown", timeout=10)
        await lsp.notify("exit")
    print("pylsp has exited")


if __name__ == "__main__":
    asyncio.run(main())
