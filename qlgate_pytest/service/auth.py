"""Bearer-token authentication for the gate service.

The token comes from the environment (``QLGATE_TOKEN``), never from the command line where
``ps`` would show it. The service refuses to start without one unless told to run open, and
running open is allowed only on a loopback address (see :func:`check_startup`).
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from qlgate_core.errors import OptionError

TOKEN_ENV = "QLGATE_TOKEN"
MIN_TOKEN_LENGTH = 16
_MAKE_TOKEN = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_startup(token: str | None, host: str, *, allow_open: bool) -> str | None:
    """The token to enforce (None: open); OptionError when the set-up is unsafe."""
    if token:
        if len(token) < MIN_TOKEN_LENGTH:
            raise OptionError(
                f"environment variable {TOKEN_ENV} is {len(token)} characters; use at least "
                f"{MIN_TOKEN_LENGTH}, e.g. {_MAKE_TOKEN}"
            )
        return token
    if not allow_open:
        raise OptionError(
            f"environment variable {TOKEN_ENV} is not set: the service will not run without a "
            f"bearer token (create one with {_MAKE_TOKEN}), or pass --insecure-no-auth to run "
            "open on a loopback address"
        )
    if not is_loopback(host):
        raise OptionError(
            f"--insecure-no-auth with --host {host}: an open service may listen only on a "
            f"loopback address (127.0.0.1, ::1, localhost); set {TOKEN_ENV} instead"
        )
    return None


_BEARER = HTTPBearer(auto_error=False, description=f"the token in the {TOKEN_ENV} variable")


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
) -> None:
    """FastAPI dependency: 401 unless the request carries ``Authorization: Bearer <token>``.

    The expected token is ``app.state.token`` (bytes, or None for an open service)."""
    expected: bytes | None = request.app.state.token
    if expected is None:
        return
    supplied = credentials.credentials.encode("utf-8") if credentials else b""
    # Constant-time comparison: response timing must not reveal how much of a guess matched.
    if not credentials or not secrets.compare_digest(supplied, expected):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
