"""Storage for batch jobs: an account's committed inputs under a key prefix, listed page by page
in byte order of their keys; a batch's manifest (JSON lines) stored, replayed and served as
what it is; a job's objects paged by id."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from aijobs_dev.testbed.postgres import PostgresCluster
from aijobs_services.storage import objects
from aijobs_services.storage.models import StoredObject

from tests.services import images
from tests.services.conftest import Api, snapshot
from tests.services.test_storage import _files, _put, _storage

MANIFEST = b'{"input":"acme/cat/a-0001","sha256":"ab","state":"succeeded","note":"caf\xc3\xa9"}\n' * 3
# Keys whose byte order differs from a natural-language collation's (punctuation, case):
# ``en-US`` sorts ``a-1`` with ``a1`` and ``A`` with ``a``, bytes never do.
SHAPES = ("a-", "a.", "a_", "A", "a/", "a:", "ab", "B", "z")
EARLY = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(params=["default", "icu-en-US", "sqlite"])
def database(request: pytest.FixtureRequest, postgres: PostgresCluster, tmp_path: Path) -> Iterator[str]:
    """A fresh database, in the cluster's own locale or in a natural-language ICU collation
    (where one is built in), or the embedded SQLite: the listing must page the same in each."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'storage.db'}"
        return
    if request.param == "default":
        yield postgres.create_database(name)
    else:
        with psycopg.connect(postgres.admin_dsn, autocommit=True) as conn:
            try:
                conn.execute(
                    f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu "
                    "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
                )
            except psycopg.Error as exc:
                pytest.skip(f"this PostgreSQL has no ICU collations: {exc}")
        yield postgres.url(name)
    postgres.drop_database(name)


@pytest.fixture
def storage(database: str, secrets: dict[str, str], tmp_path: Path) -> Iterator[tuple[Api, sa.Engine]]:
    yield from _storage(database, secrets, tmp_path / "volume", max_object_bytes=2_000_000)


def _row(key: str, *, account: str = "acme", created_at: dt.datetime = EARLY) -> dict[str, Any]:
    return {
        "id": f"obj-{uuid.uuid4().hex[:20]}",
        "key": key,
        "account": account,
        "job_id": None,
        "kind": "input",
        "sha256": "0" * 64,
        "size": 1,
        "content_type": "image/png",
        "width": 1,
        "height": 1,
        "state": "committed",
        "created_at": created_at,
    }


def _list(api: Api, **params: Any) -> httpx.Response:
    return api.http.get("/v1/objects", params=params, headers=api.headers("operator", None))


def _every_page(api: Api, **params: Any) -> tuple[list[str], int]:
    """Every key listed, following ``next``, and how many pages it took."""
    keys: list[str] = []
    pages, after = 0, None
    while True:
        query = params if after is None else {**params, "after": after}
        page = _list(api, **query)
        assert page.status_code == 200, page.text
        pages += 1
        keys += [o["key"] for o in page.json()["items"]]
        after = page.json()["next"]
        if after is None:
            return keys, pages


def test_paging_through_a_prefix_lists_each_committed_input_once_in_byte_order(
    storage: tuple[Api, sa.Engine],
) -> None:
    api, engine = storage
    wanted = [f"acme/cat/{shape}{i:04d}" for i in range(1200 // len(SHAPES) + 1) for shape in SHAPES][:1200]
    # In the range an ``en-US`` collation would give ``acme/cat``, not starting with it bytewise.
    beside = ["acme/caT/x", "acme/caTalogue", "acme/ca-t", "acme/cau", "acme/cas/z"]
    with engine.begin() as conn:
        conn.execute(sa.insert(StoredObject), [_row(k) for k in wanted + beside])
        conn.execute(sa.insert(StoredObject), [_row("acme/cat/a-0000x", account="globex")])
    # Left out, each for its own reason, all under the prefix:
    _put(api, "acme/cat/staged", images.png())  # staging, never committed
    gone = _put(api, "acme/cat/gone", images.png(), state="committed").json()
    api.ok("POST", f"/v1/objects/{gone['id']}/delete", caller="operator")
    _put(api, "acme/cat/result", images.png(), caller="worker", kind="result", state="committed")
    _put(api, "acme/cat/manifest", MANIFEST, caller="operator", kind="manifest", state="committed")
    # A single job's input (staged by Main API, committed by its job): that job's, not a set's.
    owned = _put(api, "acme/cat/owned", images.png(color=(9, 9, 9))).json()
    api.ok("POST", f"/v1/objects/{owned['id']}/commit", {"jobId": "job-single"}, caller="operator")

    keys, pages = _every_page(api, account="acme", prefix="acme/cat", limit=250)
    assert keys == sorted(wanted) and pages == 5
    # A full last page names a next page, which is empty.
    keys, pages = _every_page(api, account="acme", prefix="acme/cat", limit=100)
    assert keys == sorted(wanted) and pages == 13
    first = _list(api, account="acme", prefix="acme/cat").json()
    assert len(first["items"]) == 500 and first["next"] == sorted(wanted)[499]
    assert {o["state"] for o in first["items"]} == {"committed"}


def test_inputs_uploaded_after_the_batch_was_created_stay_out_of_its_set(
    storage: tuple[Api, sa.Engine],
) -> None:
    api, _ = storage
    for n in range(3):
        _put(api, f"acme/cat/{n}", images.png(color=(n, 0, 0)), state="committed")
    created = dt.datetime.now(dt.UTC)
    _put(api, "acme/cat/3", images.png(color=(3, 0, 0)), state="committed")
    listed, _ = _every_page(api, account="acme", prefix="acme/cat/", createdBefore=created.isoformat())
    assert listed == ["acme/cat/0", "acme/cat/1", "acme/cat/2"]
    everything, _ = _every_page(api, account="acme", prefix="acme/cat/")
    assert everything == ["acme/cat/0", "acme/cat/1", "acme/cat/2", "acme/cat/3"]


def test_a_prefix_is_literal_text_not_a_pattern(storage: tuple[Api, sa.Engine]) -> None:
    api, engine = storage
    with engine.begin() as conn:
        conn.execute(sa.insert(StoredObject), [_row(k) for k in ("a_1/x", "ab1/x", "a_1", "a%1/x", "aX1")])
    assert _every_page(api, account="acme", prefix="a_")[0] == ["a_1", "a_1/x"]
    assert _every_page(api, account="acme", prefix="a_1/")[0] == ["a_1/x"]
    bad_queries: list[dict[str, Any]] = [
        {"prefix": "a%"},
        {"prefix": ""},
        {"prefix": "a", "after": "a b"},
        {"prefix": "a", "limit": 0},
    ]
    for bad in bad_queries:
        refused = _list(api, account="acme", **bad)
        assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json"
    assert _list(api, prefix="a").status_code == 422  # the account is required


def test_the_listing_reads_the_bytewise_index_in_order(storage: tuple[Api, sa.Engine]) -> None:
    """However large the account, a page is an index range read in key order up to ``limit``:
    no sort of every key under the prefix."""
    _, engine = storage
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's plan; SQLite reads the key's own unique index")
    with engine.begin() as conn:
        conn.execute(sa.insert(StoredObject), [_row(f"acme/cat/{i:05d}") for i in range(2000)])
        conn.execute(sa.text("ANALYZE objects"))
    now = dt.datetime.now(dt.UTC)
    stmt = objects.inputs_query(
        "postgresql", "acme", "acme/cat/", created_before=now, after="acme/cat/00100", limit=500
    )
    with engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")
        compiled = stmt.compile(dialect=conn.dialect)
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + compiled.string, compiled.params))
    assert "ix_objects_account_bytewise_key" in plan and "Sort" not in plan, plan


def test_a_manifest_is_stored_once_and_served_as_json_lines(storage: tuple[Api, sa.Engine]) -> None:
    api, _ = storage
    params = {"jobId": "batch-1", "kind": "manifest", "state": "committed"}
    first = _put(api, "acme/batch-1/results.jsonl", MANIFEST, caller="operator", **params)
    assert first.status_code == 201, first.text
    stored = first.json()
    assert (stored["kind"], stored["contentType"], stored["width"], stored["height"]) == (
        "manifest",
        "application/x-ndjson",
        0,
        0,
    )
    again = _put(api, "acme/batch-1/results.jsonl", MANIFEST, caller="operator", **params)
    assert again.status_code == 200 and again.json() == stored
    other = _put(api, "acme/batch-1/results.jsonl", MANIFEST + b"{}\n", caller="operator", **params)
    assert other.status_code == 409 and other.json()["type"].endswith("/key-taken")

    content = api.http.get(f"/v1/objects/{stored['id']}/content", headers=api.headers("operator", None))
    assert content.content == MANIFEST and content.headers["content-type"] == "application/x-ndjson"
    link = api.ok(
        "POST", f"/v1/objects/{stored['id']}/download-url", {"ttlSeconds": 600}, caller="operator", key=None
    )
    served = api.http.get(link["url"].split("testserver", 1)[1])
    assert served.status_code == 200 and served.content == MANIFEST
    assert served.headers["content-type"] == "application/x-ndjson"
    assert served.headers["content-disposition"].endswith(f'filename="{stored["id"]}.jsonl"')
    listed = api.ok("GET", "/v1/jobs/batch-1/objects", caller="operator")["items"]
    assert [(o["id"], o["kind"]) for o in listed] == [(stored["id"], "manifest")]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(images.png(), id="an-image"),
        pytest.param(b'{"ok": true}\n{"bad": "\xff"}\n', id="latin-1-byte"),
        pytest.param(b'{"cut": "\xe2\x82', id="cut-mid-character"),
    ],
)
def test_a_manifest_that_is_not_utf8_is_refused_and_leaves_nothing(
    storage: tuple[Api, sa.Engine], tmp_path: Path, content: bytes
) -> None:
    api, engine = storage
    before = snapshot(engine)
    refused = _put(api, "acme/batch-1/results.jsonl", content, caller="operator", kind="manifest")
    assert refused.status_code == 415 and refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"].endswith("/unsupported-manifest")
    assert snapshot(engine) == before
    assert _files(tmp_path / "volume") == []


@pytest.mark.parametrize("caller", ["worker", "main-api"])
def test_only_the_operator_may_store_a_manifest(
    storage: tuple[Api, sa.Engine], tmp_path: Path, caller: str
) -> None:
    api, engine = storage
    before = snapshot(engine)
    key = "acme/batch-1/results.jsonl"
    refused = _put(api, key, MANIFEST, caller=caller, kind="manifest", state="committed")
    assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json"
    assert snapshot(engine) == before
    assert _put(api, key, MANIFEST, caller="admin", kind="manifest").status_code == 201


def test_a_jobs_objects_page_by_id_and_all_at_once_without_a_limit(storage: tuple[Api, sa.Engine]) -> None:
    api, _ = storage
    params = {"caller": "worker", "kind": "result", "jobId": "batch-2"}
    stored = [
        _put(api, f"batch-2/out-{n}", images.png(color=(0, n, 0)), **params).json()["id"] for n in range(7)
    ]
    whole = api.ok("GET", "/v1/jobs/batch-2/objects", caller="operator")
    assert [o["id"] for o in whole["items"]] == stored and whole["next"] is None
    seen: list[str] = []
    after: str | None = None
    sizes = []
    while True:
        query: dict[str, Any] = {"limit": 3} if after is None else {"limit": 3, "after": after}
        page = api.ok("GET", "/v1/jobs/batch-2/objects", caller="operator", params=query)
        sizes.append(len(page["items"]))
        seen += [o["id"] for o in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert seen == sorted(stored) and sizes == [3, 3, 1]
    assert api.get("/v1/jobs/batch-2/objects", caller="operator", params={"limit": 1001}).status_code == 422


LIST = b"# caf\xc3\xa9 scans\nobj-a\nhttps://scans.example.com/1.png\n"


def test_an_image_list_is_stored_as_text_and_a_worker_may_not_store_one(
    storage: tuple[Api, sa.Engine], tmp_path: Path
) -> None:
    api, engine = storage
    before = snapshot(engine)
    refused = _put(api, "list:acme/night", LIST, caller="worker", kind="list", state="committed")
    assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json"
    not_text = _put(api, "list:acme/night", b"obj-a\n\xff\n", kind="list", state="committed")
    assert not_text.status_code == 415 and "an image list is UTF-8 text; byte 6" in not_text.json()["detail"]
    assert snapshot(engine) == before and _files(tmp_path / "volume") == []

    stored = _put(api, "list:acme/night", LIST, kind="list", state="committed")
    assert stored.status_code == 201, stored.text
    obj = stored.json()
    assert (obj["kind"], obj["contentType"], obj["width"], obj["size"]) == (
        "list",
        "text/plain",
        0,
        len(LIST),
    )
    served = api.http.get(f"/v1/objects/{obj['id']}/content", headers=api.headers("operator", None))
    assert served.content == LIST and served.headers["content-type"].startswith("text/plain")
    # A list is not one of the account's images: a prefix batch never takes it.
    assert _list(api, account="acme", prefix="list:").json()["items"] == []


def test_a_lookup_answers_each_id_as_its_single_read_does(storage: tuple[Api, sa.Engine]) -> None:
    api, _ = storage
    kept, gone = (
        _put(api, f"acme/cat/{n}", images.png(color=(n, 0, 0)), state="committed").json() for n in (1, 2)
    )
    deleted = api.http.post(
        f"/v1/objects/{gone['id']}/delete", headers=api.headers("operator", f"del-{gone['id']}")
    )
    assert deleted.status_code == 200, deleted.text
    ids = [gone["id"], "obj-nosuchobject0000000", kept["id"], kept["id"]]
    answer = api.http.post("/v1/bulk/lookup", json={"ids": ids}, headers=api.headers("operator", None))
    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    assert [(i["key"], i["status"]) for i in items] == [
        (ids[0], 200),
        (ids[1], 404),
        (ids[2], 200),
        (ids[3], 200),
    ]
    for object_id, item in zip(ids, items, strict=True):
        if item["status"] == 404:
            assert item["body"]["type"].endswith("/unknown-object")
            continue
        single = api.http.get(f"/v1/objects/{object_id}", headers=api.headers("operator", None))
        assert item["body"] == single.json()
    assert items[0]["body"]["state"] == "deleted"

    for bad in ({"ids": []}, {"ids": ["x"] * 1001}, {"ids": ["no spaces"]}, {"keys": ["x"]}):
        refused = api.http.post("/v1/bulk/lookup", json=bad, headers=api.headers("operator", None))
        assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json"
    anonymous = api.http.post("/v1/bulk/lookup", json={"ids": ids})
    assert anonymous.status_code == 401
