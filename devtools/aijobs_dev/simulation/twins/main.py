"""The main service's twin."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from aijobs_dev.simulation.twins.base import Reply, Twin


class MainTwin(Twin):
    name = "main"

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        super().__init__(clock)
        self.deliveries: dict[str, dict[str, Any]] = {}

    def route(self, method: str, path: str) -> tuple[Callable[..., Reply], tuple[str, ...]] | None:
        if (method, path) == ("POST", "/v1/deliveries"):
            return self.deliver, ()
        return None

    def deliver(self, *, body: Any, **_: Any) -> Reply:
        delivery = self.deliveries.setdefault(body["jobUid"], {**body, "state": "pending"})
        return Reply(201, {"id": body["jobUid"], "state": delivery["state"]})
