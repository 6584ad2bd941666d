"""``ezipc call ADDRESS METHOD [PARAMS]`` (or ``--spawn "CMD ARGS"``, or ``--batch FILE``):
send a request, a notification or a batch to any JSON-RPC server and print the answer.

Exit status: 0 an answer, 1 an error reply, 2 a usage error, 3 a timeout, 4 a connection
failure (refused, closed before the answer, a child that could not start), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shlex
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import anyio

from .._address import parse_address
from .._async import Remote
from .._async_endpoints import Client
from .._errors import ConnectionClosed, RemoteError
from .common import (
    EXIT_CONNECTION,
    EXIT_ERROR_REPLY,
    EXIT_OK,
    EXIT_TIMEOUT,
    UsageError,
    leaf,
    log,
    logging_to_stderr,
)

DEFAULT_TIMEOUT = 30.0

# After a batch that got no answer: servers that do not support batches ignore one (pylsp,
# vscode-jsonrpc, the MCP SDKs) or close the connection, and the fix is --sequential.
BATCH_HINT = (
    "hint: if the server does not support JSON-RPC batches (most language servers and MCP "
    "servers do not), add --sequential to send the calls one at a time"
)

_EPILOG = """\
PARAMS, one of:
  a JSON array or object, as one argument     '[42, 23]'   '{"minuend": 42, "subtrahend": 23}'
  key=value pairs (by-name params)            minuend=42 subtrahend=23 name=Ada tags='["a","b"]'
  values (by-position params)                 42 23        (each JSON if it parses, else a string)
  nothing                                     params are omitted
A value that is not valid JSON is sent as a string (name=Ada sends "Ada"); quote it as JSON
to force a string (n='"42"').

--batch FILE (or - for stdin) holds a JSON array; each item is either
  {"method": "sum", "params": [1, 2]}                  a request
  {"method": "log", "params": ["hi"], "notify": true}  a notification
  or a raw JSON-RPC object ({"jsonrpc": "2.0", "method": ..., "id": ...}): a request when it
  has an "id" (ids are reassigned), else a notification.
All are sent as one JSON-RPC batch (requests first, then notifications). The output is an
array with one item per request, in order: {"method": M, "result": R} or {"method": M,
"error": {"code": C, "message": S, "data": D}}; the exit status is 1 if any is an error.
With --sequential they are sent one at a time instead, in the file's order, each request
waiting for its answer: a session in one command, for servers that want one (an MCP server
wants initialize, then the notification notifications/initialized, before tools/list), and
for servers that do not support batches (most language servers and MCP servers): they never
answer one, or close the connection.

The result is printed as JSON on stdout (indented on a terminal, compact when piped); an
error reply is printed as JSON on stderr. Requests the server sends meanwhile (language
servers do) are answered with -32601 (method not found); its notifications are ignored.

exit status: 0 result, 1 error reply, 2 usage error, 3 timeout, 4 connection failure

examples:
  ezipc call tcp://127.0.0.1:9002 subtract '[42, 23]'
  ezipc call unix:/tmp/app.sock sum 1 2 3
  ezipc call tcp://127.0.0.1:9002 greet name=Ada --timeout 5
  ezipc call tcp://example.org:9443 --tls --cafile ca.pem status
  ezipc call --spawn "pylsp" --framing content-length initialize \\
      '{"processId": null, "rootUri": null, "capabilities": {}}'
  ezipc call --spawn "npx -y @modelcontextprotocol/server-everything" --sequential --batch mcp.json
      where mcp.json holds
      [{"method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                           "clientInfo": {"name": "ezipc", "version": "0"}}},
       {"method": "notifications/initialized", "notify": true},
       {"method": "tools/list"}]
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``call`` to the subcommands ``sub``."""
    parser = sub.add_parser(
        "call",
        help="send one request, notification or batch and print the answer",
        description="Send METHOD with PARAMS to the server at ADDRESS (or to a child program "
        "with --spawn) and print the result.",
        usage="ezipc call [options] ADDRESS METHOD [PARAMS ...]\n"
        "       ezipc call [options] --spawn 'COMMAND ARGS' METHOD [PARAMS ...]\n"
        "       ezipc call [options] (ADDRESS | --spawn 'COMMAND ARGS') --batch FILE",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("words", nargs="*", metavar="ADDRESS METHOD PARAMS", help=argparse.SUPPRESS)
    parser.add_argument(
        "--notify", "-n", action="store_true", help="send a notification: no answer, no output"
    )
    parser.add_argument(
        "--framing",
        choices=("ndjson", "content-length"),
        default="ndjson",
        help="message framing (default: ndjson; language servers use content-length)",
    )
    parser.add_argument(
        "--timeout",
        "-t",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="give up on the answer (and on connecting) after this long; 0: never "
        f"(default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--spawn",
        metavar="'COMMAND ARGS'",
        help="start this program (split as by a shell, not run by one) and talk to it over its "
        "stdin/stdout instead of connecting to an ADDRESS; its stdin is closed at the end",
    )
    parser.add_argument(
        "--batch", "-b", metavar="FILE", help="send the calls in FILE (- for stdin) as one batch"
    )
    parser.add_argument(
        "--sequential",
        "-s",
        action="store_true",
        help="with --batch: send the calls one at a time, in order, each awaiting its answer",
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system CAs unless --cafile)")
    parser.add_argument(
        "--cafile", metavar="CA", help="trust this CA (PEM) for the server's certificate; implies --tls"
    )
    parser.add_argument("--cert", metavar="CERT", help="client certificate (PEM) for TLS; implies --tls")
    parser.add_argument("--key", metavar="KEY", help="private key of --cert (PEM; default: in CERT)")
    parser.add_argument(
        "--server-hostname", metavar="NAME", help="the name to check the TLS certificate against"
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument(
        "--pretty", action="store_true", default=None, help="indent the JSON output (default on a terminal)"
    )
    out.add_argument(
        "--compact", action="store_false", dest="pretty", help="print the JSON output on one line"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log every message to stderr")
    return parser


_KEY_VALUE = re.compile(r"^([^\s=\[\]{}\"',]+)=(.*)$", re.DOTALL)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_value(text: str) -> Any:
    """``text`` as JSON if it parses (NaN and Infinity excepted), else as a string."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return text


def parse_params(tokens: Sequence[str]) -> Any:
    """The params given on the command line: ``[]`` -> None (omitted); one JSON array or
    object -> itself; ``key=value`` pairs -> an object; other values -> an array."""
    if not tokens:
        return None
    if len(tokens) == 1 and tokens[0].lstrip()[:1] in ("[", "{"):
        try:
            value = json.loads(tokens[0], parse_constant=_reject_constant)
        except ValueError as exc:
            raise UsageError(f"PARAMS is not valid JSON: {exc}") from None
        if isinstance(value, (list, dict)):
            return value
    pairs = [_KEY_VALUE.match(token) for token in tokens]
    if all(pairs):
        params: dict[str, Any] = {}
        for pair in pairs:
            assert pair is not None
            key, value_text = pair.group(1), pair.group(2)
            if key in params:
                raise UsageError(f"{key!r} is given twice")
            params[key] = _json_value(value_text)
        return params
    if any(pairs):
        raise UsageError(
            "PARAMS mixes key=value pairs and plain values: use one or the other, or one JSON array or object"
        )
    return [_json_value(token) for token in tokens]


def load_batch(source: str) -> list[tuple[str, Any, bool]]:
    """The calls in a --batch file, in order: (method, params, is a notification)."""
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read --batch {source}: {exc}") from None
    try:
        items = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise UsageError(f"--batch {source} is not valid JSON: {exc}") from None
    if not isinstance(items, list) or not items:
        raise UsageError(f"--batch {source} must hold a non-empty JSON array of calls")
    calls: list[tuple[str, Any, bool]] = []
    for index, item in enumerate(items):
        where = f"--batch {source}, item {index}"
        if not isinstance(item, dict):
            raise UsageError(f"{where}: expected an object with a 'method', not {json.dumps(item)}")
        method, params = item.get("method"), item.get("params")
        if not isinstance(method, str) or not method:
            raise UsageError(f"{where}: 'method' must be a non-empty string")
        if params is not None and not isinstance(params, (list, dict)):
            raise UsageError(f"{where}: 'params' must be an array or an object")
        if "jsonrpc" in item:
            notify = "id" not in item
        else:
            unknown = set(item) - {"method", "params", "notify"}
            if unknown:
                raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
            notify = item.get("notify", False)
            if not isinstance(notify, bool):
                raise UsageError(f"{where}: 'notify' must be true or false")
        calls.append((method, params, notify))
    return calls


def _client_ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.key and not args.cert:
        raise UsageError("--key needs --cert")
    if not (args.tls or args.cafile or args.cert):
        if args.server_hostname:
            raise UsageError("--server-hostname is for TLS: add --tls")
        return None
    try:
        context = ssl.create_default_context(cafile=args.cafile)
        if args.cert:
            context.load_cert_chain(args.cert, args.key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the TLS CA, certificate or key: {exc}") from None
    return context


def run(args: argparse.Namespace) -> int:
    words: list[str] = list(args.words)
    address: str | None = None
    if args.spawn is None:
        if not words:
            raise UsageError("ADDRESS is missing (or use --spawn 'COMMAND ARGS')")
        address = words.pop(0)
        try:
            kind = parse_address(address).kind
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if kind == "stdio":
            raise UsageError("'stdio' is this process's own stdin/stdout: to talk to a program, use --spawn")
        argv: list[str] = []
    else:
        argv = shlex.split(args.spawn)
        if not argv:
            raise UsageError("--spawn needs a command")
        kind = "stdio"
    ssl_context = _client_ssl(args)
    if ssl_context is not None and kind != "tcp":  # unix:, or a child's stdio
        raise UsageError("TLS (--tls, --cafile, --cert) works with tcp:// addresses only")
    batch = None
    method = ""
    params: Any = None
    if args.batch is not None:
        if words:
            raise UsageError(f"--batch takes no METHOD or PARAMS (got {' '.join(words)})")
        if args.notify:
            raise UsageError("--notify and --batch do not go together: mark notifications in the batch file")
        batch = load_batch(args.batch)
    else:
        if args.sequential:
            raise UsageError("--sequential goes with --batch")
        if not words:
            raise UsageError("METHOD is missing")
        method = words.pop(0)
        params = parse_params(words)
    timeout = args.timeout if args.timeout > 0 else None
    pretty = sys.stdout.isatty() if args.pretty is None else args.pretty
    job = _CallJob(
        address=address,
        argv=argv,
        method=method,
        params=params,
        batch=batch,
        sequential=args.sequential,
        notify=args.notify,
        timeout=timeout,
        pretty=pretty,
        framing=args.framing,
        ssl=ssl_context,
        server_hostname=args.server_hostname,
        verbose=args.verbose,
    )
    with logging_to_stderr(logging.DEBUG if args.verbose else logging.WARNING, timestamps=False):
        return anyio.run(job.run, backend="asyncio")


def _print_json(value: Any, pretty: bool, stream: TextIO) -> None:
    kwargs: dict[str, Any] = {"indent": 2} if pretty else {"separators": (",", ":")}
    try:
        text = json.dumps(value, ensure_ascii=False, **kwargs)
        try:
            print(text, file=stream, flush=True)
        except UnicodeEncodeError:
            print(json.dumps(value, **kwargs), file=stream, flush=True)
    except BrokenPipeError:  # `ezipc call ... | head`: the reader has gone
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())


def _error_object(exc: RemoteError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.data is not None:
        error["data"] = exc.data
    return error


@dataclass
class _CallJob:
    """One ``ezipc call``: what to send, where, and how to print it."""

    address: str | None  # None: talk to ``argv``'s stdio
    argv: list[str]
    method: str
    params: Any
    batch: list[tuple[str, Any, bool]] | None
    sequential: bool
    notify: bool
    timeout: float | None
    pretty: bool
    framing: str
    ssl: ssl.SSLContext | None
    server_hostname: str | None
    verbose: bool

    @property
    def peer(self) -> str:
        return self.address if self.address is not None else f"'{shlex.join(self.argv)}'"

    @property
    def one_batch(self) -> bool:
        """Whether the calls go out as one JSON-RPC batch."""
        return self.batch is not None and not self.sequential

    def _fail(self, message: str, status: int) -> int:
        print(f"ezipc: {message}", file=sys.stderr, flush=True)
        return status

    def _no_answer(self, message: str, status: int) -> int:
        """``_fail``, with the way out for a server that does not answer batches."""
        self._fail(message, status)
        if self.one_batch:
            print(f"ezipc: {BATCH_HINT}", file=sys.stderr, flush=True)
        return status

    async def run(self) -> int:
        # Cancel a timed-out request the way the peer most likely understands: language
        # servers (Content-Length) know $/cancelRequest, MCP servers (NDJSON)
        # notifications/cancelled; an ezipc server understands both.
        client = Client(
            self.framing,
            ssl=self.ssl,
            log_messages=self.verbose,
            cancellation="lsp" if self.framing == "content-length" else "mcp",
        )
        opener: Any
        if self.address is not None:
            opener = client.connect(self.address, timeout=self.timeout, server_hostname=self.server_hostname)
        else:
            opener = client.connect_subprocess(self.argv)
        status: int | None = None
        try:
            async with opener as remote:
                status = await self._exchange(remote)
        except Exception as exc:
            inner = leaf(exc)
            if status is not None:  # the answer is out: a failure while closing does not change it
                log.warning("while closing the connection: %r", inner)
                return status
            if isinstance(inner, TimeoutError):
                return self._fail(
                    f"cannot connect to {self.peer}: no connection within {self.timeout:g}s", EXIT_CONNECTION
                )
            if isinstance(inner, OSError | anyio.BrokenResourceError | anyio.EndOfStream | ConnectionClosed):
                what = "cannot start" if self.argv else "cannot connect to"
                return self._fail(f"{what} {self.peer}: {_describe_error(inner)}", EXIT_CONNECTION)
            raise
        return status

    async def _exchange(self, remote: Remote) -> int:
        try:
            if self.batch is not None:
                if self.sequential:
                    return await self._send_one_by_one(remote, self.batch)
                return await self._send_batch(remote, self.batch)
            if self.notify:
                await remote.notify(self.method, self.params)
                return EXIT_OK
            result = await remote.request(self.method, self.params, timeout=self.timeout)
        except RemoteError as exc:
            _print_json(_error_object(exc), sys.stderr.isatty(), sys.stderr)
            return EXIT_ERROR_REPLY
        except TimeoutError:
            what = "the batch" if self.one_batch else repr(self.method)
            return self._no_answer(
                f"no answer to {what} from {self.peer} within {self.timeout:g}s", EXIT_TIMEOUT
            )
        except ConnectionClosed as exc:
            return self._no_answer(await self._closed_message(remote, exc), EXIT_CONNECTION)
        _print_json(result, self.pretty, sys.stdout)
        return EXIT_OK

    async def _closed_message(self, remote: Remote, exc: ConnectionClosed) -> str:
        process = remote.data.get("process")
        if process is None:
            return f"the connection to {self.peer} closed before the answer ({exc})"
        with anyio.move_on_after(1.0):  # it closed its stdout: it is probably exiting
            await process.wait()
        if process.returncode is None:
            return f"{self.peer} closed its stdout before answering"
        return f"{self.peer} exited with status {process.returncode} before answering"

    async def _send_batch(self, remote: Remote, calls: list[tuple[str, Any, bool]]) -> int:
        requests = [(method, params) for method, params, notify in calls if not notify]
        notifications = [(method, params) for method, params, notify in calls if notify]
        results = await remote.batch(requests, notify=notifications, timeout=self.timeout)
        return self._print_results([method for method, _ in requests], results)

    async def _send_one_by_one(self, remote: Remote, calls: list[tuple[str, Any, bool]]) -> int:
        methods: list[str] = []
        results: list[Any] = []
        for method, params, notify in calls:
            if notify:
                await remote.notify(method, params)
                continue
            methods.append(method)
            self.method = method  # for the message if it times out
            try:
                results.append(await remote.request(method, params, timeout=self.timeout))
            except RemoteError as exc:
                results.append(exc)
        return self._print_results(methods, results)

    def _print_results(self, methods: list[str], results: list[Any]) -> int:
        output: list[dict[str, Any]] = []
        failed = False
        for method, result in zip(methods, results, strict=True):
            if isinstance(result, RemoteError):
                failed = True
                output.append({"method": method, "error": _error_object(result)})
            else:
                output.append({"method": method, "result": result})
        _print_json(output, self.pretty, sys.stdout)
        return EXIT_ERROR_REPLY if failed else EXIT_OK


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"no such file or program: {exc.filename}"
    text = str(exc) or type(exc).__name__
    causes = getattr(exc.__cause__, "exceptions", None)  # anyio.connect_tcp: one per attempt
    if isinstance(causes, tuple) and causes:
        reasons = dict.fromkeys(getattr(c, "strerror", None) or str(c) for c in causes)
        text += f" ({'; '.join(reasons)})"
    return text
