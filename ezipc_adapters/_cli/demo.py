"""``ezipc demo``: a server and a client in one process, step by step, with every message
on the wire."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
import time
from typing import Any, ClassVar

import anyio
import anyio.abc

from .._address import parse_address
from .._async import Remote
from .._async_endpoints import Client, Server
from .._errors import RemoteError
from .common import SetupError, logging_to, one_line


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``demo`` to the subcommands ``sub``."""
    parser = sub.add_parser(
        "demo",
        help="a server and a client in one process, showing what ezipc does",
        description="Start a server and a client in this process and show, step by step and "
        "with measured timings, a request, a notification, a batch, a server-to-client call, "
        "a cancelled slow request and error replies, with every message on the wire.",
    )
    parser.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="event loop (default asyncio)"
    )
    parser.add_argument(
        "--no-wire", dest="wire", action="store_false", help="do not print the messages on the wire"
    )
    parser.add_argument("--no-color", dest="color", action="store_false", default=None, help="no colours")
    return parser


def run(args: argparse.Namespace) -> int:
    _require_backend(args.backend)
    color = args.color if args.color is not None else (sys.stdout.isatty() and "NO_COLOR" not in os.environ)
    demo = _Demo(wire=args.wire, color=color, backend=args.backend)
    with logging_to(_DemoLogHandler(demo), logging.WARNING):
        return anyio.run(demo.run, backend=args.backend)


def _require_backend(backend: str) -> None:
    """Say in one line what to install, rather than let anyio fail with a traceback."""
    if backend != "trio":
        return
    try:
        importlib.import_module("trio")
    except ImportError as exc:
        why = "is not installed" if exc.name == "trio" else f"cannot be imported ({exc})"
        raise SetupError(f"--backend trio needs trio, which {why}: pip install 'ezipc[trio]'") from None


class _DemoLogHandler(logging.Handler):
    """The server's log lines (warnings and errors), one line each, in the demo's output."""

    def __init__(self, demo: _Demo) -> None:
        super().__init__(logging.WARNING)
        self.demo = demo

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f": {one_line(record.exc_info[1])}"
        self.demo.say("log", f"server log ({record.levelname.lower()}): {text}")


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    if ms >= 1000:
        return f"{seconds:.2f} s"
    return f"{ms:.1f} ms" if ms >= 1 else f"{ms:.2f} ms"


class _Demo:
    """``ezipc demo``: a server, a tap that prints the bytes on the wire, and a client."""

    STYLES: ClassVar[dict[str, str]] = {
        "title": "1",
        "step": "1;36",
        "code": "33",
        "wire": "2",
        "server": "35",
        "ok": "32",
        "bad": "31",
        "log": "35",
    }

    def __init__(self, *, wire: bool, color: bool, backend: str) -> None:
        self.wire = wire
        self.color = color
        self.backend = backend
        unicode = _can_print("→←✓✗")
        self.to_server = "→" if unicode else "->"
        self.to_client = "←" if unicode else "<-"
        self.tick = "✓" if unicode else "ok"
        self.cross = "✗" if unicode else "FAILED"
        self.seen = {"up": 0, "down": 0}  # messages the tap has passed, each way
        self.changed: anyio.Event | None = None
        self.failures = 0
        self.reader_gone = False
        self.notified: anyio.Event | None = None
        self.notified_at = 0.0
        self.cancelled: anyio.Event | None = None
        self.slow_started = 0.0
        self.slow_cancelled_after = 0.0

    # ---- output ------------------------------------------------------------------------

    def say(self, style: str, text: str, indent: int = 3) -> None:
        if self.color and style in self.STYLES and text:
            text = f"\033[{self.STYLES[style]}m{text}\033[0m"
        self.line(" " * indent + text)

    def line(self, text: str = "") -> None:
        if self.reader_gone:
            return
        try:
            print(text, flush=True)
        except BrokenPipeError:  # `ezipc demo | head`: finish quietly
            self.reader_gone = True
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    def check(self, ok: bool, text: str) -> None:
        if ok:
            self.say("ok", f"{self.tick} {text}")
        else:
            self.failures += 1
            self.say("bad", f"{self.cross} {text} (unexpected!)")

    def step(self, number: int, title: str) -> None:
        self.line()
        self.say("step", f"{number}. {title}", indent=0)

    def code(self, text: str) -> None:
        for line in text.splitlines():
            self.say("code", line)

    def show_wire(self, direction: str, line: bytes) -> None:
        self.seen[direction] += 1
        if self.changed is not None:
            self.changed.set()
        if not self.wire:
            return
        arrow = f"client {self.to_server} server" if direction == "up" else f"client {self.to_client} server"
        text = line.decode("utf-8", "replace").rstrip("\r")
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, list) and len(value) > 1:  # a batch: one member per line
            items = [json.dumps(item, separators=(",", ":"), ensure_ascii=False) for item in value]
            self.say("wire", f"{arrow}  [{items[0]},", indent=5)
            for item in items[1:-1]:
                self.say("wire", f"{' ' * len(arrow)}   {item},", indent=5)
            self.say("wire", f"{' ' * len(arrow)}   {items[-1]}]", indent=5)
        else:
            self.say("wire", f"{arrow}  {text}", indent=5)

    async def settle(self, up: int, down: int) -> None:
        """Wait (briefly) until the tap has passed ``up`` and ``down`` more messages, so
        that each step's output is complete before the next begins."""
        if not self.wire:
            return
        with anyio.move_on_after(2.0):
            while self.seen["up"] < up or self.seen["down"] < down:
                self.changed = anyio.Event()
                await self.changed.wait()

    # ---- the tap -----------------------------------------------------------------------

    async def _pump(self, source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream, direction: str) -> None:
        buffer = b""
        try:
            while True:
                chunk = await source.receive()
                buffer += chunk
                while b"\n" in buffer:
                    line, _, buffer = buffer.partition(b"\n")
                    self.show_wire(direction, line)
                await sink.send(chunk)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await sink.send_eof()

    async def _tap(self, upstream_port: int, task_status: anyio.abc.TaskStatus[int]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)

        async def handle(downstream: anyio.abc.SocketStream) -> None:
            upstream = await anyio.connect_tcp("127.0.0.1", upstream_port)
            async with downstream, upstream, anyio.create_task_group() as tg:
                tg.start_soon(self._pump, downstream, upstream, "up")
                tg.start_soon(self._pump, upstream, downstream, "down")

        async with listener:
            task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
            await listener.serve(handle)

    # ---- the server ----------------------------------------------------------------------

    def _server(self) -> Server:
        server = Server(framing="ndjson")
        demo = self

        @server.hook_request("subtract")
        def subtract(minuend: float, subtrahend: float) -> float:
            return minuend - subtrahend

        @server.hook_request("sum")
        def sum_(*numbers: float) -> float:
            return sum(numbers)

        @server.hook_request("get_data")
        def get_data() -> list[Any]:
            return ["hello", 5]

        @server.hook_notif("notify_hello")
        def notify_hello(n: int) -> None:
            demo.say("server", f"server: notification notify_hello({n}) received (nothing is sent back)")

        @server.hook_notif("log")
        def log_message(text: str) -> None:
            demo.notified_at = time.perf_counter()
            demo.say("server", f"server: notification log received: {text!r} (nothing is sent back)")
            if demo.notified is not None:
                demo.notified.set()

        @server.hook_request("whoami")
        async def whoami(remote: Remote) -> str:
            demo.say("server", "server: whoami is running; it asks the client for its name first")
            name = await remote.request("client/name", timeout=5)
            return f"hello, {name}"

        @server.hook_request("slow")
        async def slow(seconds: float) -> str:
            demo.slow_started = time.perf_counter()
            try:
                await anyio.sleep(seconds)
            except anyio.get_cancelled_exc_class():
                demo.slow_cancelled_after = time.perf_counter() - demo.slow_started
                demo.say(
                    "server",
                    f"server: slow was cancelled after {_ms(demo.slow_cancelled_after)} "
                    f"(of the {seconds:g} s it meant to sleep)",
                )
                if demo.cancelled is not None:
                    demo.cancelled.set()
                raise
            return "done"

        @server.hook_request("divide")
        def divide(dividend: float, divisor: float) -> float:
            if divisor == 0:
                raise RemoteError(4000, "cannot divide by zero", {"dividend": dividend})
            return dividend / divisor

        @server.hook_request("average")
        def average(numbers: list[float]) -> float:
            return sum(numbers) / len(numbers)  # a bug: an empty list raises ZeroDivisionError

        return server

    # ---- the client --------------------------------------------------------------------

    async def run(self) -> int:
        started = time.perf_counter()
        self.say(
            "title",
            "ezipc demo: a JSON-RPC 2.0 server and client in one process "
            f"({self.backend}, Python {sys.version.split()[0]})",
            indent=0,
        )
        server = self._server()
        client = Client(framing="ndjson")

        @client.hook_request("client/name")
        def client_name() -> str:
            self.say("server", "client: the server asked for my name; answering 'demo client'")
            return "demo client"

        async with anyio.create_task_group() as tg:
            bound = await tg.start(server.serve, "tcp://127.0.0.1:0")
            port = parse_address(bound[0]).port
            tap_port = await tg.start(self._tap, port)
            self.say(
                "", f"server: listening on {bound[0]} (NDJSON framing: one JSON text per line)", indent=0
            )
            if self.wire:
                self.say(
                    "",
                    f"tap:    tcp://127.0.0.1:{tap_port} forwards to the server and prints each "
                    f"message ({self.to_server} to the server, {self.to_client} to the client)",
                    indent=0,
                )
            connect_started = time.perf_counter()
            async with client.connect(f"tcp://127.0.0.1:{tap_port if self.wire else port}") as remote:
                self.say("", f"client: connected in {_ms(time.perf_counter() - connect_started)}", indent=0)
                await self._steps(remote)
                stats = remote.stats
            server.shutdown()
            tg.cancel_scope.cancel()
        total = time.perf_counter() - started
        self.line()
        if self.failures:
            self.say("bad", f"{self.failures} step(s) did not go as expected", indent=0)
            return 1
        self.say(
            "title",
            f"Done in {_ms(total)}: the client sent {stats.messages_out} messages "
            f"({stats.bytes_out} bytes) and received {stats.messages_in} ({stats.bytes_in} bytes).",
            indent=0,
        )
        self.line("Next: serve functions of your own, and call them from another terminal:")
        self.line("   echo 'def subtract(a, b): return a - b' > mymethods.py")
        self.line("   ezipc serve mymethods.py --listen tcp://127.0.0.1:9002")
        self.line("   ezipc call tcp://127.0.0.1:9002 subtract 42 23")
        return 0

    async def _steps(self, remote: Remote) -> None:
        seen = self.seen

        self.step(1, "A request: the server answers with a result")
        self.code('await remote.request("subtract", [42, 23])')
        up, down = seen["up"] + 1, seen["down"] + 1
        t0 = time.perf_counter()
        result = await remote.request("subtract", [42, 23])
        elapsed = time.perf_counter() - t0
        await self.settle(up, down)
        self.check(result == 19, f"result: {result!r} in {_ms(elapsed)}")

        self.step(2, "A notification: no id, so no answer")
        self.code('await remote.notify("log", {"text": "hello from the client"})')
        self.notified = anyio.Event()
        up = seen["up"] + 1
        t0 = time.perf_counter()
        await remote.notify("log", {"text": "hello from the client"})
        with anyio.move_on_after(2.0):
            await self.notified.wait()
        await self.settle(up, seen["down"])
        self.check(
            self.notified.is_set(),
            f"the server ran its handler {_ms(self.notified_at - t0)} after the client sent it",
        )

        self.step(3, "A batch: several calls in one message, the answers in one array")
        self.code(
            'await remote.batch([("sum", [1, 2, 4]), ("subtract", [42, 23]),\n'
            '                    ("foo.get", {"name": "myself"}), ("get_data", None)],\n'
            '                   notify=[("notify_hello", [7])])'
        )
        up, down = seen["up"] + 1, seen["down"] + 1
        t0 = time.perf_counter()
        results = await remote.batch(
            [("sum", [1, 2, 4]), ("subtract", [42, 23]), ("foo.get", {"name": "myself"}), ("get_data", None)],
            notify=[("notify_hello", [7])],
        )
        elapsed = time.perf_counter() - t0
        await self.settle(up, down)
        ok = (
            len(results) == 4
            and results[0] == 7
            and results[1] == 19
            and isinstance(results[2], RemoteError)
            and results[2].code == -32601
            and results[3] == ["hello", 5]
        )
        shown = ", ".join(
            f"error {r.code} ({r.message})" if isinstance(r, RemoteError) else json.dumps(r) for r in results
        )
        self.check(ok, f"4 answers for 4 requests (the notification gets none): {shown} in {_ms(elapsed)}")

        self.step(4, "The server calls the client back in the middle of a request")
        self.code(
            "client = Client()\n"
            '@client.hook_request("client/name")\n'
            'def client_name(): return "demo client"\n'
            'await remote.request("whoami")'
        )
        up, down = seen["up"] + 2, seen["down"] + 2
        t0 = time.perf_counter()
        result = await remote.request("whoami")
        elapsed = time.perf_counter() - t0
        await self.settle(up, down)
        self.check(
            result == "hello, demo client",
            f"result: {result!r} in {_ms(elapsed)} (two round trips, ids counted per direction)",
        )

        self.step(5, "A slow request cancelled by a timeout")
        self.code('await remote.request("slow", {"seconds": 10}, timeout=0.25)')
        self.cancelled = anyio.Event()
        up, down = seen["up"] + 2, seen["down"] + 1
        t0 = time.perf_counter()
        outcome = "no error"
        try:
            await remote.request("slow", {"seconds": 10}, timeout=0.25)
        except TimeoutError:
            outcome = "TimeoutError"
        elapsed = time.perf_counter() - t0
        with anyio.move_on_after(2.0):
            await self.cancelled.wait()
        await self.settle(up, down)
        self.check(
            outcome == "TimeoutError" and self.cancelled.is_set(),
            f"{outcome} after {_ms(elapsed)}; the client sent a cancellation and the server "
            f"stopped the handler (its late answer is dropped)",
        )

        self.step(6, "Error replies: raised as RemoteError(code, message, data)")
        calls: list[tuple[str, Any, int, str]] = [
            ("no_such_method", None, -32601, "no handler: method not found"),
            ("subtract", [1], -32602, "params that do not fit the handler's signature"),
            ("divide", [1, 0], 4000, "the handler raised RemoteError(4000, ...) on purpose"),
            ("average", [[]], -32603, "the handler crashed: internal error, no traceback sent"),
        ]
        for method, params, code, why in calls:
            args = "" if params is None else f", {json.dumps(params)}"
            self.code(f'await remote.request("{method}"{args})')
            up, down = seen["up"] + 1, seen["down"] + 1
            t0 = time.perf_counter()
            try:
                result = await remote.request(method, params)
                text, got = f"no error: {result!r}", None
            except RemoteError as exc:
                text, got = f"RemoteError {exc}", exc.code
            elapsed = time.perf_counter() - t0
            await self.settle(up, down)
            self.check(got == code, f"{text} in {_ms(elapsed)}: {why}")


def _can_print(text: str) -> bool:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True
