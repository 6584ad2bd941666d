"""What the ``ezipc`` commands share: exit statuses, the usage and setup errors, and
logging to stderr one line per record."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator

EXIT_OK = 0
EXIT_ERROR_REPLY = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_CONNECTION = 4
EXIT_INTERRUPTED = 130

log = logging.getLogger("ezipc")


class UsageError(Exception):
    """A bad command line (exit status 2)."""


class SetupError(Exception):
    """Something to install first (exit status 2, in one line: no usage, no traceback)."""


def one_line(exc: BaseException) -> str:
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
            text += ": " + one_line(record.exc_info[1])
        return text.replace("\n", " ")


@contextlib.contextmanager
def logging_to(handler: logging.Handler, level: int) -> Iterator[None]:
    """Send the "ezipc" logger to ``handler`` at ``level`` for the duration (restored
    after, so that ``main()`` can be called in-process)."""
    logger = logging.getLogger("ezipc")
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


def logging_to_stderr(
    level: int, *, timestamps: bool, tracebacks: bool = False
) -> contextlib.AbstractContextManager[None]:
    """:func:`logging_to` stderr, one line per record unless ``tracebacks``."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s %(levelname)s %(message)s" if timestamps else "ezipc: %(levelname)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt) if tracebacks else _OneLineFormatter(fmt))
    return logging_to(handler, level)


def leaf(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups."""
    while True:
        inner = getattr(exc, "exceptions", None)
        if isinstance(inner, tuple) and len(inner) == 1 and isinstance(inner[0], BaseException):
            exc = inner[0]
        else:
            return exc
