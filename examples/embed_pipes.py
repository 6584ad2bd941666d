"""Embedding ezipc_proto: a parent and a child process talking over a pair of OS pipes.

The parent (a "host") starts this same file again as a child process (a "plugin") and
talks JSON-RPC over the child's stdin and stdout, framed with ``Content-Length``
headers as the Language Server Protocol does. Calls go both ways on the one connection:
to answer the parent's ``scale`` request the child first calls the parent's
``host.get_setting``, and answers only when that answer is in. The parent ends the
session by closing the child's stdin: the child sees EOF (a ``Closed`` event), exits,
and its stdout closes in turn.

Both sides use plain blocking reads and writes. That is fine for small messages; a
program that writes large ones while its peer is also writing should write from a
thread of its own, so that neither side blocks forever on a full pipe.

Run it: ``python examples/embed_pipes.py``
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import IO, Any, Final

from ezipc_proto import (
    Closed,
    Connection,
    Error,
    ErrorCode,
    Id,
    InvalidMessage,
    Notification,
    Params,
    Request,
    Response,
)

FRAMING: Final = "content-length"
SETTINGS = {"factor": 3}


def read(stream: IO[bytes]) -> bytes:
    # os.read returns what the pipe holds now (up to 64 KiB) without waiting for more,
    # and b"" at EOF, which is exactly what receive_data() takes as EOF.
    return os.read(stream.fileno(), 65536)


def write(stream: IO[bytes], data: bytes) -> None:
    if data:  # send() returns b"" when there is nothing to write
        stream.write(data)
        stream.flush()


# ---- the child: a plugin that serves requests and calls its host -------------------


def answer(request: Request) -> Response | Error:
    """The child's methods that need nothing from the parent."""
    if request.method != "subtract":
        return Error(request.id, ErrorCode.METHOD_NOT_FOUND, f"Method not found: {request.method}")
    if not isinstance(request.params, list) or len(request.params) != 2:
        return Error(request.id, ErrorCode.INVALID_PARAMS, "Invalid params: subtract(minuend, subtrahend)")
    minuend, subtrahend = request.params
    return Response(request.id, minuend - subtrahend)


def child() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer  # the pipes, as bytes
    sys.stdout = sys.stderr  # a stray print() must not corrupt the JSON-RPC stream
    conn = Connection(framing=FRAMING)
    waiting: dict[Id, Request] = {}  # our call's id -> the parent's request waiting for it

    while True:
        conn.receive_data(read(stdin))
        for event in conn.events():
            if isinstance(event, Request) and event.method == "scale":
                # Needs a setting only the host knows: ask it, and answer later. The
                # connection keeps the parent's request as owed until we do.
                question = Request("host.get_setting", {"key": "factor"}, conn.next_id())
                waiting[question.id] = event
                write(stdout, conn.send(question))
            elif isinstance(event, Request):
                write(stdout, conn.send(answer(event)))
            elif isinstance(event, Response):  # the host's answer to one of our questions
                asked = waiting.pop(event.id)
                values: list[Any] = asked.params["values"] if isinstance(asked.params, dict) else []
                write(stdout, conn.send(Notification("log", [f"scaling {len(values)} values"])))
                write(stdout, conn.send(Response(asked.id, [v * event.result for v in values])))
            elif isinstance(event, Error):
                print(f"child: error {event.code}: {event.message}")  # goes to stderr
            elif isinstance(event, InvalidMessage):
                write(stdout, event.reply)
            elif isinstance(event, Closed):
                return  # the parent closed our stdin: we are done; exiting closes stdout


# ---- the parent: the host that starts the plugin -----------------------------------


def parent() -> int:
    argv = [sys.executable, __file__, "--child"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    to_child, from_child = proc.stdin, proc.stdout
    conn = Connection(framing=FRAMING)

    calls: dict[Id, str] = {}
    to_call: list[tuple[str, Params]] = [
        ("subtract", [42, 23]),
        ("scale", {"values": [1, 2, 3]}),
        ("subtract", [23, 42]),
    ]
    for method, params in to_call:
        request = Request(method, params, conn.next_id())
        calls[request.id] = f"{method}({params})"
        write(to_child, conn.send(request))

    while True:
        conn.receive_data(read(from_child))
        for event in conn.events():
            if isinstance(event, Request) and event.method == "host.get_setting":
                key = event.params.get("key") if isinstance(event.params, dict) else None
                value = SETTINGS.get(key) if isinstance(key, str) else None
                print(f"parent: the child asks host.get_setting({key!r}) -> {value!r}")
                write(to_child, conn.send(Response(event.id, value)))
            elif isinstance(event, Request):
                write(to_child, conn.send(Error(event.id, ErrorCode.METHOD_NOT_FOUND, "Method not found")))
            elif isinstance(event, Notification):
                print(f"parent: the child notifies {event.method} {event.params}")
            elif isinstance(event, Response):
                print(f"parent: {calls.pop(event.id)} = {event.result!r}")
            elif isinstance(event, Error):
                print(f"parent: {calls.pop(event.id, 'a call')} failed: error {event.code}: {event.message}")
            elif isinstance(event, InvalidMessage):
                write(to_child, event.reply)
            elif isinstance(event, Closed):
                from_child.close()
                status = proc.wait(timeout=5)
                print(f"parent: the child closed its stdout and exited with status {status}")
                return status
        if not conn.awaiting and not to_child.closed:
            print("parent: all answers are in; closing the child's stdin")
            conn.send(Closed())  # we send nothing more (returns b"")
            to_child.close()  # the child reads EOF; its Closed event tells it to stop


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        child()
    else:
        sys.exit(parent())
