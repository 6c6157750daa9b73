"""Many Storage objects' metadata by id, a page of ids a request (``POST /v1/bulk/lookup``): the
ids an image list names, checked by Main API when the list is uploaded and by the operator when
a batch names it."""

from __future__ import annotations

from collections.abc import Iterable

from aijobs.api.bulk import BulkAnswer
from aijobs.api.storage import MAX_LOOKUP_IDS, LookupRequest, StoredObject
from aijobs.wire.client import ServiceClient, judge

__all__ = ["lookup_objects"]


async def lookup_objects(storage: ServiceClient, object_ids: Iterable[str]) -> dict[str, StoredObject]:
    """The objects of these ids that Storage knows (deleted ones too), by id; an unknown id (its
    item answered 404) is absent. A request's refusal or unknown outcome is raised as the client
    raises it, and so is an item's other answer (a 503 of one item is no "unknown object")."""
    unique = list(dict.fromkeys(object_ids))
    found: dict[str, StoredObject] = {}
    for start in range(0, len(unique), MAX_LOOKUP_IDS):
        asked = LookupRequest(ids=unique[start : start + MAX_LOOKUP_IDS])
        answer = await storage.fetch(BulkAnswer, "POST", "/v1/bulk/lookup", json=asked.wire())
        for item in answer.items:
            if item.status == 200:
                obj = StoredObject.model_validate(item.body)
                found[obj.id] = obj
            elif item.status != 404:
                raise judge(storage.service, f"looking up {item.key}", item.status, item.body)
    return found
