"""What AI's bulk routes add to the kit's (:meth:`IdempotencyStore.bulk`, and
:func:`~aijobs_services.kit.problems.read_item` for an item's body): an answer as the store keeps it.

Each item is the single route's operation under its own key, all in one transaction (the
kit's); an item whose key is new and which the life cycle simply accepts (a new task, a
completion under the current lease) is one statement (:func:`aijobs_services.ai.queue.quick_create`,
:func:`~aijobs_services.ai.queue.quick_complete`), sent in one pipeline with the others.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["wire"]


def wire(model: BaseModel) -> dict[str, Any]:
    """An answer as the idempotency store keeps it and the single route sends it."""
    return model.model_dump(by_alias=True, mode="json")
