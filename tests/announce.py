"""What ``Server.start()`` prints on stderr when the program has not set up logging:
where it listens and how it stops, nothing else (helpers for the example and README tests)."""

from __future__ import annotations

import re

__all__ = ["announcements"]

_LINE = re.compile(
    r"\d\d:\d\d:\d\d ezipc: (serving on \S+|shutting down: .+|received SIG\w+: shutting down|server stopped)"
)


def announcements(stderr: str) -> list[str]:
    """The announcement lines of ``stderr`` (without their time); AssertionError if it
    holds anything else, or does not say where the server listened and that it stopped."""
    lines = stderr.splitlines()
    stray = [line for line in lines if not _LINE.fullmatch(line)]
    assert not stray, f"unexpected on stderr: {stray}"
    said = [line.split(" ", 2)[2] for line in lines]
    assert said and said[0].startswith("serving on ") and said[-1] == "server stopped", said
    return said
