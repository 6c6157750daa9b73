"""Service tokens, the caller's side: ``Authorization: Bearer <JWT>`` signed with HMAC-SHA256,
naming the caller as issuer and the callee as audience, valid for a few minutes. The services'
side (checking them) is ``aijobs_services.kit.callers``."""

from __future__ import annotations

import time

import jwt

__all__ = ["LEEWAY_SECONDS", "MAX_TOKEN_LIFETIME_SECONDS", "TOKEN_TTL_SECONDS", "TokenSigner"]

TOKEN_TTL_SECONDS = 300
LEEWAY_SECONDS = 30
MAX_TOKEN_LIFETIME_SECONDS = 900  # services refuse longer-lived tokens (and any without exp/iat)


class TokenSigner:
    """Makes bearer tokens for one identity, reusing each until it is close to expiry."""

    def __init__(self, identity: str, secret: str) -> None:
        self.identity = identity
        self._secret = secret
        self._cache: dict[str, tuple[str, float]] = {}

    def token_for(self, audience: str) -> str:
        now = time.time()
        cached = self._cache.get(audience)
        if cached and cached[1] - now > 60:
            return cached[0]
        exp = now + TOKEN_TTL_SECONDS
        claims = {"iss": self.identity, "aud": audience, "iat": int(now), "exp": int(exp)}
        token = jwt.encode(claims, self._secret, algorithm="HS256")
        self._cache[audience] = (token, exp)
        return token
