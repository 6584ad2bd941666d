"""Error codes, the exceptions of the protocol core, and what a call can end with."""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "ErrorCode",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "RemoteError",
    "InvalidResponse",
    "ConnectionClosed",
    "LimitExceeded",
    "RequestCancelled",
]


class ErrorCode(enum.IntEnum):
    """Error codes: the JSON-RPC 2.0 specification's, LSP's cancellation, and ezipc's own.

    ezipc's own codes sit in -32000..-32099, the range the specification leaves to
    implementations; they follow jsonrpsee's numbering where it has one and avoid the
    codes LSP and MCP give other meanings (-32001, -32002).
    """

    PARSE_ERROR = -32700  #: the text is not valid JSON (or not valid UTF-8)
    INVALID_REQUEST = -32600  #: valid JSON, but not a valid request object
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603

    SERVER_ERROR = -32000  #: a generic implementation-defined error
    MESSAGE_TOO_LARGE = -32007  #: a message exceeded ``max_message_size``
    SERVER_BUSY = -32009  #: a connection, pending-request or in-flight limit was reached
    BATCH_TOO_LARGE = -32010  #: a batch exceeded ``max_batch_size``
    UNAUTHORIZED = -32030  #: authentication is required and has not succeeded
    SHUTTING_DOWN = -32031  #: the server is shutting down and did not finish the request

    REQUEST_CANCELLED = -32800  #: LSP: the request was cancelled


class ProtocolError(Exception):
    """Base class of the core's errors.

    ``error_code`` hints which JSON-RPC error code to answer with, if anything is
    answered at all (an adapter may send ``Error(None, exc.error_code, str(exc))``
    before it closes a connection whose peer broke the framing).
    """

    def __init__(self, msg: str, error_code: int = ErrorCode.INTERNAL_ERROR) -> None:
        super().__init__(msg)
        self.error_code = int(error_code)  # a plain int: it prints as a number on every Python


class LocalProtocolError(ProtocolError):
    """You asked the connection to send something illegal. Nothing was written and the
    connection's state did not change, so the caller may try something else."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the framing in a way that cannot be recovered from. The receiving
    side of the connection is in the ``ERROR`` state: ``next_event`` raises again, but
    ``send`` still works so that a last error reply can be written."""

    def __init__(self, msg: str, error_code: int = ErrorCode.PARSE_ERROR) -> None:
        super().__init__(msg, error_code)


# ---- what a call we made ends with (raised to users of a Session and of the adapters) ----


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
        return f"{type(self).__name__}({self.code!r}, {self.message!r}, {self.data!r})"


class InvalidResponse(RemoteError):
    """The peer answered our request with something that is not a valid JSON-RPC answer
    (both ``result`` and ``error``, a malformed error object, neither of them...). It is
    the only answer the peer will send for that id, so the call ends with this error;
    ``message`` says what was wrong, ``code`` is -32600 (Invalid Request)."""


class ConnectionClosed(Exception):
    """The connection ended before the answer arrived (or before the call was sent)."""


class LimitExceeded(Exception):
    """A local limit was reached (``max_pending`` requests awaiting answers, or a message
    over ``max_message_size``): the call was not sent."""


class RequestCancelled(Exception):
    """The request was cancelled on our side (``Call.cancel()``); the peer was told."""
