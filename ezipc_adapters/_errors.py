"""Exceptions raised to users of the adapters (both async and blocking): the core's own,
re-exported here so that ``from ezipc_adapters import RemoteError`` keeps working."""

from __future__ import annotations

from ezipc_proto import ConnectionClosed, InvalidResponse, LimitExceeded, RemoteError, RequestCancelled

__all__ = ["RemoteError", "InvalidResponse", "ConnectionClosed", "LimitExceeded", "RequestCancelled"]
