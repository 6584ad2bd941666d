"""The connection: one JSON-RPC 2.0 peer as a state machine, bytes in, events out.

Symmetric: there is no client or server role. Each connection keeps two id tables:
``awaiting``, the requests we sent and still await an answer to, and ``owed``, the
requests we received and still owe one answer to. The same rules are checked on what
we send and on what we receive.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable, Iterator, KeysView
from typing import Any, Literal

from ._codec import Codec, get_codec, unchecked_decoder
from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
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
    Request,
    Response,
    _error,
    _RawNotification,
    _RawRequest,
    _RawResponse,
)
from ._framing import FRAMERS, OVERSIZE, AutoFramer

__all__ = [
    "Connection",
    "State",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_BATCH_SIZE",
]

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
DEFAULT_MAX_BATCH_SIZE = 1000
#: How many cancelled ids are remembered so that their late answers are dropped quietly.
MAX_ABANDONED = 4096

Framing = Literal["ndjson", "content-length", "auto", "message"]
Cancellation = Literal["lsp", "mcp", None]


class State(enum.Enum):
    OPEN = "OPEN"
    CLOSED = "CLOSED"  #: this side has closed (EOF received, or ``Closed`` sent)
    ERROR = "ERROR"  #: the peer broke the framing (receiving side only)

    # Members are singletons: hash by identity, in C (Enum's own __hash__ is a Python
    # call, paid on every send's TRANSITIONS lookup).
    __hash__ = object.__hash__


_SENDABLE = (Request, Notification, Response, Error, Cancel)

#: What each side may do in each state: (state, event type) -> next state. Sending an
#: event this table does not list raises LocalProtocolError; receiving follows the same
#: table (the receiving side also enters ERROR when the peer breaks the framing).
TRANSITIONS: dict[tuple[State, type], State] = {
    **{(State.OPEN, t): State.OPEN for t in _SENDABLE},
    (State.OPEN, Closed): State.CLOSED,
}

#: TRANSITIONS' row for the OPEN state, by event type alone (send's common case).
_OPEN_SENDS = {kind: to for (state, kind), to in TRANSITIONS.items() if state is State.OPEN}

# Cancellation notifications: what we send, per profile, and what we understand.
_CANCEL_SEND = {"lsp": ("$/cancelRequest", "id"), "mcp": ("notifications/cancelled", "requestId")}
# method -> (params key holding the id, whether the cancelled request's answer is withheld)
_CANCEL_RECEIVE = {"$/cancelRequest": ("id", False), "notifications/cancelled": ("requestId", True)}

_MISSING: Any = object()
_BOM = b"\xef\xbb\xbf"
_OPEN = State.OPEN  # a module global is read faster than the enum's attribute


def _valid_id(id: object) -> bool:
    t = type(id)
    return t is int or t is str or id is None or t is float


class _Batch:
    """The answer owed to one received batch: assembled as the application answers."""

    __slots__ = ("owed", "parts", "size", "errored")

    def __init__(self) -> None:
        self.owed = 0  # answers the application still owes
        self.parts: list[bytes] = []  # encoded answers so far (invalid members' included)
        self.size = 0  # their bytes
        self.errored: set[Id] = set()  # ids that an invalid member's error in parts names


class Connection:
    """One JSON-RPC 2.0 peer. Feed it bytes with :meth:`receive_data`, take events from
    :meth:`next_event`, and turn your events into bytes with :meth:`send`.

    ``framing``: ``"ndjson"`` (one message per line, as MCP), ``"content-length"`` (LSP
    headers), ``"auto"`` (detected from the peer's first bytes; sends NDJSON until then),
    or ``"message"`` (no framing: each ``receive_data`` call is one whole message, and
    ``send`` returns bare JSON; for WebSockets and other message transports).

    ``max_message_size``: the largest message body accepted, in bytes; a larger one is
    skipped without being buffered and reported as an :class:`InvalidMessage` whose reply
    is ``ErrorCode.MESSAGE_TOO_LARGE``. ``max_batch_size``: the most members a batch
    may have (a larger one is answered with ``ErrorCode.BATCH_TOO_LARGE``).

    ``codec``: ``"json"`` (the standard library), ``"fast"`` (msgspec, the same results;
    also called ``"msgspec"``), ``"fast-extended"`` (msgspec, encoding its extra types
    too), or a codec object (see ``ezipc_proto.Codec``). ``cancellation``: how a :class:`Cancel` we send
    is written: ``"lsp"`` (``$/cancelRequest {"id": ...}``), ``"mcp"``
    (``notifications/cancelled {"requestId": ...}``) or ``None`` (not at all: the id is
    only forgotten). Either form is understood when received unless it is ``None``.

    Not thread-safe: drive one connection from one thread or task at a time.
    """

    def __init__(
        self,
        framing: Framing = "ndjson",
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        codec: str | Codec = "json",
        cancellation: Cancellation = "lsp",
    ) -> None:
        if framing not in FRAMERS:
            raise ValueError(f"unknown framing {framing!r}: use one of {', '.join(FRAMERS)}")
        if cancellation not in (None, *_CANCEL_SEND):
            raise ValueError(f"unknown cancellation profile {cancellation!r}: use 'lsp', 'mcp' or None")
        if max_message_size < 1 or max_batch_size < 1:
            raise ValueError("limits must be positive")
        self._framer = FRAMERS[framing](max_message_size)
        self.codec = get_codec(codec)
        # Decoding tries the codec's fast decoder first if it has one; such a decoder
        # rejects a text that starts with a BOM, so the BOM is looked for only when it
        # fails (_decode_again). Another codec gets the BOM stripped first, as documented.
        fast = unchecked_decoder(self.codec)
        # (frames are bytes or bytearray: every codec here takes either)
        self._decode_checked: Callable[[Any], Any] = self.codec.decode
        self._decode: Callable[[Any], Any] = fast if fast is not None else self._decode_without_bom
        self._decode_retry = fast is not None
        self._ready = self._framer.ready  # frames already cut, taken without a call
        self._feed = self._framer.feed
        self._accepting = True  # bytes are taken: no EOF, no framing error yet
        self._quiet = False  # next_event has nothing to give until the framer says so
        # While quiet: what the framer's feed would do (see receive_data).
        self._framer_sink = self._framer.sink
        self._sink: bytearray | None = None
        self._sink_full = 0
        self._sink_by_length = True  # (else a newline may end a frame too)
        self._encode_raw = self.codec.encode
        self._frame = self._framer.frame
        self.max_message_size = max_message_size
        self.max_batch_size = max_batch_size
        self.cancellation = cancellation
        self.our_state = State.OPEN
        self.their_state = State.OPEN
        self._eof = False
        self._closed = Closed()
        self._queue: deque[Event] = deque()  # the rest of a received batch
        self._awaiting: dict[Id, None] = {}
        self._abandoned: dict[Id, None] = {}  # insertion-ordered: the oldest is forgotten first
        self._owed: dict[Id, _Batch | None] = {}
        self._withheld: set[Id] = set()  # owed, but the answer must not be written (MCP cancel)
        self._last_id = 0
        #: Answers that arrived for requests we had cancelled, dropped quietly.
        self.late_responses = 0

    def __repr__(self) -> str:
        return (
            f"<Connection {self.framing} our_state={self.our_state.name} "
            f"their_state={self.their_state.name} awaiting={len(self._awaiting)} "
            f"owed={len(self._owed)}>"
        )

    # ---- introspection ---------------------------------------------------------------

    @property
    def framing(self) -> str:
        """The framing in use: for ``"auto"``, the detected one (``"auto"`` until then)."""
        framer = self._framer
        if isinstance(framer, AutoFramer) and framer.detected is not None:
            return framer.detected.name
        return framer.name

    @property
    def awaiting(self) -> KeysView[Id]:
        """Ids of the requests we sent that await an answer."""
        return self._awaiting.keys()

    @property
    def owed(self) -> KeysView[Id]:
        """Ids of the requests we received that we still owe an answer."""
        return self._owed.keys()

    @property
    def in_message(self) -> bool:
        """True while a message has been partly received (for a slow-sender timeout)."""
        return self._framer.in_message

    @property
    def bytes_scanned(self) -> int:
        """Bytes the framer has searched so far: linear in the bytes received."""
        return self._framer.scanned

    def next_id(self) -> int:
        """A fresh id for a request: never one in flight (including cancelled ones)."""
        while True:
            self._last_id += 1
            if self._last_id not in self._awaiting and self._last_id not in self._abandoned:
                return self._last_id

    # ---- receiving -------------------------------------------------------------------

    def receive_data(self, data: bytes) -> bool:
        """Add bytes received from the peer; ``b""`` means the peer closed (EOF).

        Returns False when ``next_event`` would surely answer ``NEED_DATA`` (no frame can
        be complete yet), else True. Ignoring it is always correct; a caller that feeds
        tiny pieces (a serial line) may skip ``next_event`` on False."""
        # While quiet, all the framer's feed would do is append and check, so it is done
        # here, without a call (1-byte chunks, NDJSON / Content-Length, ns a byte:
        # 300 / 310 -> 200 / 205; x floor_stdlib in bench/core.py: 0.91x / 0.41x ->
        # 1.2x / 0.65x. The floor's loop makes no call at all.)
        sink = self._sink  # (set only while quiet and accepting: see next_event)
        if sink is not None and data:
            sink += data
            if len(sink) < self._sink_full and (self._sink_by_length or 10 not in data):
                return False
            self._sink = None
            self._quiet = False
            return True
        if data and self._accepting:
            # The framer says whether a frame may be complete now; until one may,
            # next_event answers NEED_DATA at once, and we say so. Fed a byte at a
            # time, a message costs one short call per byte when the caller heeds the
            # answer, two when it does not (1-byte chunks, messages/s, NDJSON: 12k
            # before both, 28k with two calls, 37k with one).
            if self._feed(data):
                self._quiet = False
            return not self._quiet
        if self._eof:
            if data:
                raise LocalProtocolError("received data after EOF")
            return True
        if not data:
            self._eof = True
            self._accepting = self._quiet = False
            self._sink = None
        # (else: nothing more can be received after a framing error: don't buffer it)
        return True

    def next_event(self) -> Event | NeedData:
        """The next event, or ``NEED_DATA``. After EOF, :class:`Closed` (again on every
        call). Raises :class:`RemoteProtocolError` if the peer broke the framing (and again
        on every later call)."""
        if self._queue:
            return self._queue.popleft()
        if self._quiet:
            return NEED_DATA
        if self.their_state is not _OPEN:
            if self.their_state is State.ERROR:
                raise RemoteProtocolError("the peer broke the framing earlier; nothing more can be received")
            return self._closed
        ready, decode = self._ready, self._decode
        while True:
            if ready:
                frame = ready.popleft()
            else:
                framer = self._framer
                try:
                    cut = framer.next_frame()
                except RemoteProtocolError:
                    self.their_state = State.ERROR
                    self._accepting = False
                    raise
                if cut is None:
                    if not self._eof:
                        self._quiet = True  # (until the framer says a frame may be there)
                        sink = self._framer_sink()
                        if sink is not None:
                            self._sink, self._sink_full, newline = sink
                            self._sink_by_length = not newline
                        return NEED_DATA
                    self.their_state = TRANSITIONS[self.their_state, Closed]
                    self._closed = Closed(framer.unfinished())
                    return self._closed
                frame = cut
            if frame is OVERSIZE:
                return self._invalid(
                    None,
                    ErrorCode.MESSAGE_TOO_LARGE,
                    f"Message larger than {self.max_message_size} bytes",
                    None,
                )
            try:
                obj = decode(frame)
            except Exception as exc:
                try:
                    obj = self._decode_again(frame, exc)
                except (ValueError, RecursionError) as error:
                    return self._invalid(None, ErrorCode.PARSE_ERROR, f"Parse error: {error}", None)
            event = self._receive_batch(obj) if type(obj) is list else self._receive(obj, None)
            if event is not None:
                return event

    def _decode_without_bom(self, frame: bytes | bytearray) -> Any:
        if frame.startswith(_BOM):
            frame = frame[3:]
        return self._decode_checked(frame)

    def _decode_again(self, frame: bytes | bytearray, exc: Exception) -> Any:
        """The first decoder raised ``exc``. If that was a codec's fast decoder, the
        codec decides, on the text without its BOM if it has one; else ``exc`` stands."""
        if not self._decode_retry:
            raise exc
        return self._decode_without_bom(frame)

    def events(self) -> Iterator[Event]:
        """Every event available now (a loop over :meth:`next_event` up to ``NEED_DATA``,
        ending after :class:`Closed`)."""
        while True:
            event = self.next_event()
            if event is NEED_DATA:
                return
            yield event
            if type(event) is Closed:
                return

    def _receive_batch(self, items: list[Any]) -> Event | None:
        if not items:
            return self._invalid(None, ErrorCode.INVALID_REQUEST, "Invalid Request: empty batch", None)
        if len(items) > self.max_batch_size:
            return self._invalid(
                None,
                ErrorCode.BATCH_TOO_LARGE,
                f"Batch of {len(items)} exceeds the limit of {self.max_batch_size}",
                None,
            )
        batch = _Batch()
        events = [ev for ev in (self._receive(item, batch) for item in items) if ev is not None]
        if not batch.owed and batch.parts:
            # Nothing left for the application to answer: the reply is complete now, and
            # travels with the batch's first invalid member.
            reply = self._frame(b"[" + b",".join(batch.parts) + b"]")
            first = next(i for i, ev in enumerate(events) if type(ev) is InvalidMessage)
            events[first] = InvalidMessage(events[first].error, reply)  # type: ignore[union-attr]
        if not events:
            return None
        self._queue.extend(events[1:])
        return events[0]

    def _receive(self, obj: Any, batch: _Batch | None) -> Event | None:
        """One decoded message (a batch member if ``batch``): its event, or None."""
        if type(obj) is not dict:
            return self._invalid(None, ErrorCode.INVALID_REQUEST, "Invalid Request: not an object", batch)
        method = obj.get("method")
        if method is None:
            if "method" not in obj and ("result" in obj or "error" in obj or self._awaits(obj)):
                return self._receive_answer(obj)
            return self._invalid_request(obj, "no method", batch)
        if type(method) is not str:
            return self._invalid_request(obj, "method must be a string", batch)
        if obj.get("jsonrpc") != "2.0":
            return self._invalid_request(obj, 'jsonrpc must be "2.0"', batch)
        params = obj.get("params")
        if params is None:
            if "params" in obj:
                return self._invalid_request(obj, "params must be an array or an object", batch)
        elif type(params) is not list and type(params) is not dict:
            return self._invalid_request(obj, "params must be an array or an object", batch)
        id = obj.get("id", _MISSING)
        if id is _MISSING:  # a notification
            if method in _CANCEL_RECEIVE and self.cancellation is not None:
                cancel = self._receive_cancel(method, params)
                if cancel is not _MISSING:
                    return cancel
            if "rpc." <= method < "rpc/":  # method.startswith("rpc."), see _RESERVED
                return self._invalid(None, ErrorCode.METHOD_NOT_FOUND, _RESERVED, batch, reply=False)
            event: Any = _RawNotification()  # _notification(method, params), inline
            event.method, event.params = method, params
            event.__class__ = Notification
            return event  # type: ignore[no-any-return]
        t = type(id)  # _valid_id, inline: this runs for every request
        if t is not int and t is not str and id is not None and t is not float:
            return self._invalid(None, ErrorCode.INVALID_REQUEST, "Invalid Request: bad id", batch)
        owed = self._owed
        if id in owed or (batch is not None and id in batch.errored):
            # Answering with this id would give the peer two answers for one id.
            return self._invalid(
                None,
                ErrorCode.INVALID_REQUEST,
                f"Invalid Request: id {_quote(id)} is already in use by a request in progress",
                batch,
            )
        if "rpc." <= method < "rpc/":  # method.startswith("rpc."), see _RESERVED
            return self._invalid(id, ErrorCode.METHOD_NOT_FOUND, _RESERVED, batch)
        owed[id] = batch
        if batch is not None:
            batch.owed += 1
        # _request(method, params, id), inline: the call alone would cost ~5% of a request
        event = _RawRequest()
        event.method, event.params, event.id = method, params, id
        event.__class__ = Request
        return event  # type: ignore[no-any-return]

    def _receive_cancel(self, method: str, params: Any) -> Event | None:
        """A cancellation notification: Cancel, None (nothing to cancel), or _MISSING (not
        a well-formed one: it goes to the application as a plain notification)."""
        key, withhold = _CANCEL_RECEIVE[method]
        id = params.get(key, _MISSING) if type(params) is dict else _MISSING
        if id is _MISSING or not _valid_id(id):
            return _MISSING  # type: ignore[no-any-return]
        if id not in self._owed:
            return None  # answered already (a normal race) or never asked
        if withhold:
            self._withheld.add(id)
        return Cancel(id)

    def _awaits(self, obj: dict[str, Any]) -> bool:
        """Does ``obj`` carry the id of a request we await (or gave up on)?"""
        id = obj.get("id", _MISSING)
        return _valid_id(id) and (id in self._awaiting or id in self._abandoned)

    def _receive_answer(self, obj: dict[str, Any]) -> Event | None:
        id = obj.get("id", _MISSING)
        event: Response | Error
        t = type(id)  # _valid_id, inline: this runs for every answer
        if id is _MISSING or (t is not int and t is not str and id is not None and t is not float):
            return self._invalid(
                None, ErrorCode.INVALID_REQUEST, "Invalid response: bad or missing id", None, reply=False
            )
        if obj.get("jsonrpc") != "2.0":
            return self._invalid_answer(id, 'jsonrpc must be "2.0"')
        if "error" in obj:
            err = obj["error"]
            if "result" in obj:
                return self._invalid_answer(id, "both result and error")
            if (
                type(err) is not dict
                or type(err.get("code")) is not int
                or type(err.get("message")) is not str
            ):
                return self._invalid_answer(id, "malformed error object")
            event = _error(id, err["code"], err["message"], err.get("data"))
        elif "result" not in obj:
            return self._invalid_answer(id, "neither result nor error")
        else:  # _response(id, obj["result"]), inline
            response: Any = _RawResponse()
            response.id, response.result = id, obj["result"]
            response.__class__ = Response
            event = response
        if self._awaiting.pop(id, _MISSING) is not _MISSING:
            return event
        if id in self._abandoned:
            del self._abandoned[id]
            self.late_responses += 1
            return None
        if id is None and type(event) is Error:
            return event  # the peer could not read something we sent
        return self._invalid(
            id, ErrorCode.INVALID_REQUEST, f"Response to unknown request id {_quote(id)}", None, reply=False
        )

    def _invalid_answer(self, id: Id, why: str) -> InvalidMessage | None:
        """An answer with a readable id that is not a valid answer. If it answers a request
        we await, that request ends here (the peer sends one answer per id)."""
        message = f"Invalid response: {why}"
        if self._awaiting.pop(id, _MISSING) is not _MISSING:
            return InvalidMessage(_error(id, ErrorCode.INVALID_REQUEST, message, None), b"", True)
        if id in self._abandoned:
            del self._abandoned[id]
            self.late_responses += 1
            return None
        return self._invalid(id, ErrorCode.INVALID_REQUEST, message, None, reply=False)

    def _invalid_request(self, obj: dict[str, Any], why: str, batch: _Batch | None) -> InvalidMessage:
        id = obj.get("id")
        if not _valid_id(id) or id in self._owed or (batch is not None and id in batch.errored):
            id = None
        return self._invalid(id, ErrorCode.INVALID_REQUEST, f"Invalid Request: {why}", batch)

    def _invalid(
        self, id: Id, code: int, message: str, batch: _Batch | None, *, reply: bool = True
    ) -> InvalidMessage:
        error = _error(id, code, message, None)
        if not reply:
            return InvalidMessage(error)
        body = self._encode_answer(error)
        if batch is None:
            return InvalidMessage(error, self._frame(body))
        batch.parts.append(body)
        batch.size += len(body)
        if id is not None:
            batch.errored.add(id)
        return InvalidMessage(error)

    # ---- sending ---------------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """The bytes that carry ``event`` to the peer (``b""`` if nothing is to be written
        now: an answer to a batch member that does not complete the batch, an answer the
        peer asked us to withhold, a :class:`Cancel` with cancellation off, or
        :class:`Closed`). Raises :class:`LocalProtocolError`, writing nothing and changing
        nothing, for an event that breaks the protocol."""
        kind = type(event)
        our_state = self.our_state
        state = _OPEN_SENDS.get(kind) if our_state is _OPEN else TRANSITIONS.get((our_state, kind))
        if state is None:
            raise LocalProtocolError(f"cannot send {kind.__name__} in state {self.our_state.name}")
        if kind is Request:
            body = self._encode_call(event, ())  # type: ignore[arg-type]
            if len(body) > self.max_message_size:
                raise self._too_large("request", len(body))
            self._awaiting[event.id] = None  # type: ignore[union-attr]
            return self._frame(body)
        if kind is Response or kind is Error:
            return self._send_answer(event)  # type: ignore[arg-type]
        if kind is Cancel:
            return self._send_cancel(event.id)  # type: ignore[union-attr]
        if kind is Closed:
            self.our_state = state
            return b""
        body = self._encode_call(event, ())  # type: ignore[arg-type]
        if len(body) > self.max_message_size:
            raise self._too_large("notification", len(body))
        return self._frame(body)

    def _too_large(self, what: str, size: int) -> LocalProtocolError:
        """We never send what the peer's limits (taken to be ours) would refuse."""
        return LocalProtocolError(
            f"{what} of {size} bytes exceeds max_message_size ({self.max_message_size})",
            ErrorCode.MESSAGE_TOO_LARGE,
        )

    def send_batch(self, events: Iterable[Request | Notification]) -> bytes:
        """The bytes of one batch holding these requests and notifications. Its answers
        arrive as separate :class:`Response` and :class:`Error` events. (Answers to a
        batch we *received* need nothing special: :meth:`send` each one, and the
        connection assembles the batch's reply.)"""
        if self.our_state is not State.OPEN:
            raise LocalProtocolError(f"cannot send a batch in state {self.our_state.name}")
        events = list(events)
        if not events:
            raise LocalProtocolError("a batch needs at least one request or notification")
        ids: list[Id] = []
        parts = []
        for event in events:
            if type(event) is not Request and type(event) is not Notification:
                raise LocalProtocolError(
                    f"a batch holds requests and notifications, not {type(event).__name__}"
                )
            parts.append(self._encode_call(event, ids))
            if type(event) is Request:
                ids.append(event.id)
        size = sum(map(len, parts)) + len(parts) + 1
        if size > self.max_message_size:
            raise self._too_large("batch", size)
        for id in ids:
            self._awaiting[id] = None
        return self._frame(b"[" + b",".join(parts) + b"]")

    def _encode_call(self, event: Request | Notification, also_taken: Iterable[Id]) -> bytes:
        method = event.method
        if "rpc." <= method < "rpc/":  # method.startswith("rpc."), see _RESERVED
            raise LocalProtocolError(f"method {method!r}: names beginning with 'rpc.' are reserved")
        params = event.params
        msg: dict[str, Any]  # one literal each way: cheaper than adding keys
        if type(event) is Request:
            id = event.id
            t = type(id)  # exactly int or str passes at once; subclasses (not bool) too
            if t is not int and t is not str and (isinstance(id, bool) or not isinstance(id, (int, str))):
                raise LocalProtocolError(
                    f"a request we send needs an int or str id, not {id!r} "
                    "(Connection.next_id() gives one; a Notification has none)"
                )
            if id in self._awaiting or id in self._abandoned or id in also_taken:
                raise LocalProtocolError(f"request id {id!r} is already in flight")
            if params is None:
                msg = {"jsonrpc": "2.0", "method": method, "id": id}
            else:
                msg = {"jsonrpc": "2.0", "method": method, "params": params, "id": id}
        elif params is None:
            msg = {"jsonrpc": "2.0", "method": method}
        else:
            msg = {"jsonrpc": "2.0", "method": method, "params": params}
        try:  # (not a call to _encode: one call less per message)
            return self._encode_raw(msg)
        except (ValueError, TypeError, OverflowError) as exc:
            raise _unencodable(exc) from None

    def _send_answer(self, event: Response | Error) -> bytes:
        id = event.id
        if id not in self._owed:
            if id is None and type(event) is Error:
                return self._frame(self._encode_answer(event))  # about a message we could not read
            raise LocalProtocolError(
                f"no request with id {id!r} awaits an answer (never received, or answered already)"
            )
        body = self._encode_answer(event)
        batch = self._owed[id]
        size = len(body) if batch is None else len(body) + batch.size + len(batch.parts) + 1
        # (a batch's reply is one message). A short error without data is always sent: it
        # is how the peer learns that what it asked for was too large to send.
        if size > self.max_message_size and (
            type(event) is not Error or event.data is not None or len(body) > 256
        ):
            raise self._too_large("answer", size)
        del self._owed[id]
        withheld = bool(self._withheld) and id in self._withheld
        if withheld:
            self._withheld.discard(id)
        if batch is None:
            return b"" if withheld else self._frame(body)
        if not withheld:
            batch.parts.append(body)
            batch.size += len(body)
        batch.owed -= 1
        if batch.owed or not batch.parts:
            return b""
        return self._frame(b"[" + b",".join(batch.parts) + b"]")

    def _send_cancel(self, id: Id) -> bytes:
        if id not in self._awaiting:
            return b""  # answered already: nothing left to cancel
        del self._awaiting[id]
        self._abandoned[id] = None
        if len(self._abandoned) > MAX_ABANDONED:
            del self._abandoned[next(iter(self._abandoned))]
        if self.cancellation is None:
            return b""
        method, key = _CANCEL_SEND[self.cancellation]
        return self._frame(self._encode({"jsonrpc": "2.0", "method": method, "params": {key: id}}))

    def _encode_answer(self, event: Response | Error) -> bytes:
        if type(event) is Response:
            msg = {"jsonrpc": "2.0", "id": event.id, "result": event.result}
        else:
            error: dict[str, Any] = {"code": event.code, "message": event.message}  # type: ignore[union-attr]
            if event.data is not None:  # type: ignore[union-attr]
                error["data"] = event.data  # type: ignore[union-attr]
            msg = {"jsonrpc": "2.0", "id": event.id, "error": error}
        try:  # (not a call to _encode: one call less per message)
            return self._encode_raw(msg)
        except Exception as exc:  # also what a value's own code raises (a dict subclass's items())
            raise _unencodable(exc) from None

    def _encode(self, msg: dict[str, Any]) -> bytes:
        try:
            return self._encode_raw(msg)
        except (ValueError, TypeError, OverflowError) as exc:
            raise _unencodable(exc) from None


def _quote(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error message quotes at most a
    short prefix of what the peer sent."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unencodable(exc: Exception) -> LocalProtocolError:
    return LocalProtocolError(f"cannot encode as JSON: {exc}", ErrorCode.INTERNAL_ERROR)


_RESERVED = "Method not found: names beginning with 'rpc.' are reserved"
# The hot paths test ``"rpc." <= method < "rpc/"``: exactly the strings that begin with
# "rpc." ('/' follows '.'), in two comparisons, cheaper than a call to str.startswith.

AnyEvent = Event | NeedData
