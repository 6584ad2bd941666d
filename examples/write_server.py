"""The original EZ-IPC README's example, in ezipc: a server that writes files for its clients.

A ``WRITE`` notification writes ``params["content"]`` to the file ``params["filename"]``
(a notification gets no answer, so the server only prints what it did). The ``write``
request does the same and answers how many bytes it wrote, or an error: -32602 (Invalid
params) when a key is missing, which ezipc checks against the handler's signature before
calling it, and -32000 with the OS's reason when the file cannot be written.

Unlike the original, this server writes only inside one directory (its ``WRITE_DIR``,
by default the current directory) and listens on 127.0.0.1 only: a program that writes
files for whoever connects should not be reachable from the network.

Run it, then the client (examples/write_client.py) from another terminal::

    python examples/write_server.py                        # tcp://127.0.0.1:9002
    python examples/write_server.py unix:/tmp/write.sock   # or any address
    EZIPC_ADDRESS=tcp://127.0.0.1:9010 python examples/write_server.py

Ctrl-C stops it.
"""

import os
import sys
from pathlib import Path

from ezipc_adapters import RemoteError, Server

ADDRESS = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("EZIPC_ADDRESS", "tcp://127.0.0.1:9002")
WRITE_DIR = Path(os.environ.get("WRITE_DIR", ".")).resolve()
CANNOT_WRITE = -32000  # the range -32000..-32099 is the server's own

server = Server()


def safe_path(filename: str) -> Path:
    """``filename`` inside WRITE_DIR, or a RemoteError: no absolute paths, no ``..``."""
    path = (WRITE_DIR / filename).resolve()
    if not path.is_relative_to(WRITE_DIR):
        raise RemoteError(CANNOT_WRITE, f"{filename!r} is outside the server's directory")
    return path


def write_file(filename: str, content: str) -> int:
    """Write ``content`` to ``filename``; the number of bytes written, or a RemoteError."""
    path = safe_path(filename)
    try:
        return path.write_bytes(content.encode())
    except OSError as exc:  # e.g. a missing directory: tell the client why, nothing more
        raise RemoteError(CANNOT_WRITE, f"cannot write {filename!r}: {exc.strerror}") from None


@server.hook_request("write")
def write(filename: str, content: str) -> int:
    """The request: the client gets the number of bytes written, or the error."""
    written = write_file(filename, content)
    print(f"write: {written} bytes to {filename}", flush=True)
    return written


def write_notification(filename: str, content: str) -> None:
    """The notification: nobody waits for an answer, so report here."""
    try:
        written = write_file(filename, content)
    except RemoteError as exc:
        print(f"WRITE failed: {exc.message}", flush=True)
    else:
        print(f"WRITE: {written} bytes to {filename}", flush=True)


# The two-argument form, as the original README registered its handler.
server.hook_notif("WRITE", write_notification)

if __name__ == "__main__":
    print(f"serving on {ADDRESS}, writing into {WRITE_DIR} (Ctrl-C to stop)", flush=True)
    server.start(ADDRESS)  # blocks; SIGINT or SIGTERM shuts down gracefully
    print("server stopped", flush=True)
