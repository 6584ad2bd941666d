"""The client of examples/write_server.py: a WRITE notification, then ``write`` requests.

    python examples/write_client.py                          # tcp://127.0.0.1:9002
    python examples/write_client.py unix:/tmp/write.sock
    EZIPC_ADDRESS=tcp://127.0.0.1:9010 python examples/write_client.py

The original EZ-IPC client did the same with ``await client.connect()``,
``remote.notif("WRITE", {...})`` and a Future from ``remote.request``; see
docs/migrating.md for the mapping.
"""

import asyncio
import os
import sys

from ezipc_adapters import RemoteError, connect

ADDRESS = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("EZIPC_ADDRESS", "tcp://127.0.0.1:9002")


async def main() -> None:
    async with connect(ADDRESS, timeout=5) as remote:
        # A notification: sent, never answered. The server prints what it did.
        await remote.notify("WRITE", {"filename": "hello.txt", "content": "Hello, world!\n"})
        print("sent WRITE hello.txt (a notification: no answer)")

        # Requests: each answers with a result or an error. Params by name, as the
        # original sent them; a list would bind by position: ["notes.txt", "..."].
        tries = [
            {"filename": "notes.txt", "content": "written by a request\n"},
            {"filename": "notes.txt"},  # "content" is missing: -32602 before the handler runs
            {"filename": "no/such/dir/x.txt", "content": "?"},  # the OS refuses: -32000
            {"filename": "../escape.txt", "content": "?"},  # outside the server's directory
        ]
        for params in tries:
            try:
                written = await remote.request("write", params, timeout=5)
            except RemoteError as exc:
                print(f"write {params['filename']}: error {exc.code}: {exc.message}")
            else:
                print(f"write {params['filename']}: {written} bytes written")


if __name__ == "__main__":
    asyncio.run(main())
