"""Service-to-service authentication: who is calling, proven by a short-lived signed token.

Each caller (the operator, a worker, Main API, an admin) holds a secret that the services it
calls also know. It sends ``Authorization: Bearer <JWT>`` signed with HMAC-SHA256, naming itself
as issuer and the callee as audience, valid for a few minutes. A service accepts a token only
from a caller in its ``callers`` table; a route accepts only the callers it names.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

import jwt
from fastapi import Depends, Request

from aijobs.wire.tokens import LEEWAY_SECONDS, MAX_TOKEN_LIFETIME_SECONDS
from aijobs_services.kit.problems import Forbidden, Unauthenticated

__all__ = ["Allow", "Caller", "CallerDep", "allow", "authenticated_caller", "verify_token"]


@dataclass(frozen=True)
class Caller:
    name: str


def verify_token(token: str, audience: str, secrets: Mapping[str, str]) -> Caller:
    return verify_claims(token, audience, secrets)[0]


def verify_claims(token: str, audience: str, secrets: Mapping[str, str]) -> tuple[Caller, float]:
    """The caller a token proves, and when the token expires."""
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
    return Caller(str(issuer)), float(claims["exp"])


class VerifiedTokens:
    """Tokens a service has verified, each until it expires: a client signs one token per
    audience and sends it for minutes (:class:`aijobs.wire.tokens.TokenSigner`), and checking its
    signature and claims again on every request was ~8% of Storage's CPU in a batch
    (bench/batch.py, py-spy --gil). Per app, as its secrets are; bounded, emptied when full."""

    def __init__(self, limit: int = 1024) -> None:
        self._limit = limit
        self._known: dict[str, tuple[Caller, float]] = {}

    def caller(self, token: str, audience: str, secrets: Mapping[str, str]) -> Caller:
        known = self._known.get(token)
        if known is not None and time.time() <= known[1] + LEEWAY_SECONDS:
            return known[0]
        caller, expires = verify_claims(token, audience, secrets)
        if len(self._known) >= self._limit:
            self._known.clear()
        self._known[token] = (caller, expires)
        return caller


async def authenticated_caller(request: Request) -> Caller:
    # async (it never blocks): FastAPI would run a sync dependency on a thread, per request.
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("this endpoint needs a service token: Authorization: Bearer <token>")
    settings = request.app.state.settings
    tokens: VerifiedTokens = request.app.state.verified_tokens
    return tokens.caller(token.strip(), settings.service, settings.callers)


CallerDep = Annotated[Caller, Depends(authenticated_caller)]


class Allow:
    """A dependency that admits only the named callers (403 for any other authenticated one).
    A name ending in ``.*`` admits a family of identities: ``worker.*`` is ``worker.gpu-1``, …

    A class rather than a closure so the names stay readable: the app's OpenAPI lists them
    under each route's ``x-callers`` (for clients, and for the fuzz test that calls every
    route as each caller that may and as one that may not)."""

    def __init__(self, *names: str) -> None:
        self.names = names
        self._prefixes = tuple(n[:-1] for n in names if n.endswith(".*"))

    def admits(self, name: str) -> bool:
        return name in self.names or bool(self._prefixes and name.startswith(self._prefixes))

    async def __call__(self, caller: CallerDep) -> Caller:
        if not self.admits(caller.name):
            raise Forbidden(f"caller {caller.name!r} may not do this (allowed: {', '.join(self.names)})")
        return caller


def allow(*names: str) -> Allow:
    """The dependency admitting ``names`` (see :class:`Allow`): ``Depends(allow("admin"))``."""
    return Allow(*names)
