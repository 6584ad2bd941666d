"""ezipc_proto: JSON-RPC 2.0 as a pure state machine ("sans-IO"), standard library only.

Bytes in, events out; events in, bytes out. No I/O, no threads, no event loop: drive a
:class:`Connection` from any transport (a socket, a pipe, a serial line, a WebSocket, a
test) and it keeps the protocol's rules for you.
"""

from ._codec import Codec, JsonCodec, MsgspecCodec
from ._connection import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    TRANSITIONS,
    Cancellation,
    Connection,
    Framing,
    State,
)
from ._errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from ._events import (
    NEED_DATA,
    Cancel,
    Closed,
    Error,
    Event,
    Id,
    InvalidMessage,
    NeedData,
    Notification,
    Params,
    Request,
    Response,
)

__version__ = "0.2.0"  # the same as pyproject.toml's (tests/test_packaging.py checks)

__all__ = [
    "Connection",
    "Framing",
    "Cancellation",
    "State",
    "TRANSITIONS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_BATCH_SIZE",
    "Request",
    "Notification",
    "Response",
    "Error",
    "Cancel",
    "InvalidMessage",
    "Closed",
    "Event",
    "Id",
    "Params",
    "NEED_DATA",
    "NeedData",
    "ErrorCode",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "Codec",
    "JsonCodec",
    "MsgspecCodec",
    "__version__",
]
