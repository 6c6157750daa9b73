"""The auth service's twin."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from aijobs_dev.simulation.twins.base import Reply, Twin


class AuthTwin(Twin):
    name = "auth"

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        super().__init__(clock)
        self.bindings: set[tuple[str, str]] = set()

    def route(self, method: str, path: str) -> tuple[Callable[..., Reply], tuple[str, ...]] | None:
        if (method, path) == ("POST", "/v1/authorize-charge"):
            return self.authorize, ()
        return None

    def authorize(self, *, body: Any, **_: Any) -> Reply:
        if (body["namespace"], body["account"]) not in self.bindings:
            return Reply.problem(
                403,
                "tenant-not-allowed",
                f"namespace {body['namespace']!r} may not charge {body['account']!r}",
            )
        return Reply(200, {"namespace": body["namespace"], "account": body["account"], "allowed": True})


# ---------------------------------------------------------------------------------- payment
