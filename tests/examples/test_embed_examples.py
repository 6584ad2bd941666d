"""The embedding examples in examples/ run, exit 0, and print what they compute.

Each example runs in its own interpreter, as a user would run it, in development mode
(``PYTHONDEVMODE=1``, inherited by the pipes example's child) so that a leaked socket
or pipe shows up on stderr; an example writes only to stdout, so stderr must be empty.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str) -> list[str]:
    """Run ``examples/<name>``; return its stdout lines after checking that it succeeded."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONDEVMODE": "1"},
    )
    report = f"{name} exited with {proc.returncode}\n--- stdout:\n{proc.stdout}\n--- stderr:\n{proc.stderr}"
    assert proc.returncode == 0, report
    assert proc.stderr == "", report
    return proc.stdout.splitlines()


def assert_printed(lines: list[str], expected: list[str]) -> None:
    missing = [line for line in expected if line not in lines]
    assert not missing, "missing lines:\n" + "\n".join(missing) + "\n--- output:\n" + "\n".join(lines)


def test_socketpair_select() -> None:
    lines = run_example("embed_socketpair_select.py")
    # The answers the JSON-RPC 2.0 specification gives for its own examples.
    answers = [
        "client: the server could not read a message: error -32700",
        "client: subtract(42, 23) = 19",
        "client: subtract(23, 42) = -19",
        "client: subtract(subtrahend=23, minuend=42) = 19",
        "client: sum(1, 2, 4) = 7",
        "client: get_data() = ['hello', 5]",
        "client: foo.get(name='myself') -> error -32601: Method not found: foo.get",
    ]
    assert_printed(
        lines,
        [
            *answers,
            "server: invalid message (-32700), answered",
            "server: notification update [1, 2, 3, 4, 5]",
            "server: notification notify_hello [7]",
        ],
    )
    # One thread, one stream: the answers arrive in the order the requests were sent.
    assert [line for line in lines if line in answers] == answers
    assert lines[-1] == "client: done; both sides closed"


def test_pipes() -> None:
    lines = run_example("embed_pipes.py")
    assert_printed(
        lines,
        [
            "parent: subtract([42, 23]) = 19",
            "parent: subtract([23, 42]) = -19",
            "parent: the child asks host.get_setting('factor') -> 3",
            "parent: the child notifies log ['scaling 3 values']",
            "parent: scale({'values': [1, 2, 3]}) = [3, 6, 9]",
            "parent: all answers are in; closing the child's stdin",
        ],
    )
    # The child answers `scale` only after the parent has answered its own question.
    assert lines.index("parent: the child asks host.get_setting('factor') -> 3") < lines.index(
        "parent: scale({'values': [1, 2, 3]}) = [3, 6, 9]"
    )
    # Closing the child's stdin ends the child (EOF -> Closed) and then its stdout.
    assert lines[-1] == "parent: the child closed its stdout and exited with status 0"


def test_websocket() -> None:
    lines = run_example("embed_websocket.py")
    assert re.fullmatch(r"client: WebSocket open to ws://127\.0\.0\.1:\d+/rpc", lines[0]), lines
    assert_printed(
        lines,
        [
            "server: notification hello {'name': 'ws-client'}",
            "client: server notification greeting ['Hello, ws-client!']",
            "client: subtract [42, 23] = 19",
            "client: upper {'text': 'json-rpc over websocket'} = 'JSON-RPC OVER WEBSOCKET'",
            "client: divide [1, 0] -> error -32601: Method not found: divide",
            "client: sum [1, 2, 4] = 7",
            "client: subtract [23, 42] = -19",
            "server: the client closed the WebSocket",
        ],
    )
    assert lines[-1] == "client: WebSocket closed with code 1000"  # the server answered our close
