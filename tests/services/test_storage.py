"""Storage: idempotent, crash-safe puts of checked images, staging and commit, full disks,
signed links and SSRF-safe ingest."""

from __future__ import annotations

import asyncio
import http.server
import io
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from aijobs_services.kit.app import create_app
from aijobs_services.kit.db import make_engine
from aijobs_services.registry import spec
from aijobs_services.storage.settings import StorageSettings
from fastapi.testclient import TestClient
from PIL import Image

from tests.services import images
from tests.services.conftest import Api, Fsyncs, blob_folders, snapshot


def _storage(
    url: str, secrets: dict[str, str], root: Path, **settings: Any
) -> Iterator[tuple[Api, sa.Engine]]:
    config = StorageSettings(
        service="storage",
        database_url=url,
        callers=secrets,
        storage_root=str(root),
        sweep_interval_seconds=0,
        url_signing_key="k" * 32,
        **{"public_url": "http://testserver", **settings},
    )
    app = create_app(spec("storage"), config)
    with TestClient(app) as client:
        yield Api(client, "storage", secrets), app.state.engine
    app.state.engine.dispose()


@pytest.fixture
def storage(pg_url: str, secrets: dict[str, str], tmp_path: Path) -> Iterator[tuple[Api, sa.Engine]]:
    yield from _storage(pg_url, secrets, tmp_path / "volume", max_object_bytes=2_000_000)


def _put(api: Api, key: str, content: bytes, caller: str = "main-api", **params: str) -> httpx.Response:
    query = {"account": "acme", **params}
    return api.http.put(
        f"/v1/objects/{key}", params=query, content=content, headers=api.headers(caller, None)
    )


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_put_is_idempotent_by_key(storage: tuple[Api, sa.Engine], tmp_path: Path) -> None:
    api, engine = storage
    first = _put(api, "upload:alice:1", images.png())
    assert first.status_code == 201
    assert first.json()["contentType"] == "image/png" and first.json()["width"] == 64
    again = _put(api, "upload:alice:1", images.png())
    assert again.status_code == 200 and again.json() == first.json()
    before = snapshot(engine)
    other = _put(api, "upload:alice:1", images.png(color=(0, 0, 255)))
    assert other.status_code == 409 and other.json()["type"].endswith("/key-taken")
    assert snapshot(engine) == before
    assert len(_files(tmp_path / "volume" / "blobs")) == 1
    assert _files(tmp_path / "volume" / "tmp") == []


def test_a_key_already_taken_answers_for_its_object_before_the_new_bytes_are_checked(
    storage: tuple[Api, sa.Engine],
) -> None:
    """A put does not read its key before checking the bytes; a taken key must still answer as if
    it had: its own bytes again, 200; other bytes, 409, even bytes that are not an image."""
    api, engine = storage
    first = _put(api, "upload:bob:1", images.png()).json()
    before = snapshot(engine)
    assert _put(api, "upload:bob:1", b"not an image at all").status_code == 409
    assert _put(api, "upload:bob:1", images.png(9000, 9000)).status_code == 409
    assert _put(api, "upload:bob:1", images.png()).json() == first
    assert snapshot(engine) == before


def test_an_object_is_served_whole_or_streamed_with_the_same_bytes_and_headers(
    storage: tuple[Api, sa.Engine],
) -> None:
    """A blob up to one streamed piece is read whole; a larger one is streamed: the caller sees
    no difference."""
    api, _ = storage
    small = images.png()
    noise = Image.frombytes("RGB", (700, 700), np.random.default_rng(7).bytes(700 * 700 * 3))
    large = io.BytesIO()
    noise.save(large, "PNG")
    assert len(large.getvalue()) > 1024 * 1024
    for key, picture in (("small", small), ("large", large.getvalue())):
        obj = _put(api, key, picture, caller="worker", kind="result", state="committed").json()
        served = api.http.get(f"/v1/objects/{obj['id']}/content", headers=api.headers("worker", None))
        assert served.status_code == 200 and served.content == picture
        assert served.headers["content-type"] == "image/png"
        assert served.headers["content-length"] == str(len(picture))
        assert served.headers["content-disposition"] == f'attachment; filename="{obj["id"]}.png"'
        assert served.headers["x-content-type-options"] == "nosniff"


def test_a_read_leaves_its_pooled_connection_as_writes_need_it(
    pg_url: str, secrets: dict[str, str], tmp_path: Path
) -> None:
    """A read runs in autocommit on PostgreSQL; the one pooled connection a put takes next must
    be back in transactions, or a refused put would keep its row."""
    engine = make_engine(pg_url, pool_size=1, max_overflow=0)
    config = StorageSettings(
        service="storage",
        database_url=pg_url,
        callers=secrets,
        storage_root=str(tmp_path / "v"),
        sweep_interval_seconds=0,
        account_quota_bytes=len(images.png()) + 10,
    )
    app = create_app(spec("storage"), config, engine=engine)
    with TestClient(app) as client:
        api = Api(client, "storage", secrets)
        obj = _put(api, "one", images.png()).json()
        assert api.http.get(f"/v1/objects/{obj['id']}/content", headers=api.headers("worker", None)).content
        before = snapshot(engine)
        assert _put(api, "two", images.jpeg()).status_code == 507
        assert snapshot(engine) == before
        with engine.connect() as conn:
            assert conn.connection.dbapi_connection is not None
            assert conn.connection.dbapi_connection.autocommit is False
    engine.dispose()


def test_a_put_to_an_objects_action_is_refused_not_stored_under_a_key(
    storage: tuple[Api, sa.Engine],
) -> None:
    """A key may hold slashes, but ``PUT /v1/objects/<id>/commit`` is a method the commit does not
    take (405, saying which it does), not an upload under the key ``<id>/commit``."""
    api, engine = storage
    stored = _put(api, "in/team/job-1", images.png())
    assert stored.status_code == 201 and stored.json()["key"] == "in/team/job-1"
    before = snapshot(engine)
    for action in ("commit", "delete", "content", "download-url"):
        refused = _put(api, f"{stored.json()['id']}/{action}", images.png())
        assert refused.status_code == 405 and refused.headers["content-type"] == "application/problem+json"
        assert "PUT" not in refused.headers["allow"]
    assert snapshot(engine) == before


def test_the_same_content_under_two_keys_shares_one_blob(
    storage: tuple[Api, sa.Engine], tmp_path: Path
) -> None:
    api, _ = storage
    a, b = _put(api, "k-a", images.jpeg()).json(), _put(api, "k-b", images.jpeg()).json()
    assert a["id"] != b["id"] and a["sha256"] == b["sha256"]
    assert len(_files(tmp_path / "volume" / "blobs")) == 1


BAD = [
    pytest.param(b"hello, I am text", 415, "unsupported-image", id="not-an-image"),
    pytest.param(images.png()[:60], 415, "unsupported-image", id="truncated"),
    pytest.param(images.gif(), 415, "unsupported-image", id="gif"),
    pytest.param(images.bomb(), 413, "image-too-large", id="decompression-bomb"),
    pytest.param(images.png(9000, 9000), 413, "image-too-large", id="too-many-pixels"),
    pytest.param(b"\x89PNG" + b"\0" * 2_100_000, 413, "object-too-large", id="oversized"),
]


@pytest.mark.parametrize(("content", "status", "kind"), BAD)
def test_a_bad_upload_is_refused_and_leaves_nothing(
    pg_url: str, secrets: dict[str, str], tmp_path: Path, content: bytes, status: int, kind: str
) -> None:
    for api, engine in _storage(
        pg_url, secrets, tmp_path / "v", max_object_bytes=2_000_000, max_pixels=50_000_000, max_side=8000
    ):
        before = snapshot(engine)
        response = _put(api, "upload:bad", content)
        assert response.status_code == status, response.text
        assert response.json()["type"] == f"https://aijobs.io/problems/{kind}"
        assert snapshot(engine) == before
        assert _files(tmp_path / "v") == []


def test_a_bad_key_or_account_is_a_validation_error(storage: tuple[Api, sa.Engine]) -> None:
    api, engine = storage
    before = snapshot(engine)
    assert _put(api, "white space", images.png()).status_code == 422
    response = api.http.put(
        "/v1/objects/k1",
        params={"account": "ACME!"},
        content=images.png(),
        headers=api.headers("main-api", None),
    )
    assert response.status_code == 422 and "account" in response.json()["detail"]
    assert snapshot(engine) == before


def test_the_capacity_limit_answers_507_before_the_disk_fills(
    pg_url: str, secrets: dict[str, str], tmp_path: Path
) -> None:
    picture = images.png()
    for api, engine in _storage(pg_url, secrets, tmp_path / "v", capacity_bytes=len(picture) * 2 + 10):
        assert _put(api, "a", images.png(color=(1, 1, 1))).status_code == 201
        assert _put(api, "b", images.png(color=(2, 2, 2))).status_code == 201
        before = snapshot(engine)
        full = _put(api, "c", images.png(color=(3, 3, 3)))
        assert full.status_code == 507 and full.json()["type"].endswith("/insufficient-storage")
        assert "capacity" in full.json()["detail"]
        assert snapshot(engine) == before
        assert len(_files(tmp_path / "v" / "blobs")) == 2 and _files(tmp_path / "v" / "tmp") == []


def test_a_per_account_quota_answers_507(pg_url: str, secrets: dict[str, str], tmp_path: Path) -> None:
    picture = images.png()
    for api, _ in _storage(pg_url, secrets, tmp_path / "v", account_quota_bytes=len(picture) + 10):
        assert _put(api, "a", picture).status_code == 201
        assert _put(api, "b", images.png(color=(9, 9, 9))).status_code == 507
        assert _put(api, "c", picture, account="globex").status_code == 201


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs here ({proc.stderr.decode().strip()}); the capacity test covers 507"
        )
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk_answers_507_and_leaves_no_half_object(
    pg_url: str, secrets: dict[str, str], tiny_disk: Path
) -> None:
    import os

    for api, engine in _storage(pg_url, secrets, tiny_disk, max_object_bytes=10_000_000):
        big = images.png(300, 300) + os.urandom(400_000)  # bigger than the whole filesystem
        before = snapshot(engine)
        response = _put(api, "big", big)
        assert response.status_code == 507, response.text
        assert "full" in response.json()["detail"]
        assert snapshot(engine) == before
        assert _files(tiny_disk) == []
        assert _put(api, "small", images.png()).status_code == 201  # space came back


def test_commit_attaches_an_upload_to_its_job_and_compensation_deletes_it(
    storage: tuple[Api, sa.Engine],
) -> None:
    api, _ = storage
    obj = _put(api, "upload:1", images.png()).json()
    committed = api.ok("POST", f"/v1/objects/{obj['id']}/commit", {"jobId": "job-1"}, caller="operator")
    assert committed["state"] == "committed" and committed["jobId"] == "job-1"
    other_job = api.post(f"/v1/objects/{obj['id']}/commit", {"jobId": "job-2"}, caller="operator")
    assert other_job.status_code == 409
    deleted = api.ok("POST", "/v1/jobs/job-1/objects/delete", caller="operator")
    assert deleted["deleted"] == [obj["id"]]
    listing = api.ok("GET", "/v1/jobs/job-1/objects", caller="operator")["items"]
    assert [o["state"] for o in listing] == ["deleted"]


def test_the_collector_removes_stale_uploads_but_never_a_committed_object(
    pg_url: str, secrets: dict[str, str], tmp_path: Path
) -> None:
    from aijobs_services.storage import objects
    from aijobs_services.storage.blobs import BlobStore

    for api, engine in _storage(pg_url, secrets, tmp_path / "v"):
        stale = _put(api, "stale", images.png(color=(5, 5, 5))).json()
        kept = _put(api, "kept", images.png(color=(6, 6, 6))).json()
        api.ok("POST", f"/v1/objects/{kept['id']}/commit", {"jobId": "job-1"}, caller="operator")
        with engine.begin() as conn:
            conn.execute(sa.text("update objects set created_at = now() - interval '2 days'"))
        with sa.orm.Session(engine) as session:
            objects.collect(session, BlobStore(tmp_path / "v"), staging_grace=3600, deleted_grace=0)
        assert api.ok("GET", f"/v1/objects/{stale['id']}")["state"] == "deleted"
        assert api.ok("GET", f"/v1/objects/{kept['id']}")["state"] == "committed"
        assert api.http.get(
            f"/v1/objects/{kept['id']}/content", headers=api.headers("operator", None)
        ).content
        assert len(_files(tmp_path / "v" / "blobs")) == 1


def test_a_signed_link_downloads_without_a_token_until_it_expires(storage: tuple[Api, sa.Engine]) -> None:
    api, _ = storage
    picture = images.png()
    obj = _put(api, "result:1", picture, caller="worker", kind="result", state="committed").json()
    link = api.ok(
        "POST", f"/v1/objects/{obj['id']}/download-url", {"ttlSeconds": 600}, caller="operator", key=None
    )
    path = link["url"].split("testserver", 1)[1]
    assert api.http.get(path).content == picture
    assert api.http.get(path.replace("signature=", "signature=f")).status_code == 403
    expired = path.split("expires=")[0] + "expires=1000&" + path.split("&", 1)[1]
    assert api.http.get(expired).status_code == 403
    non_ascii = path.split("signature=")[0] + "signature=%C3%A9"
    assert api.http.get(non_ascii).status_code == 403
    served = api.http.get(path)
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.headers["content-disposition"].startswith("attachment;")
    assert "sandbox" in served.headers["content-security-policy"]


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "cat.png").write_bytes(images.png(32, 32))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, directory=str(tmp_path / "www"), **kw)

        def log_message(self, *_: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/busy.png":
                self.send_error(503)
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_ingest_refuses_private_addresses_unless_allow_listed(
    pg_url: str, secrets: dict[str, str], tmp_path: Path, image_server: str
) -> None:
    body = {"key": "ingest:1", "url": f"{image_server}/cat.png", "account": "acme", "jobId": "job-1"}
    for api, engine in _storage(pg_url, secrets, tmp_path / "closed"):
        before = snapshot(engine)
        refused = api.post("/v1/ingest", body, caller="operator", key=None)
        assert refused.status_code == 422 and refused.json()["type"].endswith("/destination-refused")
        assert "127.0.0.1" in refused.json()["detail"]
        assert (
            api.post(
                "/v1/ingest",
                {**body, "url": "http://169.254.169.254/latest/meta-data"},
                caller="operator",
                key=None,
            ).status_code
            == 422
        )
        assert snapshot(engine) == before
    for api, _ in _storage(pg_url, secrets, tmp_path / "open", ingest_allow_cidrs=["127.0.0.0/8"]):
        stored = api.post("/v1/ingest", body, caller="operator", key=None)
        assert stored.status_code == 201, stored.text
        assert stored.json()["width"] == 32 and stored.json()["jobId"] == "job-1"
        missing = api.post(
            "/v1/ingest",
            {**body, "key": "ingest:2", "url": f"{image_server}/nope.png"},
            caller="operator",
            key=None,
        )
        # A definite no from the URL's server is one (it fails the job, naming the URL); a
        # server that cannot answer now is worth another try (502). Nothing is stored for either.
        assert missing.status_code == 422 and missing.json()["type"].endswith("/fetch-refused")
        assert missing.json()["upstreamStatus"] == 404
        busy = api.post(
            "/v1/ingest",
            {**body, "key": "ingest:3", "url": f"{image_server}/busy.png"},
            caller="operator",
            key=None,
        )
        assert busy.status_code == 502 and busy.json()["type"].endswith("/fetch-failed")
        assert busy.json()["upstreamStatus"] == 503
        keys = [api.get(f"/v1/by-key/ingest:{n}", caller="operator").status_code for n in (2, 3)]
        assert keys == [404, 404]


def test_concurrent_puts_of_one_key_store_one_object(
    pg_url: str, service_process: Any, secrets: Any, tmp_path: Path
) -> None:
    proc = service_process("storage", pg_url, env={"AIJOBS_STORAGE_ROOT": str(tmp_path / "vol")})
    api = Api(httpx.Client(base_url=proc.url), "storage", secrets)
    picture = images.png(128, 128)

    async def put_many() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as http:
            return await asyncio.gather(
                *(
                    http.put(
                        "/v1/objects/same-key",
                        params={"account": "acme"},
                        content=picture,
                        headers=api.headers("main-api", None),
                    )
                    for _ in range(20)
                )
            )

    responses = asyncio.run(put_many())
    assert sorted({r.status_code for r in responses}) in ([200, 201], [201])
    assert [r.status_code for r in responses].count(201) == 1
    assert len({r.json()["id"] for r in responses}) == 1
    engine = make_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from objects")).scalar() == 1
        # The puts that lost the key's race took their bytes back with their rows.
        usage = conn.execute(sa.text("select account, bytes, objects from account_usage")).all()
        assert [tuple(row) for row in usage] == [("acme", len(picture), 1)]
    engine.dispose()
    assert len(_files(tmp_path / "vol" / "blobs")) == 1
    deadline = time.monotonic() + 10
    while _files(tmp_path / "vol" / "tmp") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _files(tmp_path / "vol" / "tmp") == []


def test_a_blob_taken_up_again_while_the_collector_runs_is_never_removed(
    pg_url: str, secrets: dict[str, str], tmp_path: Path
) -> None:
    """Blobs are shared by content: a new upload may re-use the blob of a deleted object. Between
    keeping that blob and recording its object, the collector must neither see it as old nor run."""
    import fcntl
    import os

    from aijobs_services.storage import objects
    from aijobs_services.storage.blobs import BlobStore, Staged

    picture = images.png(color=(7, 7, 7))
    for api, engine in _storage(pg_url, secrets, tmp_path / "v"):
        first = _put(api, "first", picture, state="committed", jobId="job-1").json()
        api.ok("POST", "/v1/jobs/job-1/objects/delete", caller="operator")
        blobs = BlobStore(tmp_path / "v")
        blob = blobs.path(first["sha256"])
        os.utime(blob, (1_000_000, 1_000_000))  # unreferenced for ages
        # A new upload of the same bytes has kept its blob, not yet recorded its object:
        staged = tmp_path / "v" / "tmp" / "again.part"
        staged.write_bytes(picture)
        blobs.keep(Staged(staged, first["sha256"], len(picture)))
        with sa.orm.Session(engine) as session:
            objects.collect(session, blobs, staging_grace=3600, deleted_grace=3600)
        assert blob.exists()
        # ...and while a put holds the volume's shared lock, the collector can't take it.
        lock = tmp_path / "v" / ".collect.lock"
        with blobs.sharing(), lock.open("a") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_put_records_its_object_only_once_every_folder_naming_its_blob_is_durable(
    storage: tuple[Api, sa.Engine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash can lose a new folder's entry in its parent as well as a file's in its folder: the
    first put into a volume makes two folder levels for its blob, and a put of bytes already
    there may find them renamed by a put that has not flushed them yet. Either way the blob's
    folder, its parent and ``blobs/`` are fsynced before the object is committed."""
    api, engine = storage

    def committed() -> int:
        with engine.connect() as db:
            return int(db.execute(sa.text("SELECT count(*) FROM objects")).scalar_one())

    fsyncs = Fsyncs(monkeypatch, probe=committed)
    picture = images.png(color=(5, 6, 7))
    first = _put(api, "first", picture)
    assert first.status_code == 201, first.text
    chain = blob_folders(tmp_path / "volume", first.json()["sha256"])
    assert fsyncs.folders == chain
    assert fsyncs.probed == [0, 0, 0]  # no object recorded yet at any of them
    fsyncs.folders.clear()
    fsyncs.probed.clear()
    second = _put(api, "second", picture)  # the same bytes: the blob is there already
    assert second.status_code == 201, second.text
    assert second.json()["sha256"] == first.json()["sha256"]
    assert fsyncs.folders == chain
    assert fsyncs.probed == [1, 1, 1]  # the first object only: the second not yet committed


def test_links_are_signed_only_with_the_configured_public_url_never_the_host_header(
    pg_url: str, secrets: dict[str, str], tmp_path: Path
) -> None:
    picture = images.png(color=(9, 9, 9))
    for api, _ in _storage(pg_url, secrets, tmp_path / "a", public_url="https://files.example.com"):
        obj = _put(api, "result:host", picture, caller="worker", kind="result", state="committed").json()
        link = api.http.post(
            f"/v1/objects/{obj['id']}/download-url",
            json={"ttlSeconds": 600},
            headers=api.headers("operator", None) | {"Host": "evil.example.net"},
        ).json()
        assert link["url"].startswith("https://files.example.com/v1/download/")
    for api, _ in _storage(pg_url, secrets, tmp_path / "b", public_url=""):
        obj = _put(api, "result:none", picture, caller="worker", kind="result", state="committed").json()
        refused = api.http.post(
            f"/v1/objects/{obj['id']}/download-url",
            json={"ttlSeconds": 600},
            headers=api.headers("operator", None),
        )
        assert refused.status_code == 503 and refused.json()["type"].endswith("/not-configured")
