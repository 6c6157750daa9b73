"""What every twin shares: a reply, the routing, the Idempotency-Key replay."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PROBLEM = "https://aijobs.io/problems/"


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any

    @classmethod
    def problem(cls, status: int, slug: str, detail: str, **extra: Any) -> Reply:
        return cls(
            status, {"type": PROBLEM + slug, "title": slug, "status": status, "detail": detail, **extra}
        )


class Twin:
    """Routing and the idempotency store every twin shares."""

    name = "twin"

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        self.clock = clock
        self._idem: dict[str, tuple[str, Reply]] = {}
        self._ids = 0

    def new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-{self.name}-{self._ids:06d}"

    def handle(
        self, method: str, path: str, key: str | None, body: Any, params: dict[str, str], content: bytes
    ) -> Reply:
        route = self.route(method, path)
        if route is None:
            return Reply.problem(404, "not-found", f"no route {method} {path}")
        action, args = route
        if key is None:
            return action(*args, body=body, params=params, content=content)
        fingerprint = hashlib.sha256(
            json.dumps([method, path, body, params, content.hex()], sort_keys=True).encode()
        ).hexdigest()
        stored = self._idem.get(key)
        if stored is not None:
            if stored[0] != fingerprint:
                return Reply.problem(
                    422,
                    "idempotency-key-reused",
                    f"Idempotency-Key {key!r} was first used for a different request",
                )
            return stored[1]
        reply = action(*args, body=body, params=params, content=content)
        if reply.status < 500:
            self._idem[key] = (fingerprint, reply)
        return reply

    def route(self, method: str, path: str) -> tuple[Callable[..., Reply], tuple[str, ...]] | None:
        raise NotImplementedError


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p][1:]  # drop "v1"


# ------------------------------------------------------------------------------------- auth
