"""A service remembers the tokens it has verified until each expires: a caller's token sent again
is not checked again, a token for another audience or a forged one is still refused, and one past
its expiry is checked again as if new."""

from __future__ import annotations

import time

import jwt
import pytest
from aijobs_services.kit import callers
from aijobs_services.kit.callers import Caller, VerifiedTokens
from aijobs_services.kit.problems import Problem

from aijobs.wire.tokens import LEEWAY_SECONDS, TokenSigner

SECRETS = {"worker": "w" * 32, "operator": "o" * 32}


def _count_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens the service checks from now on, in order."""
    checked: list[str] = []
    verify = callers.verify_claims

    def counting(token: str, audience: str, secrets: dict[str, str]) -> tuple[Caller, float]:
        checked.append(token)
        return verify(token, audience, secrets)

    monkeypatch.setattr(callers, "verify_claims", counting)
    return checked


def test_a_token_sent_again_is_not_verified_again(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = _count_checks(monkeypatch)
    known = VerifiedTokens()
    token = TokenSigner("worker", SECRETS["worker"]).token_for("storage")
    assert known.caller(token, "storage", SECRETS) == Caller("worker")
    assert known.caller(token, "storage", SECRETS) == Caller("worker")
    assert checked == [token]


def test_a_forged_or_misdirected_token_is_refused_every_time() -> None:
    known = VerifiedTokens()
    forged = TokenSigner("worker", "x" * 32).token_for("storage")
    elsewhere = TokenSigner("worker", SECRETS["worker"]).token_for("payment")
    for token in (forged, forged, elsewhere, elsewhere):
        with pytest.raises(Problem):
            known.caller(token, "storage", SECRETS)


def test_a_remembered_token_past_its_expiry_is_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = _count_checks(monkeypatch)
    now = time.time()
    claims = {"iss": "worker", "aud": "storage", "iat": int(now) - 60, "exp": int(now) + 1}
    token = jwt.encode(claims, SECRETS["worker"], algorithm="HS256")
    known = VerifiedTokens()
    assert known.caller(token, "storage", SECRETS) == Caller("worker")
    monkeypatch.setattr(time, "time", lambda: now + 2 + LEEWAY_SECONDS + 1)
    known.caller(token, "storage", SECRETS)  # (PyJWT reads its own clock: here, still valid)
    assert checked == [token, token]
