"""Bulk calls: one request carrying many keyed operations, each answered on its own.

When many jobs stand at the same step, the operator sends their calls as one request (holds,
captures, tasks), so the per-request cost of HTTP, authentication and a transaction is paid once
for many. Exactly-once is kept **per item**: every item carries its own idempotency key and is the
very operation the single route performs under that key, answered from the same record. So:

- a bulk request whose answer was lost is sent again with the same items, and every item that had
  committed is replayed, every other one acts now;
- an item and a single call with the same key (an operator upgraded mid-retry) are one operation:
  its fingerprint is the one the single route would compute for the same body, as a client sends
  it (:func:`item_body`);
- one item's refusal (402, 409, 422 …) is that item's answer; the others go on.

The answer lists one :class:`ItemAnswer` per item, in the order sent: the status and the body the
single route would have answered (its model for a 2xx, a problem document otherwise). A 5xx or
a key still in progress is answered for that item alone, and the client treats it as that
item's unknown outcome.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Generic, TypeVar

from pydantic import Field

from aijobs.api.base import Answer, Request

__all__ = ["MAX_ITEMS", "BulkAnswer", "BulkItem", "BulkRequest", "ItemAnswer", "item_body"]

MAX_ITEMS = 1000

T = TypeVar("T")


class BulkItem(Request, Generic[T]):
    key: Annotated[
        str,
        Field(
            min_length=1,
            max_length=200,
            pattern=r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$",
            description="The item's idempotency key: the Idempotency-Key the single route would be sent",
        ),
    ]
    request: T = Field(description="The body the single route takes")


class BulkRequest(Request, Generic[T]):
    items: Annotated[list[BulkItem[T]], Field(min_length=1, max_length=MAX_ITEMS)]


class ItemAnswer(Answer):
    key: str
    status: int = Field(description="The HTTP status the single route would have answered")
    replayed: bool = Field(default=False, description="Answered from an earlier request with this key")
    body: dict[str, Any] = Field(
        description="The single route's answer: its model for a 2xx, a problem document otherwise"
    )


class BulkAnswer(Answer):
    items: list[ItemAnswer] = Field(description="One answer per item, in the order sent")


def item_body(request: dict[str, Any]) -> bytes:
    """An item's request as the bytes a client (httpx) sends it to the single route: compact
    JSON, the keys in the order given, non-ASCII kept. The service fingerprints an item over
    these bytes with the single route's method and path."""
    return json.dumps(request, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
