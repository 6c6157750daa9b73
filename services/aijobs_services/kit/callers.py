"""Service-to-service authentication: who is calling, proven by a short-lived signed token.

Each caller (the operator, a worker, Main API, an admin) holds a secret that the services it
calls also know. It sends ``Authorization: Bearer <JWT>`` signed with HMAC-SHA256, naming itself
as issuer and the callee as audience, valid for a few minutes. A service accepts a token only
from a caller in its ``callers`` table; a route accepts only the callers it names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated

import jwt
from fastapi import Depends, Request

from aijobs.wire.tokens import LEEWAY_SECONDS, MAX_TOKEN_LIFETIME_SECONDS
from aijobs_services.kit.problems import Forbidden, Unauthenticated

__all__ = ["Caller", "CallerDep", "allow", "verify_token"]


@dataclass(frozen=True)
class Caller:
    name: str


def verify_token(token: str, audience: str, secrets: Mapping[str, str]) -> Caller:
    try:
        issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError as exc:
        raise Unauthenticated("the bearer token is not a valid token") from exc
    secret = secrets.get(str(issuer))
    if secret is None:
        raise Unauthenticated(f"unknown caller {issuer!r}")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=audience,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthenticated("the bearer token has expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthenticated(f"the bearer token was rejected: {exc}") from exc
    lifetime = claims["exp"] - claims["iat"]
    if not isinstance(lifetime, int | float) or lifetime > MAX_TOKEN_LIFETIME_SECONDS:
        raise Unauthenticated(
            f"the bearer token lives {lifetime}s; service tokens may live "
            f"{MAX_TOKEN_LIFETIME_SECONDS}s at most"
        )
    return Caller(str(issuer))


async def _caller(request: Request) -> Caller:
    # async (it never blocks): FastAPI would run a sync dependency on a thread, per request.
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("this endpoint needs a service token: Authorization: Bearer <token>")
    settings = request.app.state.settings
    return verify_token(token.strip(), settings.service, settings.callers)


CallerDep = Annotated[Caller, Depends(_caller)]


def allow(*names: str) -> Callable[[Caller], Awaitable[Caller]]:
    """A dependency that admits only the named callers (403 for any other authenticated one).
    A name ending in ``.*`` admits a family of identities: ``worker.*`` is ``worker.gpu-1``, …"""
    prefixes = tuple(n[:-1] for n in names if n.endswith(".*"))

    async def check(caller: CallerDep) -> Caller:
        if caller.name not in names and not (prefixes and caller.name.startswith(prefixes)):
            raise Forbidden(f"caller {caller.name!r} may not do this (allowed: {', '.join(names)})")
        return caller

    return check
