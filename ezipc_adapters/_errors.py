"""Exceptions raised to users of the adapters (both async and blocking)."""

from __future__ import annotations

from typing import Any

__all__ = ["RemoteError", "ConnectionClosed", "LimitExceeded", "RequestCancelled"]


class RemoteError(Exception):
    """An error answer (code, message, data).

    Raised by ``request`` when the peer answers with an error, and raised *by a handler*
    to answer with exactly this error. Any other exception in a handler is answered with
    -32603 (Internal error) and no detail; the traceback stays in the local log.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(code, message, data)
        self.code = int(code)
        self.message = message
        self.data = data

    def __str__(self) -> str:
        text = f"[{self.code}] {self.message}"
        return text if self.data is None else f"{text} (data: {self.data!r})"

    def __repr__(self) -> str:
        return f"RemoteError({self.code!r}, {self.message!r}, {self.data!r})"


class ConnectionClosed(Exception):
    """The connection ended before the answer arrived (or before the call was sent)."""


class LimitExceeded(Exception):
    """A local limit was reached (``max_pending`` outgoing requests): the call was not sent."""


class RequestCancelled(Exception):
    """The request was cancelled on our side (``Call.cancel()``); the peer was told."""
