"""An image list: a batch's inputs named one per line, in a text object of the user's in Storage
(kind ``list``), rather than found under a key prefix.

    # the night's scans
    obj-3f2a9c0d41b84e6a9f10
    https://scans.example.com/2026-12-05/0001.png

A line is a Storage object id of the account's (an image it uploaded, or a result of an earlier
job) or an http(s) URL, which Storage fetches once the batch is paid for. Blank lines and lines
whose first character is ``#`` are comments; spaces around an entry are ignored. The order of
the lines is the order of the batch's images (its items) and of its result manifest.

Main API checks a list when it is uploaded, and the operator when it freezes the batch (a list
can reach Storage another way): the same function, so both refuse the same lines in the same
words. Pure: text in, entries or the first bad line out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import get_args
from urllib.parse import urlsplit

from aijobs.api.rules import HTTP_URL_PORTABLE, MAX_BATCH_IMAGES
from aijobs.api.storage import ImageKind, StoredObject

__all__ = ["LIST_TYPE", "MAX_URL", "BadImageList", "Entry", "check_objects", "parse", "usable"]

LIST_TYPE = "text/plain"
MAX_URL = 2048  # as the CRD's spec.input.url
OBJECT_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")
_URL = re.compile(HTTP_URL_PORTABLE)  # what Storage's ingest takes: no control characters


class BadImageList(ValueError):
    """The list cannot be a batch's: ``line`` is the first offending line (1-based; 0 when the
    list as a whole is wrong: empty, or too long)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


@dataclass(frozen=True, slots=True)
class Entry:
    """One image of the list: ``item`` is its index in the batch, ``line`` where it was written."""

    item: int
    line: int
    object_id: str | None = None
    url: str | None = None

    @property
    def text(self) -> str:
        return self.object_id if self.object_id is not None else str(self.url)


def parse(text: str, *, limit: int = MAX_BATCH_IMAGES) -> list[Entry]:
    entries: list[Entry] = []
    text = text.removeprefix("\ufeff")  # a byte-order mark, as some editors save UTF-8
    for number, raw in enumerate(text.splitlines(), start=1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        if len(entries) == limit:
            raise BadImageList(0, f"more than {limit} images: split the list into batches")
        entries.append(_entry(len(entries), number, entry))
    if not entries:
        raise BadImageList(0, "the list names no image (each line: an object id or an http(s) URL)")
    return entries


def _entry(item: int, line: int, entry: str) -> Entry:
    if OBJECT_ID.fullmatch(entry):
        return Entry(item, line, object_id=entry)
    shown = entry if len(entry) <= 80 else entry[:77] + "..."
    if not entry.lower().startswith(("http://", "https://")):
        raise BadImageList(line, f"{shown!r} is neither an object id nor an http(s) URL")
    if len(entry) > MAX_URL:
        raise BadImageList(line, f"a URL is at most {MAX_URL} characters ({len(entry)} given)")
    if not _URL.fullmatch(entry):
        raise BadImageList(
            line, f"{shown!r} is not a well-formed http(s) URL (a host, an optional port, no spaces)"
        )
    try:
        urlsplit(entry).port  # noqa: B018 - parsing it is the check: a port past 65535 raises
    except ValueError as exc:
        raise BadImageList(line, f"{shown!r}: {exc}") from exc
    return Entry(item, line, url=entry)


def usable(obj: StoredObject | None, account: str) -> bool:
    """Can a list of ``account``'s name this object as one of its images: a committed image of
    the account's (an upload, or the result of an earlier job)."""
    return (
        obj is not None
        and obj.account == account
        and obj.kind in get_args(ImageKind)
        and obj.state == "committed"
    )


def check_objects(entries: list[Entry], found: dict[str, StoredObject], account: str) -> None:
    """Every object id the list names is :func:`usable` (``found``: what Storage knows of them,
    by id), or :class:`BadImageList` for the first line that names one that is not."""
    for entry in entries:
        if entry.object_id is None or usable(found.get(entry.object_id), account):
            continue
        obj = found.get(entry.object_id)
        # Another account's object is no object to this one: its owner and state stay unsaid.
        what = "no such object" if obj is None or obj.account != account else f"a {obj.state} {obj.kind}"
        raise BadImageList(
            entry.line, f"object {entry.object_id} is not a committed image of account {account} ({what})"
        )
