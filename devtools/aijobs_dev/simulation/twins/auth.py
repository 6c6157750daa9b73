"""The auth service's twin: the bindings a job's charge is authorized by, its answers Auth's wire
models (:mod:`aijobs.api.auth`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from aijobs.api.auth import BindingRequest, ChargeAuthorized
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
        try:
            asked = BindingRequest.model_validate(body)
        except ValidationError as exc:  # as the service's validation answers it
            return Reply.problem(422, "validation-error", str(exc))
        if (asked.namespace, asked.account) not in self.bindings:
            return Reply.problem(
                403,
                "tenant-not-allowed",
                f"namespace {asked.namespace!r} may not charge {asked.account!r}",
            )
        allowed = ChargeAuthorized(namespace=asked.namespace, account=asked.account)
        return Reply(200, allowed.model_dump(by_alias=True, mode="json"))
