"""Helpers for the command line's tests: the CLI run as a subprocess, an ``ezipc serve``
running in the background (its stderr collected by a thread), and a module of methods."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "ezipc_adapters"]

METHODS = '''\
"""Methods served by the tests: every public function defined here."""
import os
from json import dumps  # imported: not a method

import anyio

from ezipc_adapters import RemoteError


def add(a, b):
    return a + b


def greet(name, greeting="hello"):
    return f"{greeting}, {name}"


def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


async def slow(seconds, started_file=None):
    if started_file:
        with open(started_file, "w"):
            pass
    await anyio.sleep(seconds)
    return "done"


def fail():
    raise ValueError("boom")


def chatty():
    print("printed by a handler")  # served over stdio, this must not reach the protocol
    return "ok"


def refuse():
    raise RemoteError(4000, "refused", {"why": "a test"})


def remember(value, path):
    with open(path + ".tmp", "w") as f:
        f.write(dumps(value))
    os.replace(path + ".tmp", path)


async def ask_client(remote):
    try:
        return await remote.request("client/ask", {"question": "?"}, timeout=5)
    except RemoteError as exc:
        return {"client answered": exc.code}


def _private():
    return "never served"
'''


def cli(
    *args: str, timeout: float = 30, cwd: str | Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m ezipc_adapters ARGS``, as a user runs it; output captured as text."""
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd,
        input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def cli_command(*args: str) -> str:
    """The command line for ``--spawn``."""
    return shlex.join([*CLI, *args])


@pytest.fixture(scope="session")
def short_tmp() -> Iterator[Path]:
    """A short directory (Unix socket paths are limited to about 100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ezipc-cli-", dir="/tmp" if os.path.isdir("/tmp") else None))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def methods_file(short_tmp: Path) -> Path:
    path = short_tmp / "methods.py"
    path.write_text(METHODS)
    return path


class Served:
    """An ``ezipc serve`` process: its bound addresses and what it logged so far."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.addresses: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                match = re.search(r"serving on (\S+)", line)
                if match:
                    self.addresses.append(match.group(1))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 15) -> str:
        """The first logged line matching ``pattern`` (a regex), waiting for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if re.search(pattern, line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"{pattern!r} not logged; the log:\n" + "\n".join(self.lines))
                self._changed.wait(min(left, 0.2))

    def address(self, kind: str) -> str:
        return next(a for a in self.addresses if a.startswith(kind))

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("ezipc serve did not stop; its log:\n" + self.log) from None
        self._reader.join(5)
        return code


@contextmanager
def serving(*args: str, listens: int = 1, cwd: str | Path | None = None) -> Iterator[Served]:
    """Run ``ezipc serve ARGS`` until the block ends; wait until it serves on ``listens``
    addresses."""
    proc = subprocess.Popen(
        [*CLI, "serve", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=cwd,
    )
    served = Served(proc)
    try:
        deadline = time.monotonic() + 20
        while len(served.addresses) < listens:
            if proc.poll() is not None or time.monotonic() > deadline:
                served.stop()
                raise AssertionError("ezipc serve did not start; its log:\n" + served.log)
            time.sleep(0.02)
        yield served
    finally:
        served.stop()
        assert proc.stdout is not None
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture(scope="module")
def server(methods_file: Path, short_tmp: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    """``ezipc serve methods.py`` on a free TCP port and a Unix socket (framing auto)."""
    sock = short_tmp / f"{request.module.__name__.rsplit('.', 1)[-1]}.sock"
    with serving(str(methods_file), "--listen", "tcp://127.0.0.1:0", "--listen", f"unix:{sock}",
                 listens=2) as served:
        yield served


def wait_for_file(path: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.02)
    return path.read_text()
