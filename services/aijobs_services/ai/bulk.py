"""What AI's bulk routes add to the kit's (:meth:`IdempotencyStore.bulk`): an item's body read
with its single route's model, as that route reads it, and an answer as the store keeps it.

Each item is the single route's operation under its own key, all in one transaction (the
kit's); an item whose key is new and which the life cycle simply accepts (a new task, a
completion under the current lease) is one statement (:func:`aijobs_services.ai.queue.quick_create`,
:func:`~aijobs_services.ai.queue.quick_complete`), sent in one pipeline with the others.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from aijobs.api.fields import OUT_OF_RANGE
from aijobs_services.kit.problems import Problem, Unprocessable

__all__ = ["invalid", "parse", "wire"]

M = TypeVar("M", bound=BaseModel)


def invalid(error: ValidationError) -> Problem:
    """The 422 the single route answers a body its model refuses, naming the fields as it does
    (under ``body``)."""
    errors = [
        {"field": ".".join(str(p) for p in ("body", *e["loc"])), "message": e["msg"], "kind": e["type"]}
        for e in error.errors(include_url=False, include_context=False, include_input=False)
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    if all(e["kind"] == OUT_OF_RANGE for e in errors):  # the calendar's rule, as the kit says it
        return Unprocessable(detail, slug="time-out-of-range", title="Time out of range", errors=errors)
    return Unprocessable(detail, slug="validation-error", title="Request validation failed", errors=errors)


def parse(model: type[M], request: dict[str, Any]) -> M | Problem:
    """The item's body read with the single route's model, or its 422."""
    try:
        return model.model_validate(request)
    except ValidationError as error:
        return invalid(error)


def wire(model: BaseModel) -> dict[str, Any]:
    """An answer as the idempotency store keeps it and the single route sends it."""
    return model.model_dump(by_alias=True, mode="json")
