"""Shared-secret authentication, one implementation for both adapters.

A server with ``auth_token`` set handles nothing from a client until the client's first
request is ``$/authenticate {"token": "..."}`` with the right token (compared in constant
time). Anything else first (another request, a notification, a wrong token) ends the
connection, as does not authenticating within ``AUTH_TIMEOUT`` seconds. See
docs/security.md.
"""

from __future__ import annotations

import hmac
from typing import Any

from ezipc_proto import Request

__all__ = ["AUTH_METHOD", "AUTH_TIMEOUT", "auth_params", "token_matches"]

#: The request a client sends first when the server has ``auth_token`` set.
AUTH_METHOD = "$/authenticate"
AUTH_TIMEOUT = 10.0  # seconds a client has to authenticate


def auth_params(token: str) -> dict[str, Any]:
    """The params of the client's ``$/authenticate`` request."""
    return {"token": token}


def token_matches(event: Request, expected: str) -> bool:
    """Is ``event`` a correct ``$/authenticate`` request (constant-time comparison)?"""
    token = event.params.get("token") if isinstance(event.params, dict) else None
    return (
        event.method == AUTH_METHOD
        and isinstance(token, str)
        and hmac.compare_digest(token.encode(), expected.encode())
    )
