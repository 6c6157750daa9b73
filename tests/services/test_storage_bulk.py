"""Storage's bulk put: many images in one request, each stored exactly as its single put stores
it and answered on its own; a request sent again whole (its answer lost) stores nothing twice.
Its bulk read: many objects' bytes in one request, each as its single read answers it."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from aijobs_services.kit.app import create_app
from aijobs_services.registry import spec
from aijobs_services.storage import blobs as blobs_module
from aijobs_services.storage import bulk
from aijobs_services.storage.settings import StorageSettings
from fastapi.testclient import TestClient
from PIL import Image

from aijobs.api.storage import ObjectContent
from tests.services import images
from tests.services.conftest import Api, Fsyncs, blob_folders

pytestmark = pytest.mark.postgres


@pytest.fixture
def storage(pg_url: str, secrets: dict[str, str], tmp_path: Path) -> Iterator[tuple[Api, sa.Engine]]:
    config = StorageSettings(
        service="storage",
        database_url=pg_url,
        callers=secrets,
        storage_root=str(tmp_path / "volume"),
        sweep_interval_seconds=0,
        url_signing_key="k" * 32,
        public_url="http://testserver",
        account_quota_bytes=60_000,
    )
    app = create_app(spec("storage"), config)
    with TestClient(app) as client:
        yield Api(client, "storage", secrets), app.state.engine
    app.state.engine.dispose()


def _bulk(
    api: Api, items: list[dict[str, Any]], contents: list[bytes], caller: str = "worker"
) -> httpx.Response:
    files = [
        ("files", (f"f{n}.png", content, "application/octet-stream")) for n, content in enumerate(contents)
    ]
    return api.http.post(
        "/v1/bulk/objects",
        data={"items": json.dumps(items)},
        files=files,
        headers=api.headers(caller, None),
    )


def _noise() -> bytes:
    """A PNG larger than the account's quota (noise does not compress)."""
    buf = io.BytesIO()
    Image.frombytes("RGB", (200, 200), os.urandom(200 * 200 * 3)).save(buf, "PNG")
    return buf.getvalue()


def _result(key: str, account: str = "acme") -> dict[str, Any]:
    return {"key": key, "account": account, "jobId": "job-1", "kind": "result", "state": "committed"}


def _live(engine: sa.Engine) -> list[tuple[str, str]]:
    with engine.connect() as db:
        rows = db.execute(sa.text("SELECT key, state FROM objects WHERE state <> 'deleted' ORDER BY key"))
        return [(r.key, r.state) for r in rows]


def test_each_image_is_stored_as_its_single_put_and_a_resent_request_stores_nothing_twice(
    storage: tuple[Api, sa.Engine],
) -> None:
    api, engine = storage
    red, blue = images.png(color=(200, 0, 0)), images.png(color=(0, 0, 200))
    first = _bulk(api, [_result("result:job-1:0"), _result("result:job-1:1")], [red, blue])
    assert first.status_code == 200, first.text
    answers = first.json()["items"]
    assert [(a["key"], a["status"], a["replayed"]) for a in answers] == [
        ("result:job-1:0", 201, False),
        ("result:job-1:1", 201, False),
    ]
    assert answers[0]["body"]["jobId"] == "job-1" and answers[0]["body"]["width"] == 64
    again = _bulk(api, [_result("result:job-1:0"), _result("result:job-1:1")], [red, blue]).json()["items"]
    assert [(a["status"], a["body"]["id"]) for a in again] == [
        (200, answers[0]["body"]["id"]),
        (200, answers[1]["body"]["id"]),
    ]
    single = api.http.get(f"/v1/by-key/{'result:job-1:1'}", headers=api.headers("worker", None)).json()
    assert single["id"] == answers[1]["body"]["id"]  # the single routes see the same object
    assert _live(engine) == [("result:job-1:0", "committed"), ("result:job-1:1", "committed")]


def test_one_items_refusal_is_its_own_and_the_others_are_stored(storage: tuple[Api, sa.Engine]) -> None:
    api, engine = storage
    taken = _bulk(api, [_result("result:job-1:0")], [images.png()]).json()["items"][0]
    assert taken["status"] == 201
    items = [
        _result("result:job-1:0"),  # other bytes under a key already used
        _result("result:job-1:1"),  # fine
        _result("result:job-1:2"),  # not an image
        {"key": "bad key!", "account": "acme"},  # malformed
        _result("result:job-1:4", account="big"),  # over its account's quota
    ]
    contents = [
        images.jpeg(),
        images.png(color=(1, 2, 3)),
        b"not an image",
        images.png(),
        _noise(),
    ]
    answers = _bulk(api, items, contents).json()["items"]
    assert [(a["key"], a["status"]) for a in answers] == [
        ("result:job-1:0", 409),
        ("result:job-1:1", 201),
        ("result:job-1:2", 415),
        ("bad key!", 422),
        ("result:job-1:4", 507),
    ]
    assert answers[0]["body"]["type"].endswith("key-taken")
    assert "key" in answers[3]["body"]["detail"]
    assert _live(engine) == [("result:job-1:0", "committed"), ("result:job-1:1", "committed")]


def test_a_key_twice_in_one_request_is_stored_once(storage: tuple[Api, sa.Engine]) -> None:
    """Stored together, items are still answered as puts one after the other: the second put of a
    key in the same request replays the first (same bytes) or is refused (other bytes)."""
    api, engine = storage
    red = images.png(color=(200, 0, 0))
    items = [_result("result:job-1:0"), _result("result:job-1:0"), _result("result:job-1:0")]
    answers = _bulk(api, items, [red, red, images.jpeg()]).json()["items"]
    assert [(a["status"], a.get("replayed")) for a in answers] == [(201, False), (200, True), (409, False)]
    assert answers[1]["body"]["id"] == answers[0]["body"]["id"]
    assert answers[2]["body"]["type"].endswith("key-taken")
    assert _live(engine) == [("result:job-1:0", "committed")]
    assert _usage(engine, "acme") == (len(red), 1)  # counted once


def _usage(engine: sa.Engine, account: str) -> tuple[int, int]:
    with engine.connect() as db:
        row = db.execute(
            sa.text("SELECT bytes, objects FROM account_usage WHERE account = :a"), {"a": account}
        ).one()
    return row.bytes, row.objects


def test_what_a_bulk_put_stores_is_counted_object_by_object(storage: tuple[Api, sa.Engine]) -> None:
    """An account's usage is what its live objects add up to, stored together or alone: deleting
    them all brings it back to zero."""
    api, engine = storage
    contents = [images.png(color=(n, 0, 0)) for n in range(3)]
    answers = _bulk(api, [_result(f"result:job-1:{n}") for n in range(3)], contents).json()["items"]
    assert [a["status"] for a in answers] == [201, 201, 201]
    assert _usage(engine, "acme") == (sum(map(len, contents)), 3)
    for answer in answers:
        object_id = answer["body"]["id"]
        gone = api.http.post(
            f"/v1/objects/{object_id}/delete", headers=api.headers("operator", f"delete-{object_id}")
        )
        assert gone.status_code == 200, gone.text
    assert _usage(engine, "acme") == (0, 0)


def _truncated() -> bytes:
    """A PNG whose header is whole and whose pixels are cut short: only a decode finds it out."""
    whole = images.png(width=64, height=64, color=(10, 20, 30))
    return whole[: len(whole) // 2]


def test_a_declared_digest_must_match_the_bytes_and_vouches_only_for_a_result(
    storage: tuple[Api, sa.Engine],
) -> None:
    """A worker declares the digest of the bytes its encoder made: a result that arrives damaged
    is refused (and run again), by the bulk route and the single one alike; a user's upload is
    decoded whatever it declares."""
    api, engine = storage
    red = images.png(color=(200, 0, 0))
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    answers = _bulk(api, [{**_result("result:job-1:0"), "sha256": wrong}], [red]).json()["items"]
    assert answers[0]["status"] == 422 and answers[0]["body"]["type"].endswith("digest-mismatch")
    single = api.http.put(
        "/v1/objects/result:job-1:0",
        params={"account": "acme", "jobId": "job-1", "kind": "result", "state": "committed", "sha256": wrong},
        content=red,
        headers=api.headers("worker", None),
    )
    assert single.status_code == 422 and single.json()["type"].endswith("digest-mismatch")
    assert _live(engine) == []

    broken = _truncated()
    upload = {"key": "in/0", "account": "acme", "sha256": hashlib.sha256(broken).hexdigest()}
    refused = _bulk(api, [upload], [broken], caller="main-api").json()["items"][0]
    assert refused["status"] == 415 and "corrupt or truncated" in refused["body"]["detail"]
    right = {**_result("result:job-1:1"), "sha256": hashlib.sha256(red).hexdigest()}
    stored = _bulk(api, [right], [red]).json()["items"][0]
    assert stored["status"] == 201 and stored["body"]["sha256"] == right["sha256"]
    # What a worker's digest vouches for: its encoder made these bytes, so the header is read and
    # the pixels are not decoded again (a damaged spool file is caught by the digest above).
    vouched = {**_result("result:job-1:2"), "sha256": hashlib.sha256(broken).hexdigest()}
    assert _bulk(api, [vouched], [broken]).json()["items"][0]["status"] == 201
    not_a_worker = {**vouched, "key": "result:job-1:3"}
    assert _bulk(api, [not_a_worker], [broken], caller="admin").json()["items"][0]["status"] == 415
    assert _live(engine) == [("result:job-1:1", "committed"), ("result:job-1:2", "committed")]


def test_items_and_files_that_do_not_match_are_refused_whole(storage: tuple[Api, sa.Engine]) -> None:
    api, engine = storage
    mismatched = _bulk(api, [_result("result:job-1:0"), _result("result:job-1:1")], [images.png()])
    assert mismatched.status_code == 422
    assert mismatched.headers["content-type"].startswith("application/problem+json")
    assert "one file per item" in mismatched.json()["detail"]
    assert _bulk(api, [], []).status_code == 422
    not_json = api.http.post(
        "/v1/bulk/objects",
        data={"items": "[{"},
        files=[("files", ("a.png", images.png(), "image/png"))],
        headers=api.headers("worker", None),
    )
    assert not_json.status_code == 422 and "not JSON" in not_json.json()["detail"]
    assert _live(engine) == []


def test_only_the_services_callers_may_store(storage: tuple[Api, sa.Engine]) -> None:
    api, engine = storage
    anonymous = api.http.post(
        "/v1/bulk/objects",
        data={"items": json.dumps([_result("result:job-1:0")])},
        files=[("files", ("a.png", images.png(), "image/png"))],
    )
    assert anonymous.status_code == 401
    assert _live(engine) == []


def _read(api: Api, ids: list[str], caller: str | None = "worker") -> httpx.Response:
    return api.http.post("/v1/bulk/contents", json={"ids": ids}, headers=api.headers(caller, None))


def _stored_ids(api: Api, contents: list[bytes]) -> list[str]:
    items = [_result(f"result:job-1:{n}") for n in range(len(contents))]
    return [a["body"]["id"] for a in _bulk(api, items, contents).json()["items"]]


def test_a_bulk_read_answers_each_object_as_its_single_read_does(storage: tuple[Api, sa.Engine]) -> None:
    api, _ = storage
    red, jpeg = images.png(color=(200, 0, 0)), images.jpeg()
    red_id, jpeg_id, gone_id = _stored_ids(api, [red, jpeg, images.png(color=(0, 9, 0))])
    deleted = api.http.post(f"/v1/objects/{gone_id}/delete", headers=api.headers("operator", "del-1"))
    assert deleted.status_code == 200, deleted.text
    answer = _read(api, [jpeg_id, "obj-nothere", gone_id, red_id, jpeg_id])
    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    assert [(i["key"], i["status"]) for i in items] == [
        (jpeg_id, 200),
        ("obj-nothere", 404),
        (gone_id, 404),
        (red_id, 200),
        (jpeg_id, 200),
    ]
    assert [i["body"]["type"].rsplit("/", 1)[-1] for i in items[1:3]] == ["unknown-object", "object-deleted"]
    for item, content in ((items[0], jpeg), (items[3], red), (items[4], jpeg)):
        read = ObjectContent.model_validate(item["body"])
        single = api.http.get(f"/v1/objects/{read.id}/content", headers=api.headers("worker", None))
        assert read.data() == single.content == content
        assert (read.size, read.content_type) == (len(content), single.headers["content-type"])
        assert read.sha256 == hashlib.sha256(content).hexdigest()


def test_a_bulk_read_past_its_bound_of_bytes_sends_the_rest_to_the_single_read(
    storage: tuple[Api, sa.Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, _ = storage
    small, large = images.png(color=(5, 5, 5)), images.jpeg(width=300, height=200)
    small_id, large_id = _stored_ids(api, [small, large])
    monkeypatch.setattr(bulk, "MAX_BULK_CONTENT_BYTES", len(small) + len(large) - 1)
    items = _read(api, [small_id, large_id, small_id]).json()["items"]
    assert [(i["status"], i["body"].get("type", "").rsplit("/", 1)[-1]) for i in items] == [
        (200, ""),
        (413, "read-alone"),
        (200, ""),  # a smaller one still fits
    ]
    assert f"/v1/objects/{large_id}/content" in items[1]["body"]["detail"]


def test_a_bulk_read_that_is_malformed_or_anonymous_is_refused_whole(storage: tuple[Api, sa.Engine]) -> None:
    api, _ = storage
    (some_id,) = _stored_ids(api, [images.png()])
    for ids in ([], ["bad id!"], [some_id] * 101):
        refused = _read(api, ids)
        assert refused.status_code == 422, ids
        assert refused.headers["content-type"].startswith("application/problem+json")
    assert _read(api, [some_id], caller=None).status_code == 401


class _Flushes:
    """Counts the volume's flushes (``syncfs``) and the fsyncs of files and folders a bulk put
    makes, and notes at each flush how many blobs stand under their content names;
    ``fail_at``: that flush (1 or 2) fails with ENOSPC, as a writeback on a full disk does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, volume: Path, fail_at: int | None = None) -> None:
        self.syncfs = self.fsync = 0
        self.blobs_at_flush: list[int] = []
        real_syncfs, real_fsync = blobs_module._SYNCFS, os.fsync
        if real_syncfs is None:
            pytest.skip("no syncfs that reports failures here (Linux 5.8 on): bulk puts fsync each file")

        def syncfs(fd: int) -> int:
            self.syncfs += 1
            self.blobs_at_flush.append(len(list((volume / "blobs").rglob("*/*/*"))))
            if self.syncfs == fail_at:
                ctypes.set_errno(errno.ENOSPC)
                return -1
            return real_syncfs(fd)

        def fsync(fd: int) -> None:
            self.fsync += 1
            real_fsync(fd)

        monkeypatch.setattr(blobs_module, "_SYNCFS", syncfs)
        monkeypatch.setattr(blobs_module.os, "fsync", fsync)


def _volume_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def test_a_bulk_put_flushes_the_volume_before_its_renames_and_after_them_and_fsyncs_nothing(
    storage: tuple[Api, sa.Engine], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    api, engine = storage
    volume = tmp_path / "volume"
    flushes = _Flushes(monkeypatch, volume)
    contents = [images.png(color=(n, 9, 9)) for n in range(4)]
    answers = _bulk(api, [_result(f"result:job-1:{n}") for n in range(4)], contents).json()["items"]
    assert [a["status"] for a in answers] == [201] * 4
    # The bytes flushed while no blob has its name yet; the names flushed once all four have them.
    assert (flushes.syncfs, flushes.fsync, flushes.blobs_at_flush) == (2, 0, [0, 4])
    assert _volume_files(volume) == sorted(hashlib.sha256(c).hexdigest() for c in contents)  # tmp/ empty
    for content in contents:
        sha = hashlib.sha256(content).hexdigest()
        assert (volume / "blobs" / sha[:2] / sha[2:4] / sha).read_bytes() == content
    assert _live(engine) == [(f"result:job-1:{n}", "committed") for n in range(4)]
    again = _bulk(api, [_result(f"result:job-1:{n}") for n in range(4)], contents).json()["items"]
    assert [a["status"] for a in again] == [200] * 4
    assert flushes.syncfs == 3  # the bytes received again are flushed; no new object, no rename


def test_a_new_key_for_bytes_already_stored_still_flushes_the_name_it_reuses(
    storage: tuple[Api, sa.Engine], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    api, engine = storage
    red = images.png(color=(200, 0, 0))
    assert _bulk(api, [_result("result:job-1:0")], [red]).json()["items"][0]["status"] == 201
    flushes = _Flushes(monkeypatch, tmp_path / "volume")
    # Another put may have renamed that blob and not yet flushed: the record is committed after a flush.
    answers = _bulk(api, [_result("result:job-2:0")], [red]).json()["items"]
    assert answers[0]["status"] == 201 and flushes.syncfs == 2
    assert _live(engine) == [("result:job-1:0", "committed"), ("result:job-2:0", "committed")]


@pytest.mark.parametrize("fail_at", [1, 2], ids=["the bytes' flush", "the names' flush"])
def test_a_bulk_put_whose_flush_fails_on_a_full_disk_creates_none_of_its_objects(
    storage: tuple[Api, sa.Engine], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fail_at: int
) -> None:
    api, engine = storage
    red = images.png(color=(200, 0, 0))
    first = _bulk(api, [_result("result:job-1:0")], [red]).json()["items"][0]
    flushes = _Flushes(monkeypatch, tmp_path / "volume", fail_at=fail_at)
    contents = [red, *(images.png(color=(n, 7, 7)) for n in range(1, 3))]
    answers = _bulk(api, [_result(f"result:job-1:{n}") for n in range(3)], contents).json()["items"]
    assert flushes.syncfs == fail_at  # the fault fired, at that flush
    slugs = [(a["status"], a["body"].get("type", "").rsplit("/", 1)[-1]) for a in answers]
    # The bytes sent again under their key are answered with the object their key holds, as a
    # single put answers them whatever befalls its own copy; the two new images are refused.
    assert slugs == [(200, ""), (507, "insufficient-storage"), (507, "insufficient-storage")]
    assert answers[0]["body"]["id"] == first["body"]["id"]
    assert _live(engine) == [("result:job-1:0", "committed")]
    assert _usage(engine, "acme") == (len(red), 1)  # nothing counted for what was refused


def test_without_syncfs_a_bulk_put_fsyncs_each_file_then_each_folder_naming_them_once(
    storage: tuple[Api, sa.Engine], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    api, engine = storage
    monkeypatch.setattr(blobs_module, "_SYNCFS", None)
    fsyncs = Fsyncs(monkeypatch)
    contents = [images.png(color=(n, 5, 5)) for n in range(2)]
    answers = _bulk(api, [_result(f"result:job-1:{n}") for n in range(2)], contents).json()["items"]
    assert [a["status"] for a in answers] == [201, 201]
    assert len(fsyncs.files) == 2
    named = [f for a in answers for f in blob_folders(tmp_path / "volume", a["body"]["sha256"])]
    assert fsyncs.folders == list(dict.fromkeys(named))  # blobs/ shared: fsynced once
    assert _live(engine) == [("result:job-1:0", "committed"), ("result:job-1:1", "committed")]
