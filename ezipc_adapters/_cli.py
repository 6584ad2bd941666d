"""The ``ezipc`` command: ``serve``, ``call`` and ``demo``.

``ezipc serve TARGET --listen ADDRESS``   serve a Server, or a module's functions
``ezipc call ADDRESS METHOD [PARAMS]``    one request (or notification, or batch); print the answer
``ezipc call --spawn "CMD ARGS" METHOD``  the same with a child program over its stdin/stdout
``ezipc demo``                            a server and a client in one process, step by step

Exit status of ``call``: 0 an answer, 1 an error reply, 2 a usage error, 3 a timeout,
4 a connection failure (refused, closed before the answer, a child that could not start),
130 interrupted. ``serve`` exits 0 after a graceful shutdown (SIGINT or SIGTERM), 2 for a
bad TARGET or option, 4 when it cannot listen.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import logging
import os
import re
import shlex
import ssl
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar, TextIO

import anyio
import anyio.abc

from ._address import DEFAULT_ADDRESS, parse_address
from ._async import Client, Remote, Server
from ._errors import ConnectionClosed, RemoteError

__all__ = ["main", "parse_params", "load_target"]

EXIT_OK = 0
EXIT_ERROR_REPLY = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_CONNECTION = 4
EXIT_INTERRUPTED = 130

DEFAULT_TIMEOUT = 30.0

log = logging.getLogger("ezipc")


class UsageError(Exception):
    """A bad command line (exit status 2)."""


# ---- entry point ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ezipc`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit
    status (argparse's own exits, for ``--help`` and usage errors, are returned too)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser, commands = _build_parser()
    try:
        if args_list and args_list[0] in commands:
            # Each command parses its own arguments, intermixed: options may follow the
            # positionals (``ezipc call ADDR sum 1 2 --timeout 5``).
            name = args_list[0]
            args = commands[name].parse_intermixed_args(args_list[1:])
            args.command = name
        else:
            args = parser.parse_args(args_list)
            if args.command is None:
                parser.print_help(sys.stderr)
                return EXIT_USAGE
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "call":
            return _call(args)
        return _demo(args)
    except UsageError as exc:
        commands[args.command].print_usage(sys.stderr)
        print(f"ezipc {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ezipc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


_CALL_EPILOG = """\
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
wants initialize, then the notification notifications/initialized, before tools/list).

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

_SERVE_EPILOG = """\
TARGET, one of:
  module:attr or file.py:attr   a Server object (or a function returning one)
  module or file.py             if it defines exactly one Server, that one; otherwise its
                                public functions (not starting with _, defined in it, not
                                imported) become methods, for requests and notifications
The module is imported with the current directory on sys.path; a file with its own folder.

ADDRESS: tcp://HOST:PORT, tcp://[::1]:PORT (port 0 picks a free one), unix:PATH,
unix:///abs/path, or stdio (this process's stdin/stdout; logs go to stderr). --listen may
be repeated. Default: tcp://127.0.0.1:9002.

Logs go to stderr: one line per connection and per error; --verbose logs every message.
SIGINT (Ctrl-C) or SIGTERM shuts down gracefully: requests in flight get up to the
server's shutdown_timeout (5 s by default) to finish.

examples:
  ezipc serve mymethods.py --listen tcp://127.0.0.1:9002
  ezipc serve myapp.rpc:server --listen unix:/tmp/app.sock --listen tcp://[::1]:9002
  ezipc serve mymethods.py --listen stdio --framing content-length
  ezipc serve mymethods.py --listen tcp://0.0.0.0:9443 --tls-cert cert.pem --tls-key key.pem
"""


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="ezipc",
        description="JSON-RPC 2.0 from the command line: serve Python functions, call any "
        "JSON-RPC server (TCP, Unix sockets, TLS, or a child over stdio; NDJSON or "
        "Content-Length framing), or run the demo.",
        epilog="Run 'ezipc COMMAND --help' for a command's options. New here? Run 'ezipc demo'.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    serve = sub.add_parser(
        "serve",
        help="serve a Server, or a module's functions",
        description="Serve TARGET until SIGINT or SIGTERM, then shut down gracefully.",
        epilog=_SERVE_EPILOG,
        formatter_class=fmt,
    )
    serve.add_argument("target", metavar="TARGET", help="module:attr, file.py:attr, module or file.py")
    serve.add_argument(
        "--listen",
        "-l",
        action="append",
        metavar="ADDRESS",
        default=[],
        help=f"where to listen (repeatable; default {DEFAULT_ADDRESS})",
    )
    serve.add_argument(
        "--framing",
        choices=("auto", "ndjson", "content-length"),
        default=None,
        help="message framing (default: the Server's own; 'auto' for a module's functions: "
        "each connection is answered in the framing it speaks)",
    )
    serve.add_argument("--verbose", "-v", action="store_true", help="log every message (truncated)")
    serve.add_argument(
        "--tls-cert", metavar="CERT", help="serve TLS on tcp:// addresses: certificate chain (PEM)"
    )
    serve.add_argument("--tls-key", metavar="KEY", help="private key of --tls-cert (PEM; default: in CERT)")
    serve.add_argument("--tls-ca", metavar="CA", help="require client certificates signed by this CA (PEM)")

    call = sub.add_parser(
        "call",
        help="send one request, notification or batch and print the answer",
        description="Send METHOD with PARAMS to the server at ADDRESS (or to a child program "
        "with --spawn) and print the result.",
        usage="ezipc call [options] ADDRESS METHOD [PARAMS ...]\n"
        "       ezipc call [options] --spawn 'COMMAND ARGS' METHOD [PARAMS ...]\n"
        "       ezipc call [options] (ADDRESS | --spawn 'COMMAND ARGS') --batch FILE",
        epilog=_CALL_EPILOG,
        formatter_class=fmt,
    )
    call.add_argument("words", nargs="*", metavar="ADDRESS METHOD PARAMS", help=argparse.SUPPRESS)
    call.add_argument("--notify", "-n", action="store_true", help="send a notification: no answer, no output")
    call.add_argument(
        "--framing",
        choices=("ndjson", "content-length"),
        default="ndjson",
        help="message framing (default: ndjson; language servers use content-length)",
    )
    call.add_argument(
        "--timeout",
        "-t",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="give up on the answer (and on connecting) after this long; 0: never "
        f"(default {DEFAULT_TIMEOUT:g})",
    )
    call.add_argument(
        "--spawn",
        metavar="'COMMAND ARGS'",
        help="start this program (split as by a shell, not run by one) and talk to it over its "
        "stdin/stdout instead of connecting to an ADDRESS; its stdin is closed at the end",
    )
    call.add_argument(
        "--batch", "-b", metavar="FILE", help="send the calls in FILE (- for stdin) as one batch"
    )
    call.add_argument(
        "--sequential",
        "-s",
        action="store_true",
        help="with --batch: send the calls one at a time, in order, each awaiting its answer",
    )
    call.add_argument("--tls", action="store_true", help="connect with TLS (system CAs unless --cafile)")
    call.add_argument(
        "--cafile", metavar="CA", help="trust this CA (PEM) for the server's certificate; implies --tls"
    )
    call.add_argument("--cert", metavar="CERT", help="client certificate (PEM) for TLS; implies --tls")
    call.add_argument("--key", metavar="KEY", help="private key of --cert (PEM; default: in CERT)")
    call.add_argument(
        "--server-hostname", metavar="NAME", help="the name to check the TLS certificate against"
    )
    out = call.add_mutually_exclusive_group()
    out.add_argument(
        "--pretty", action="store_true", default=None, help="indent the JSON output (default on a terminal)"
    )
    out.add_argument(
        "--compact", action="store_false", dest="pretty", help="print the JSON output on one line"
    )
    call.add_argument("--verbose", "-v", action="store_true", help="log every message to stderr")

    demo = sub.add_parser(
        "demo",
        help="a server and a client in one process, showing what ezipc does",
        description="Start a server and a client in this process and show, step by step and "
        "with measured timings, a request, a notification, a batch, a server-to-client call, "
        "a cancelled slow request and error replies, with every message on the wire.",
    )
    demo.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="event loop (default asyncio)"
    )
    demo.add_argument(
        "--no-wire", dest="wire", action="store_false", help="do not print the messages on the wire"
    )
    demo.add_argument("--no-color", dest="color", action="store_false", default=None, help="no colours")
    return parser, {"serve": serve, "call": call, "demo": demo}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("ezipc")
    except Exception:
        return "(version unknown)"


def _one_line(exc: BaseException) -> str:
    """An exception in one line: its type, message and the innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        last = frames[-1]
        where = f" (at {os.path.basename(last.filename)}:{last.lineno} in {last.name})"
    return f"{type(exc).__name__}: {exc}{where}"


class _OneLineFormatter(logging.Formatter):
    """Each record on one line: an exception is summed up, not printed as a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            text = super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        if record.exc_info and record.exc_info[1] is not None:
            text += ": " + _one_line(record.exc_info[1])
        return text.replace("\n", " ")


@contextlib.contextmanager
def _logging(level: int, *, timestamps: bool, tracebacks: bool = False) -> Iterator[None]:
    """Send the "ezipc" logger to stderr at ``level`` for the duration (restored after,
    so that ``main()`` can be called in-process); one line per record unless
    ``tracebacks``."""
    logger = logging.getLogger("ezipc")
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s %(levelname)s %(message)s" if timestamps else "ezipc: %(levelname)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt) if tracebacks else _OneLineFormatter(fmt))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups."""
    while True:
        inner = getattr(exc, "exceptions", None)
        if isinstance(inner, tuple) and len(inner) == 1 and isinstance(inner[0], BaseException):
            exc = inner[0]
        else:
            return exc


# ---- ezipc serve ---------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    addresses: list[str] = args.listen or [DEFAULT_ADDRESS]
    for address in addresses:
        try:
            parse_address(address)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.tls_key and not args.tls_cert:
        raise UsageError("--tls-key needs --tls-cert")
    if args.tls_ca and not args.tls_cert:
        raise UsageError("--tls-ca needs --tls-cert")
    ssl_context = _server_ssl(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    level = logging.DEBUG if args.verbose else logging.INFO
    with _logging(level, timestamps=True, tracebacks=args.verbose):
        try:
            server, description = load_target(args.target)
        except UsageError:
            raise
        except Exception:  # the user's module raised while being imported: show where
            traceback.print_exc()
            print(f"ezipc serve: error: importing {args.target!r} failed", file=sys.stderr)
            return EXIT_USAGE
        changes: dict[str, Any] = {}
        if args.framing is not None:
            changes["framing"] = args.framing
        if args.verbose:
            changes["log_messages"] = True
        if ssl_context is not None:
            changes["ssl"] = ssl_context
        server.options = server.options.replace(**changes)
        server.hook_disconnect(_log_errors)
        if ssl_context is not None and not any(parse_address(a).kind == "tcp" for a in addresses):
            log.warning("TLS applies to tcp:// addresses only: none is served")
        log.info("%s; framing %s", description, server.options.framing)
        stdio = any(parse_address(a).kind == "stdio" for a in addresses)
        try:
            with _prints_to_stderr() if stdio else contextlib.nullcontext():
                server.start(*addresses)
        except KeyboardInterrupt:  # a signal before the server could take it over
            log.info("interrupted")
            return EXIT_INTERRUPTED
        except Exception as exc:
            leaf = _leaf(exc)
            if isinstance(leaf, OSError):
                log.error("cannot serve on %s: %s", ", ".join(addresses), leaf)
                return EXIT_CONNECTION
            raise
    return EXIT_OK


class _PrintsToStderr(io.TextIOBase):
    """``sys.stdout`` while serving stdio: what Python code prints goes to stderr, so that
    a handler's ``print()`` cannot corrupt the protocol; ``fileno()`` is still the real
    stdout, the one the connection writes to."""

    def __init__(self, stdout: TextIO) -> None:
        self._fileno = stdout.fileno()

    def fileno(self) -> int:
        return self._fileno

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@contextlib.contextmanager
def _prints_to_stderr() -> Iterator[None]:
    saved = sys.stdout
    sys.stdout = _PrintsToStderr(saved)
    try:
        yield
    finally:
        sys.stdout = saved


def _log_errors(remote: Any) -> None:
    """On disconnect, one line if the connection had errors (error answers sent, or
    malformed input received), which the adapter does not log one by one."""
    stats = remote.stats
    if stats.errors:
        log.info(
            "%s: %d error(s) in %d message(s) received and %d sent",
            remote.remote_address,
            stats.errors,
            stats.messages_in,
            stats.messages_out,
        )


def _server_ssl(cert: str, key: str | None, ca: str | None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        if ca:
            context.load_verify_locations(ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the TLS certificate, key or CA: {exc}") from None
    return context


_TARGET_ATTR = re.compile(r"^(.+):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")


def _is_server(obj: object) -> bool:
    if isinstance(obj, Server):
        return True
    if type(obj).__module__ == "ezipc_adapters._blocking":
        from ._blocking import Server as BlockingServer

        return isinstance(obj, BlockingServer)
    return False


def load_target(target: str) -> tuple[Any, str]:
    """The server ``ezipc serve TARGET`` runs, and a line describing it.

    ``module:attr`` / ``file.py:attr``: that Server (or a function returning one);
    ``module`` / ``file.py``: its only Server if it defines exactly one, else a new
    ``Server`` whose methods are the module's public functions. Raises ``UsageError``
    for a target that cannot be found or holds nothing to serve."""
    match = _TARGET_ATTR.match(target)
    spec, attr = target, None
    if match and not _is_windows_drive(target):
        spec, attr = match.group(1), match.group(2)
    module = _import(spec)
    if attr is not None:
        obj: Any = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise UsageError(f"{spec!r} has no attribute {attr!r}") from None
        if not _is_server(obj) and callable(obj):
            obj = obj()
        if not _is_server(obj):
            raise UsageError(f"{target!r} is not an ezipc Server (it is {type(obj).__name__})")
        return obj, f"serving {target} ({_methods(obj)})"
    servers = [name for name, value in vars(module).items() if not name.startswith("_") and _is_server(value)]
    if len(servers) == 1:
        obj = getattr(module, servers[0])
        return obj, f"serving {spec}:{servers[0]} ({_methods(obj)})"
    functions = public_functions(module)
    if not functions:
        raise UsageError(
            f"{spec!r} defines no public function to serve"
            + (f" and {len(servers)} Servers: name one as {spec}:NAME" if servers else "")
        )
    server = Server(framing="auto")
    for name, fn in functions.items():
        server.hook_request(name, fn)
        server.hook_notif(name, fn)
    return server, f"serving the functions of {spec} ({_methods(server)})"


def public_functions(module: ModuleType) -> dict[str, Callable[..., Any]]:
    """The functions defined in ``module`` (not imported into it) whose names do not start
    with an underscore, in definition order."""
    return {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_") and inspect.isfunction(value) and value.__module__ == module.__name__
    }


def _methods(server: Any) -> str:
    names = sorted(server.requests)
    notifs = sorted(set(server.notifications) - set(names))
    text = f"methods: {', '.join(names) or 'none'}"
    return text + (f"; notifications: {', '.join(notifs)}" if notifs else "")


def _is_windows_drive(target: str) -> bool:
    return sys.platform == "win32" and len(target) > 2 and target[1] == ":" and target[2] in "\\/"


def _import(spec: str) -> ModuleType:
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise UsageError(f"no such file: {spec}")
        stem = os.path.splitext(os.path.basename(path))[0]
        name = stem if stem.isidentifier() and stem not in sys.modules else "__ezipc_target__"
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)  # so that it can import its neighbours
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise UsageError(f"cannot load {spec} as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)  # as `python -m` does
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name is not None and spec.startswith(exc.name) and spec[len(exc.name) :][:1] in ("", "."):
            raise UsageError(f"no module named {spec!r} (not on sys.path? or did you mean a file?)") from None
        raise


# ---- ezipc call ----------------------------------------------------------------------

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


def _load_batch(source: str) -> list[tuple[str, Any, bool]]:
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


def _call(args: argparse.Namespace) -> int:
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
        batch = _load_batch(args.batch)
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
    with _logging(logging.DEBUG if args.verbose else logging.WARNING, timestamps=False):
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

    def _fail(self, message: str, status: int) -> int:
        print(f"ezipc: {message}", file=sys.stderr, flush=True)
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
            leaf = _leaf(exc)
            if status is not None:  # the answer is out: a failure while closing does not change it
                log.warning("while closing the connection: %r", leaf)
                return status
            if isinstance(leaf, TimeoutError):
                return self._fail(
                    f"cannot connect to {self.peer}: no connection within {self.timeout:g}s", EXIT_CONNECTION
                )
            if isinstance(leaf, OSError | anyio.BrokenResourceError | anyio.EndOfStream | ConnectionClosed):
                what = "cannot start" if self.argv else "cannot connect to"
                return self._fail(f"{what} {self.peer}: {_describe_error(leaf)}", EXIT_CONNECTION)
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
            what = "the batch" if self.batch is not None and not self.sequential else repr(self.method)
            return self._fail(f"no answer to {what} from {self.peer} within {self.timeout:g}s", EXIT_TIMEOUT)
        except ConnectionClosed as exc:
            return self._fail(await self._closed_message(remote, exc), EXIT_CONNECTION)
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


# ---- ezipc demo ----------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    color = args.color if args.color is not None else (sys.stdout.isatty() and "NO_COLOR" not in os.environ)
    demo = _Demo(wire=args.wire, color=color, backend=args.backend)
    logger = logging.getLogger("ezipc")
    handler = _DemoLogHandler(demo)
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        return anyio.run(demo.run, backend=args.backend)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class _DemoLogHandler(logging.Handler):
    """The server's log lines (warnings and errors), one line each, in the demo's output."""

    def __init__(self, demo: _Demo) -> None:
        super().__init__(logging.WARNING)
        self.demo = demo

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f": {_one_line(record.exc_info[1])}"
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


if __name__ == "__main__":
    raise SystemExit(main())
