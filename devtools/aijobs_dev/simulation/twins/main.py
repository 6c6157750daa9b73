"""The main service's twin: the deliveries the operator records, answered as Main does
(:mod:`aijobs.api.main`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from aijobs.api.main import DeliveryCreate, DeliveryRecorded
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
        try:
            asked = DeliveryCreate.model_validate(body)
        except ValidationError as exc:  # as the service's validation answers it
            return Reply.problem(422, "validation-error", str(exc))
        delivery = self.deliveries.setdefault(asked.job_uid, {**body, "state": "pending"})
        recorded = DeliveryRecorded(id=asked.job_uid, state=delivery["state"])
        return Reply(201, recorded.model_dump(by_alias=True, mode="json"))
