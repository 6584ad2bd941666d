"""The events: what a peer sent us, and what we ask the connection to send.

Events are values: frozen, slotted dataclasses, validated when built. The parser builds
them through private constructors that skip re-validation (it has just checked the same
things on the decoded message, and the check is a measurable share of decoding).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import LocalProtocolError

__all__ = [
    "Id",
    "Params",
    "Request",
    "Notification",
    "Response",
    "Error",
    "Cancel",
    "InvalidMessage",
    "Closed",
    "Event",
    "NeedData",
    "NEED_DATA",
]

#: A request id. We send only ``int`` and ``str``; a peer may also use a fractional
#: number or ``null``, which the specification discourages but allows, and is answered
#: with exactly that id. Never a ``bool``.
Id = str | int | float | None
#: Parameters: by position, by name, or absent (``None``).
Params = list[Any] | dict[str, Any] | None


class NeedData(enum.Enum):
    """The type of :data:`NEED_DATA`; ``if event is NEED_DATA`` narrows the type."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"

    __str__ = __repr__


#: Returned by :meth:`Connection.next_event` when it needs more bytes.
NEED_DATA: Literal[NeedData.NEED_DATA] = NeedData.NEED_DATA


def _check_id(id: object, what: str) -> None:
    if id is not None and (isinstance(id, bool) or not isinstance(id, (str, int, float))):
        raise LocalProtocolError(f"{what} id must be a str, int, float or None, not {type(id).__name__}")


def _check_method(method: object) -> None:
    if not isinstance(method, str):
        raise LocalProtocolError(f"method must be a str, not {type(method).__name__}")


def _check_params(params: object) -> None:
    if params is not None and not isinstance(params, (list, dict)):
        raise LocalProtocolError(
            f"params must be a list, a dict or None (absent), not {type(params).__name__}"
        )


@dataclass(frozen=True, slots=True)
class Request:
    """A call that expects exactly one :class:`Response` or :class:`Error` with its ``id``."""

    method: str
    params: Params = None
    id: Id = None

    def __post_init__(self) -> None:
        _check_method(self.method)
        _check_params(self.params)
        _check_id(self.id, "request")


@dataclass(frozen=True, slots=True)
class Notification:
    """A call that is never answered."""

    method: str
    params: Params = None

    def __post_init__(self) -> None:
        _check_method(self.method)
        _check_params(self.params)


@dataclass(frozen=True, slots=True)
class Response:
    """A successful answer; ``result`` may be ``None`` (JSON ``null``)."""

    id: Id
    result: Any = None

    def __post_init__(self) -> None:
        _check_id(self.id, "response")


@dataclass(frozen=True, slots=True)
class Error:
    """An error answer. ``id`` is ``None`` when the request's id could not be read.

    ``code`` is kept as a plain ``int`` (``ErrorCode.INTERNAL_ERROR`` becomes ``-32603``),
    so that a message or a log line that shows it prints the number on every Python
    (before 3.11, ``"%s" % ErrorCode.INTERNAL_ERROR`` is ``"ErrorCode.INTERNAL_ERROR"``).
    """

    id: Id
    code: int
    message: str
    data: Any = None

    def __post_init__(self) -> None:
        _check_id(self.id, "error")
        code = self.code
        if type(code) is not int:
            if isinstance(code, bool) or not isinstance(code, int):
                raise LocalProtocolError(f"error code must be an int, not {type(code).__name__}")
            object.__setattr__(self, "code", int(code))
        if not isinstance(self.message, str):
            raise LocalProtocolError(f"error message must be a str, not {type(self.message).__name__}")


@dataclass(frozen=True, slots=True)
class Cancel:
    """Cancellation of a request that is still in flight.

    Sent, it tells the peer we no longer want the answer to our request ``id`` (as the
    connection's cancellation profile writes it) and drops the late answer quietly.
    Received, it says the peer no longer wants the answer to its request ``id``; the
    application still answers that request once (usually with
    ``ErrorCode.REQUEST_CANCELLED``), and the connection writes that answer or not, as the
    peer's protocol asks (LSP: written; MCP: not).
    """

    id: Id

    def __post_init__(self) -> None:
        _check_id(self.id, "cancel")


@dataclass(frozen=True, slots=True)
class InvalidMessage:
    """The peer sent something that is not valid JSON-RPC; received only.

    ``error`` describes the fault as the error the specification prescribes (code,
    message, and the offending message's id when it could be read). ``reply`` holds the
    framed bytes to write to the peer now, ready made: usually that error, ``b""`` when
    nothing is owed (an invalid response, a response to an id nobody asked, or a batch
    member whose error travels later in the batch's reply), or a whole batch reply when
    this member completes it. Writing ``reply`` is all an application has to do.

    ``ends_request`` is True when the message was an answer to one of *our* requests
    (``error.id``) that is not a valid answer (both ``result`` and ``error``, a malformed
    error object, neither of them...). The peer sends one answer per id, so that request
    is no longer awaited: whoever waits for it should be told ``error.message``.
    """

    error: Error
    reply: bytes = b""
    ends_request: bool = False


@dataclass(frozen=True, slots=True)
class Closed:
    """Received: the peer closed its side (EOF). ``unfinished`` holds the bytes of a
    message that the close cut off, if any. Sent: we will send nothing more."""

    unfinished: bytes = b""


Event = Request | Notification | Response | Error | Cancel | InvalidMessage | Closed


# Private fast constructors for the parser: they skip __init__'s validation. Each builds
# a plain slotted twin of the event class (same slots, so the same memory layout), fills
# the slots with ordinary attribute stores, then re-labels the object with the frozen
# class: about twice as fast as calling the slot descriptors' setters one by one.
class _RawRequest:
    __slots__ = Request.__slots__


class _RawNotification:
    __slots__ = Notification.__slots__


class _RawResponse:
    __slots__ = Response.__slots__


class _RawError:
    __slots__ = Error.__slots__


def _request(method: str, params: Params, id: Id) -> Request:
    ev: Any = _RawRequest()
    ev.method = method
    ev.params = params
    ev.id = id
    ev.__class__ = Request
    return ev  # type: ignore[no-any-return]


def _notification(method: str, params: Params) -> Notification:
    ev: Any = _RawNotification()
    ev.method = method
    ev.params = params
    ev.__class__ = Notification
    return ev  # type: ignore[no-any-return]


def _response(id: Id, result: Any) -> Response:
    ev: Any = _RawResponse()
    ev.id = id
    ev.result = result
    ev.__class__ = Response
    return ev  # type: ignore[no-any-return]


def _error(id: Id, code: int, message: str, data: Any) -> Error:
    ev: Any = _RawError()
    ev.id = id
    ev.code = code if type(code) is int else int(code)  # a plain int, as Error.__post_init__ makes it
    ev.message = message
    ev.data = data
    ev.__class__ = Error
    return ev  # type: ignore[no-any-return]
