"""A user's way in for batches, apart from HTTP: images uploaded into a set, and a delivered
batch's results read page by page.

A set is a key prefix of the user's account in Storage, ``{account}/{set}/``: each image is a
committed input under ``{account}/{set}/{name}``, stored with Main API's own service token (the
user never holds one). Storage is idempotent by key, so an upload sent again with the same bytes
is answered with the first object (200) and one with other bytes is refused (409): a client that
lost an answer sends the image again, safely. A batch job (:func:`submission.submit` with a
:class:`submission.Batch`) takes what the set holds when the job is created.

A delivered batch's results are its manifest (JSON lines, one per input, by item), an immutable
object in Storage: read once per page asked, kept for the next pages in a small cache, each
succeeded line given a signed link to its result.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aijobs.api import imagelist
from aijobs.api.main import BatchResultLine, BatchResults, ImageListView, UploadedImage, UploadPage
from aijobs.api.storage import DownloadLink, DownloadLinkRequest, ObjectPage, StoredObject
from aijobs.wire.client import Ambiguous, Refused, ServiceClient
from aijobs.wire.lookup import lookup_objects
from aijobs_services.kit.db import utcnow
from aijobs_services.kit.problems import Conflict, Problem, Unprocessable
from aijobs_services.main.submission import Unavailable, list_key, set_prefix

__all__ = [
    "RESERVED_NAMES",
    "ManifestCache",
    "NotDelivered",
    "list_set",
    "page_of",
    "put_image",
    "put_list",
    "read_results",
]

# Storage serves these as an object's sub-resources (``/v1/objects/{id}/content``...): an image
# named so could never be stored under its key.
RESERVED_NAMES = frozenset({"content", "commit", "delete", "download-url"})
LINKS_AT_ONCE = 16  # signed-link requests in flight to Storage for one page


class NotDelivered(Conflict):
    slug, title = "not-a-delivered-batch", "Not a delivered batch"


class ReservedName(Problem):
    status, slug, title = 422, "reserved-name", "Reserved image name"


class BadImageList(Unprocessable):
    slug, title = "bad-image-list", "Invalid image list"


def _unavailable(exc: Ambiguous) -> Unavailable:
    return Unavailable(f"{exc}; send it again", headers={"Retry-After": "2"})


def uploaded(obj: StoredObject, set_name: str) -> UploadedImage:
    return UploadedImage(
        set=set_name,
        name=obj.key.rsplit("/", 1)[-1],
        key=obj.key,
        sha256=obj.sha256,
        size=obj.size,
        content_type=obj.content_type,
        width=obj.width,
        height=obj.height,
        created_at=obj.created_at.isoformat().replace("+00:00", "Z"),
    )


async def put_image(
    storage: ServiceClient, account: str, set_name: str, name: str, content: bytes
) -> tuple[int, UploadedImage]:
    """Store ``content`` as a committed input under the set's key: (201, it) when new, (200, the
    first one) when the key held these bytes already. Storage's refusals (too large, not an
    image, other bytes under the key, full) are passed on as its problems."""
    if name in RESERVED_NAMES:
        raise ReservedName(f"name: {name!r} is reserved; give the image another name")
    status, obj = await _store(storage, account, set_prefix(account, set_name) + name, "input", content)
    return status, uploaded(obj, set_name)


async def _store(
    storage: ServiceClient, account: str, key: str, kind: str, content: bytes
) -> tuple[int, StoredObject]:
    """``content`` stored as a committed object of the account's under ``key``: (201, it), or
    (200, the first one) for the same bytes again; Storage's refusals passed on as its problems,
    a lost answer as 503 (send it again: the key makes it safe)."""
    headers = {"Content-Type": imagelist.LIST_TYPE} if kind == "list" else {}
    try:
        response = await storage.call(
            "PUT",
            f"/v1/objects/{key}",
            params={"account": account, "kind": kind, "state": "committed"},
            content=content,
            headers=headers,
            timeout=60,
        )
    except Ambiguous as exc:
        raise _unavailable(exc) from exc
    except Refused as exc:
        what = "list" if kind == "list" else "image"
        raise Problem(exc.detail, status=exc.status, slug=exc.kind, title=f"The {what} was refused") from exc
    return response.status_code, StoredObject.model_validate_json(response.content)


async def put_list(
    storage: ServiceClient, account: str, name: str, content: bytes
) -> tuple[int, ImageListView]:
    """Store an image list of the account's under its name, once every line is found to be an
    image a batch can take (:mod:`aijobs.api.imagelist`: an object id of the account's committed
    images, or an http(s) URL): (201, it), or (200, the first one) for the same bytes again. A
    bad line is refused (422 ``bad-image-list``, naming the line) and nothing is stored."""
    try:
        entries = imagelist.parse(content.decode("utf-8"))
        found = await lookup_objects(storage, (e.object_id for e in entries if e.object_id))
        imagelist.check_objects(entries, found, account)
    except UnicodeDecodeError as exc:
        raise BadImageList(f"an image list is UTF-8 text; byte {exc.start} is not UTF-8") from exc
    except imagelist.BadImageList as exc:
        raise BadImageList(str(exc), line=exc.line) from exc
    except Ambiguous as exc:
        raise _unavailable(exc) from exc
    except Refused as exc:  # Storage refused the lookup itself: pass its problem on
        raise Problem(exc.detail, status=exc.status, slug=exc.kind, title="The list was refused") from exc
    status, obj = await _store(storage, account, list_key(account, name), "list", content)
    view = ImageListView(
        name=name,
        object_id=obj.id,
        images=len(entries),
        urls=sum(1 for e in entries if e.url is not None),
        sha256=obj.sha256,
        size=obj.size,
        created_at=obj.created_at.isoformat().replace("+00:00", "Z"),
    )
    return status, view


async def list_set(
    storage: ServiceClient, account: str, set_name: str, after: str | None, limit: int
) -> UploadPage:
    """One page of a set's images in name order (byte order, as Storage lists keys)."""
    prefix = set_prefix(account, set_name)
    params: dict[str, Any] = {"account": account, "prefix": prefix, "limit": limit}
    if after is not None:
        params["after"] = prefix + after
    try:
        page = await storage.fetch(ObjectPage, "GET", "/v1/objects", params=params)
    except Ambiguous as exc:
        raise _unavailable(exc) from exc
    items = [uploaded(o, set_name) for o in page.items]
    return UploadPage(items=items, next=items[-1].name if page.next is not None and items else None)


# ------------------------------------------------------------------------------------- results
def page_of(lines: list[dict[str, Any]], after: int, limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """The lines whose item is past ``after``, ``limit`` of them in item order, and the ``after``
    of the next page (None when these are the last)."""
    rest = sorted((line for line in lines if int(line.get("item", -1)) > after), key=lambda x: int(x["item"]))
    page = rest[:limit]
    return page, (int(page[-1]["item"]) if len(rest) > limit else None)


def parse_manifest(content: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in content.decode().splitlines() if line.strip()]


@dataclass
class ManifestCache:
    """The last few manifests read, by object id: a manifest never changes once stored, and a
    client pages through one from start to end."""

    size: int = 2  # a manifest of 100,000 lines is tens of MB parsed
    _items: OrderedDict[str, list[dict[str, Any]]] = field(default_factory=OrderedDict)

    async def lines(self, storage: ServiceClient, object_id: str) -> list[dict[str, Any]]:
        if object_id in self._items:
            self._items.move_to_end(object_id)
            return self._items[object_id]
        try:
            response = await storage.call("GET", f"/v1/objects/{object_id}/content", timeout=60)
        except Ambiguous as exc:
            raise _unavailable(exc) from exc
        except Refused as exc:  # the job says it was delivered: its manifest is gone (a deletion)
            raise NotDelivered(f"the batch's results are no longer in Storage ({exc.kind})") from exc
        lines = parse_manifest(response.content)
        self._items[object_id] = lines
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return lines


def link_expiry(now: dt.datetime) -> dt.datetime:
    """A day after the next whole hour: every page asked within an hour gets the same links."""
    return now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=25)


async def _signed(
    storage: ServiceClient, object_id: str, expires: dt.datetime, gate: asyncio.Semaphore
) -> str | None:
    body = DownloadLinkRequest(expires_at=expires).wire()
    async with gate:
        try:
            link = await storage.fetch(
                DownloadLink, "POST", f"/v1/objects/{object_id}/download-url", json=body
            )
        except Ambiguous as exc:
            raise _unavailable(exc) from exc
        except Refused:  # deleted since: the line says what it was, without a link
            return None
    return link.url


async def read_results(
    storage: ServiceClient, cache: ManifestCache, status: dict[str, Any], after: int, limit: int
) -> BatchResults:
    """A page of a batch's results, from the job's status (its ``batch`` and ``result``)."""
    object_id = (status.get("result") or {}).get("objectId")
    if not status.get("batch") or not object_id:
        raise NotDelivered("this job has no batch results (yet): it is not a batch, or not delivered")
    page, next_after = page_of(await cache.lines(storage, object_id), after, limit)
    expires, gate = link_expiry(utcnow()), asyncio.Semaphore(LINKS_AT_ONCE)
    links = await asyncio.gather(
        *(
            _signed(storage, line["result"], expires, gate)
            for line in page
            if line.get("state") == "succeeded" and line.get("result")
        )
    )
    signed = iter(links)
    items = [
        BatchResultLine.model_validate(
            line | ({"url": next(signed)} if line.get("state") == "succeeded" and line.get("result") else {})
        )
        for line in page
    ]
    return BatchResults(items=items, next=next_after)
