"""Options and counters shared by the async and the blocking adapters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ezipc_proto import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_MESSAGE_SIZE, Codec, Session, Stats

if TYPE_CHECKING:
    import ssl as _ssl

__all__ = ["Options", "Stats"]


@dataclass(frozen=True)
class Options:
    """Every keyword option of ``Server``, ``Client`` and ``connect``, with its default.

    Limits (see docs/limits.md for the error each one produces):
    ``max_message_size`` bytes per message; ``max_batch_size`` members per batch;
    ``max_concurrency`` request handlers running at once per connection (more wait);
    ``max_queued`` requests and notifications waiting to start per connection (one more
    request is answered ``SERVER_BUSY`` at once, one more notification is dropped and
    logged; reading never waits on them, so answers to our calls always get through);
    ``max_pending`` of our requests awaiting answers per connection (one more raises
    ``LimitExceeded``); ``max_connections`` per server (one more is answered with
    ``SERVER_BUSY`` and closed); ``idle_timeout`` seconds without traffic or work before
    a connection is closed (None: never); ``message_timeout`` seconds a message may stay
    half-received (slow senders); ``write_buffer_size`` bytes queued for the peer above
    which we stop reading from it until it reads (a peer that never reads cannot make us
    buffer without bound).
    """

    framing: Literal["ndjson", "content-length", "auto"] = "ndjson"
    codec: str | Codec = "json"
    cancellation: Literal["lsp", "mcp", None] = "lsp"
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_concurrency: int = 64
    max_queued: int = 1024
    max_pending: int = 1024
    max_connections: int = 1024
    max_workers: int = 32  #: blocking adapter: worker threads per server (or client)
    idle_timeout: float | None = None
    message_timeout: float | None = 60.0
    request_timeout: float | None = None  #: default timeout of our outgoing requests
    shutdown_timeout: float = 5.0  #: grace period for in-flight requests on shutdown
    write_buffer_size: int = 1024 * 1024
    debug: bool = False  #: error answers carry the exception's repr (never the traceback)
    log_messages: bool = False  #: log every message (truncated) at DEBUG on logger "ezipc"
    ssl: _ssl.SSLContext | None = None
    unix_mode: int = 0o600  #: permissions of Unix sockets we create
    allowed_uids: frozenset[int] | None = None  #: Unix peers allowed (None: any)
    auth_token: str | None = None  #: shared secret a client must present (see docs/security.md)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.framing not in ("ndjson", "content-length", "auto"):
            raise ValueError(f"framing must be 'ndjson', 'content-length' or 'auto', not {self.framing!r}")
        for name in (
            "max_message_size",
            "max_batch_size",
            "max_concurrency",
            "max_queued",
            "max_pending",
            "max_connections",
            "max_workers",
            "write_buffer_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("idle_timeout", "message_timeout", "request_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None")
        if self.allowed_uids is not None:  # accept any iterable of uids
            object.__setattr__(self, "allowed_uids", frozenset(self.allowed_uids))

    @classmethod
    def build(cls, defaults: dict[str, Any], options: dict[str, Any]) -> Options:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**{**defaults, **options})

    def replace(self, **changes: Any) -> Options:
        return dataclasses.replace(self, **changes) if changes else self

    def session(self, *, now: float, name: str, server: bool, framing: str | None = None) -> Session:
        """A session (the protocol core and the connection's policy) with these options;
        a server's asks its peer for ``auth_token`` (a client's presents it instead)."""
        return Session(
            framing or self.framing,  # type: ignore[arg-type]
            now=now,
            name=name,
            max_message_size=self.max_message_size,
            max_batch_size=self.max_batch_size,
            codec=self.codec,
            cancellation=self.cancellation,
            max_concurrency=self.max_concurrency,
            max_queued=self.max_queued,
            max_pending=self.max_pending,
            write_buffer_size=self.write_buffer_size,
            request_timeout=self.request_timeout,
            idle_timeout=self.idle_timeout,
            message_timeout=self.message_timeout,
            shutdown_timeout=self.shutdown_timeout,
            auth_token=self.auth_token if server else None,
            debug=self.debug,
            log_messages=self.log_messages,
        )
