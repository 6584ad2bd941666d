"""``ezipc serve TARGET --listen ADDRESS``: serve a Server, or a module's functions.

Exit status: 0 after a graceful shutdown (SIGINT or SIGTERM), 2 for a bad TARGET or
option, 4 when it cannot listen.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import io
import logging
import os
import re
import ssl
import sys
import traceback
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, TextIO

from .._address import DEFAULT_ADDRESS, WEB_KINDS, parse_address
from .._async_endpoints import Server
from .common import (
    EXIT_CONNECTION,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    leaf,
    log,
    logging_to_stderr,
)

_EPILOG = """\
TARGET, one of:
  module:attr or file.py:attr   a Server object (or a function returning one)
  module or file.py             if it defines exactly one Server, that one; otherwise its
                                public functions (not starting with _, defined in it, not
                                imported) become methods, for requests and notifications
The module is imported with the current directory on sys.path; a file with its own folder.

ADDRESS: tcp://HOST:PORT, tcp://[::1]:PORT (port 0 picks a free one), unix:PATH,
unix:///abs/path, or stdio (this process's stdin/stdout; logs go to stderr). --listen may
be repeated. Default: tcp://127.0.0.1:9002.
Or one web address, ws://HOST:PORT/PATH (wss:// with --tls-cert): the server's ASGI app
run by uvicorn (pip install 'ezipc[web]'), WebSocket and HTTP POST at that URL, one
worker; for more workers run uvicorn yourself (docs/web.md).

Logs go to stderr: one line per connection and per error; --verbose logs every message.
SIGINT (Ctrl-C) or SIGTERM shuts down gracefully: requests in flight get up to the
server's shutdown_timeout (5 s by default) to finish.

examples:
  ezipc serve mymethods.py --listen tcp://127.0.0.1:9002
  ezipc serve myapp.rpc:server --listen unix:/tmp/app.sock --listen tcp://[::1]:9002
  ezipc serve mymethods.py --listen stdio --framing content-length
  ezipc serve mymethods.py --listen tcp://0.0.0.0:9443 --tls-cert cert.pem --tls-key key.pem
  ezipc serve mymethods.py --listen ws://127.0.0.1:8000/rpc
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``serve`` to the subcommands ``sub``."""
    parser = sub.add_parser(
        "serve",
        help="serve a Server, or a module's functions",
        description="Serve TARGET until SIGINT or SIGTERM, then shut down gracefully.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="TARGET", help="module:attr, file.py:attr, module or file.py")
    parser.add_argument(
        "--listen",
        "-l",
        action="append",
        metavar="ADDRESS",
        default=[],
        help=f"where to listen (repeatable; default {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--framing",
        choices=("auto", "ndjson", "content-length"),
        default=None,
        help="message framing (default: the Server's own; 'auto' for a module's functions: "
        "each connection is answered in the framing it speaks)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log every message (truncated)")
    parser.add_argument(
        "--tls-cert", metavar="CERT", help="serve TLS on tcp:// addresses: certificate chain (PEM)"
    )
    parser.add_argument("--tls-key", metavar="KEY", help="private key of --tls-cert (PEM; default: in CERT)")
    parser.add_argument("--tls-ca", metavar="CA", help="require client certificates signed by this CA (PEM)")
    return parser


def run(args: argparse.Namespace) -> int:
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
    with logging_to_stderr(level, timestamps=True, tracebacks=args.verbose):
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
        if ssl_context is not None and not any(parse_address(a).kind in WEB_KINDS for a in addresses):
            changes["ssl"] = ssl_context  # (uvicorn does the TLS of web addresses)
        server.options = server.options.replace(**changes)
        server.hook_disconnect(_log_errors)
        tls = (args.tls_cert, args.tls_key, args.tls_ca)
        if ssl_context is not None and not any(
            parse_address(a).kind in ("tcp", "wss", "https") for a in addresses
        ):
            log.warning("TLS applies to tcp:// addresses only: none is served")
        log.info("%s; framing %s", description, server.options.framing)
        stdio = any(parse_address(a).kind == "stdio" for a in addresses)
        web = [a for a in addresses if parse_address(a).kind in WEB_KINDS]
        try:
            if web:
                from .web import serve_web

                if len(web) != len(addresses):
                    raise UsageError(
                        "a web address is served by uvicorn, alone: not with tcp://, unix: or stdio"
                    )
                return serve_web(server, web, tls)
            with _prints_to_stderr() if stdio else contextlib.nullcontext():
                server.start(*addresses)
        except KeyboardInterrupt:  # a signal before the server could take it over
            log.info("interrupted")
            return EXIT_INTERRUPTED
        except Exception as exc:
            inner = leaf(exc)
            if isinstance(inner, OSError):
                log.error("cannot serve on %s: %s", ", ".join(addresses), inner)
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
    from .._blocking_endpoints import Server as BlockingServer

    return isinstance(obj, BlockingServer)


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
