"""The ``ezipc`` command: ``serve``, ``call`` and ``demo``.

``ezipc serve TARGET --listen ADDRESS``   serve a Server, or a module's functions
``ezipc call ADDRESS METHOD [PARAMS]``    one request (or notification, or batch); print the answer
``ezipc call --spawn "CMD ARGS" METHOD``  the same with a child program over its stdin/stdout
``ezipc demo``                            a server and a client in one process, step by step

Exit status of ``call``: 0 an answer, 1 an error reply, 2 a usage error, 3 a timeout,
4 a connection failure (refused, closed before the answer, a child that could not start),
130 interrupted. ``serve`` exits 0 after a graceful shutdown (SIGINT or SIGTERM), 2 for a
bad TARGET or option, 4 when it cannot listen. ``demo`` exits 0 when every step went as
expected, 1 when one did not, 2 for a bad option or when trio is missing for
``--backend trio``.

One module per command (``serve``, ``call``, ``demo``), each with ``add_parser(sub)`` and
``run(args) -> int``; ``common`` holds what they share.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Protocol

from . import call, demo, serve
from .call import parse_params
from .common import EXIT_INTERRUPTED, EXIT_USAGE, SetupError, UsageError
from .serve import load_target

__all__ = ["main", "parse_params", "load_target"]


class _Command(Protocol):
    """What a command's module provides."""

    def add_parser(
        self, sub: argparse._SubParsersAction[argparse.ArgumentParser]
    ) -> argparse.ArgumentParser: ...

    def run(self, args: argparse.Namespace) -> int: ...


COMMANDS: dict[str, _Command] = {"serve": serve, "call": call, "demo": demo}


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
        return COMMANDS[args.command].run(args)
    except UsageError as exc:
        commands[args.command].print_usage(sys.stderr)
        print(f"ezipc {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SetupError as exc:
        print(f"ezipc {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ezipc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


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
    return parser, {name: command.add_parser(sub) for name, command in COMMANDS.items()}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("ezipc")
    except Exception:
        return "(version unknown)"
