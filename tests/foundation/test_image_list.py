"""The image list's rules (aijobs.api.imagelist), one function Main API and the operator share:
what a line may be, which line a refusal names, and which objects a list may name."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from aijobs.api import imagelist
from aijobs.api.storage import StoredObject


def test_entries_keep_the_lists_order_and_their_line_numbers() -> None:
    text = "# scans\nobj-a\n\n  https://img.example.com/1.png  \r\nobj-a\nhttp://[::1]:8080/x.png\n"
    entries = imagelist.parse(text)
    assert [(e.item, e.line, e.text) for e in entries] == [
        (0, 2, "obj-a"),
        (1, 4, "https://img.example.com/1.png"),
        (2, 5, "obj-a"),  # the same image twice is two images: two results, two charges
        (3, 6, "http://[::1]:8080/x.png"),
    ]
    assert [e.url is not None for e in entries] == [False, True, False, True]


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("obj-a\nfile:///etc/passwd\n", 2, "neither an object id nor an http(s) URL"),
        ("obj-a\n\nhttps://exa mple.com/a.png\n", 3, "not a well-formed http(s) URL"),
        ("https://example.com/a\x00b.png\n", 1, "not a well-formed http(s) URL"),
        ("https://example.com:70000/a.png\n", 1, "example.com:70000"),  # urllib says why, in its words
        ("https://[zz]/a.png\n", 1, "not a well-formed"),
        ("https://example.com/" + "a" * imagelist.MAX_URL + "\n", 1, "at most 2048 characters"),
        ("obj-" + "a" * 40 + "\n", 1, "neither an object id"),
        ("# nothing\n\n   \n", 0, "names no image"),
    ],
)
def test_a_bad_line_is_named(text: str, line: int, says: str) -> None:
    with pytest.raises(imagelist.BadImageList) as refused:
        imagelist.parse(text)
    assert refused.value.line == line and says in str(refused.value)
    assert str(refused.value).startswith(f"line {line}: ") == bool(line)


def test_a_byte_order_mark_is_not_part_of_the_first_line() -> None:
    assert [e.text for e in imagelist.parse("\ufeffobj-a\nobj-b\n")] == ["obj-a", "obj-b"]


def test_a_list_longer_than_a_batch_is_refused_whole() -> None:
    with pytest.raises(imagelist.BadImageList, match="more than 3 images"):
        imagelist.parse("a\nb\nc\nd\n", limit=3)
    assert len(imagelist.parse("a\nb\nc\n# d\n", limit=3)) == 3


def _obj(object_id: str, account: str = "acme", kind: str = "input", state: str = "committed") -> Any:
    return StoredObject.model_validate(
        {
            "id": object_id,
            "key": f"k/{object_id}",
            "account": account,
            "kind": kind,
            "sha256": "0" * 64,
            "size": 1,
            "contentType": "image/png",
            "width": 1,
            "height": 1,
            "state": state,
            "createdAt": dt.datetime(2026, 12, 6, tzinfo=dt.UTC).isoformat(),
        }
    )


@pytest.mark.parametrize(
    ("found", "says"),
    [
        ({}, "no such object"),
        ({"o2": _obj("o2", account="globex")}, "(no such object)"),  # whose it is stays unsaid
        ({"o2": _obj("o2", state="deleted")}, "a deleted input"),
        ({"o2": _obj("o2", state="staging")}, "a staging input"),
        ({"o2": _obj("o2", kind="manifest")}, "a committed manifest"),
        ({"o2": _obj("o2", kind="list")}, "a committed list"),
    ],
)
def test_a_list_names_only_the_accounts_committed_images(found: dict[str, StoredObject], says: str) -> None:
    entries = imagelist.parse("o1\nhttps://example.com/a.png\no2\n")
    with pytest.raises(imagelist.BadImageList) as refused:
        imagelist.check_objects(entries, {"o1": _obj("o1"), **found}, "acme")
    assert refused.value.line == 3 and says in str(refused.value)
    # An upload or an earlier job's result may be named; a URL is checked when it is fetched.
    imagelist.check_objects(entries, {"o1": _obj("o1"), "o2": _obj("o2", kind="result")}, "acme")
