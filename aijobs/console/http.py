"""One service, called as the commands call it: problems shown as a person reads them, and a
request that changes something retried under the same Idempotency-Key when its answer was lost
(so a retry moves money, or makes a job, once)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx

__all__ = ["Api", "CommandError", "new_key"]

# Answers after which the request may or may not have happened: ask again, same key.
_AMBIGUOUS = {408, 425, 429, 500, 502, 503, 504}


class CommandError(Exception):
    """What went wrong, in words for the person who ran the command."""


def new_key() -> str:
    return uuid.uuid4().hex


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} {response.reason_phrase}: {response.text[:300]}"
    if isinstance(body, dict) and ("title" in body or "detail" in body):
        text = f"{response.status_code} {body.get('title', '')}: {body.get('detail', '')}".rstrip(": ")
        for error in body.get("errors") or []:
            if isinstance(error, dict):
                where = ".".join(str(p) for p in error.get("loc", []) if p != "body")
                text += f"\n  {where}: {error.get('msg', error)}"
        return text
    return f"{response.status_code}: {body}"


class Api:
    def __init__(
        self,
        service: str,
        base_url: str,
        token: Any,
        *,
        timeout: float = 30.0,
        attempts: int = 5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``token`` is a string, or a callable giving one per request (a signed, short-lived one)."""
        self.service = service
        self._token = token
        self._attempts = attempts
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(
        self, method: str, path: str, *, key: str | None = None, expect: tuple[int, ...] = (), **kw: Any
    ) -> httpx.Response:
        """Send; on a lost or ambiguous answer, send again (a change only with an Idempotency-Key:
        ``key``, or a PUT). A 4xx is final and raised as a CommandError, except the codes in ``expect``."""
        # GET and PUT are idempotent as HTTP defines them (an upload into a set is, by its name).
        retry = method in ("GET", "PUT") or key is not None
        extra_headers = kw.pop("headers", {})
        delay = 0.5
        for attempt in range(1, self._attempts + 1):
            token = self._token() if callable(self._token) else self._token
            headers = {"Authorization": f"Bearer {token}", **extra_headers}
            if key is not None:
                headers["Idempotency-Key"] = key
            try:
                response = self._http.request(method, path, headers=headers, **kw)
            except httpx.TransportError as exc:
                if not retry or attempt == self._attempts:
                    raise CommandError(f"{self.service}: {type(exc).__name__}: {exc}") from exc
            else:
                in_progress = response.status_code == 409 and "in-progress" in response.text
                if response.status_code not in _AMBIGUOUS and not in_progress:
                    if response.status_code >= 400 and response.status_code not in expect:
                        raise CommandError(f"{self.service}: {_problem(response)}")
                    return response
                if not retry or attempt == self._attempts:
                    raise CommandError(f"{self.service}: {_problem(response)}")
                delay = max(delay, float(response.headers.get("Retry-After", 0) or 0))
            time.sleep(min(delay, 10.0))  # backoff between attempts (not synchronisation)
            delay *= 2
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, **kw: Any) -> Any:
        return self.request(method, path, **kw).json()
