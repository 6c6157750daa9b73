"""Storage counts each account's live bytes in a row of its own: quotas hold under concurrent
puts, deletes give the space back, the count never drifts from the objects it sums, and the
collector spares a blob taken up again while it was deciding and, between scans of the volume,
looks only at what was deleted."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from aijobs_services.kit.db import make_engine, migrate
from aijobs_services.registry import spec
from aijobs_services.storage import objects
from aijobs_services.storage.blobs import BlobStore, Staged
from aijobs_services.storage.models import StoredObject

from tests.services import images
from tests.services.conftest import Api
from tests.services.test_storage import _put, _storage


def _usage(engine: sa.Engine) -> dict[str, tuple[int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select account, bytes, objects from account_usage"))
        return {account: (int(b), int(n)) for account, b, n in rows}


def _live(engine: sa.Engine) -> dict[str, tuple[int, int]]:
    """What the usage rows must say: the live objects summed, account by account."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "select account, sum(size), count(*) from objects "
                "where state in ('staging', 'committed') group by account"
            )
        )
        return {account: (int(b), int(n)) for account, b, n in rows}


def _counted(engine: sa.Engine) -> dict[str, tuple[int, int]]:
    """The usage rows of accounts with something live (an emptied account keeps a zero row)."""
    return {account: used for account, used in _usage(engine).items() if used != (0, 0)}


@pytest.fixture
def quota_storage(pg_url: str, secrets: dict[str, str], tmp_path: Path) -> Iterator[tuple[Api, sa.Engine]]:
    yield from _storage(pg_url, secrets, tmp_path / "v", account_quota_bytes=len(images.png()) + 10)


def test_deleting_an_object_gives_its_bytes_back_to_the_accounts_quota(
    quota_storage: tuple[Api, sa.Engine],
) -> None:
    api, engine = quota_storage
    first = _put(api, "a", images.png()).json()
    assert _put(api, "a", images.png()).status_code == 200  # a replay is not counted twice
    assert _put(api, "b", images.png(color=(9, 9, 9))).status_code == 507
    api.ok("POST", f"/v1/objects/{first['id']}/delete", caller="operator")
    assert _put(api, "b", images.png(color=(9, 9, 9))).status_code == 201
    assert _counted(engine) == _live(engine)


def test_the_count_follows_puts_commits_job_deletes_and_the_collectors_expiry(
    pg_url: str, secrets: dict[str, str], tmp_path: Path
) -> None:
    for api, engine in _storage(pg_url, secrets, tmp_path / "v"):
        for i in range(3):
            _put(api, f"acme-{i}", images.png(color=(i, 1, 1)), state="committed", jobId="job-1")
        staged = _put(api, "globex-1", images.png(color=(4, 4, 4)), account="globex").json()
        _put(api, "globex-2", images.png(color=(5, 5, 5)), account="globex", kind="manifest")
        _put(api, "same-bytes", images.png(color=(0, 1, 1)))  # a blob shared with acme-0
        assert _counted(engine) == _live(engine) and _usage(engine)["acme"][1] == 4
        api.ok("POST", f"/v1/objects/{staged['id']}/commit", {"jobId": "job-2"}, caller="operator")
        assert _counted(engine) == _live(engine)
        api.ok("POST", "/v1/jobs/job-1/objects/delete", caller="operator")
        api.ok("POST", "/v1/jobs/job-1/objects/delete", caller="operator")  # again: nothing more
        assert _counted(engine) == _live(engine) and _usage(engine)["acme"][1] == 1
        with engine.begin() as conn:
            conn.execute(sa.text("update objects set created_at = now() - interval '2 days'"))
        with sa.orm.Session(engine) as session:
            objects.collect(session, BlobStore(tmp_path / "v"), staging_grace=3600, deleted_grace=3600)
        assert _counted(engine) == _live(engine) and "acme" not in _counted(engine)


def test_concurrent_puts_of_one_account_never_exceed_its_quota(
    pg_url: str, service_process: Any, secrets: dict[str, str], tmp_path: Path
) -> None:
    """Twenty puts at once, three of which fit: exactly three are stored, whichever they are."""
    pictures = [images.png(color=(i, 2 * i, 3 * i)) for i in range(1, 21)]
    sizes = [len(p) for p in pictures]
    assert 4 * min(sizes) > 3 * max(sizes)  # any three fit the quota, no four do
    proc = service_process(
        "storage",
        pg_url,
        workers=2,
        env={
            "AIJOBS_STORAGE_ROOT": str(tmp_path / "vol"),
            "AIJOBS_ACCOUNT_QUOTA_BYTES": str(3 * max(sizes)),
        },
    )
    api = Api(httpx.Client(base_url=proc.url), "storage", secrets)

    async def put_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as http:
            return await asyncio.gather(
                *(
                    http.put(
                        f"/v1/objects/k-{i}",
                        params={"account": "acme"},
                        content=picture,
                        headers=api.headers("main-api", None),
                    )
                    for i, picture in enumerate(pictures)
                )
            )

    statuses = [r.status_code for r in asyncio.run(put_all())]
    assert sorted(statuses) == [201] * 3 + [507] * 17
    engine = make_engine(pg_url)
    assert _usage(engine) == _live(engine) and _live(engine)["acme"][1] == 3
    engine.dispose()


@pytest.mark.parametrize(
    "taken_up",
    [
        pytest.param("recorded", id="recorded-by-a-put"),
        pytest.param("kept", id="kept-by-a-put-not-yet-recorded"),
    ],
)
def test_the_collector_spares_a_blob_taken_up_between_its_listing_and_its_removal(
    pg_url: str, secrets: dict[str, str], tmp_path: Path, taken_up: str
) -> None:
    """The collector lists old unused blobs with no lock; a put may re-use one before the
    collector takes the lock to remove it: the blob is then in use (or young), and stays."""
    picture = images.png(color=(7, 7, 7))
    for api, engine in _storage(pg_url, secrets, tmp_path / "v"):
        first = _put(api, "first", picture, state="committed", jobId="job-1").json()
        api.ok("POST", "/v1/jobs/job-1/objects/delete", caller="operator")
        blobs = BlobStore(tmp_path / "v")
        blob = blobs.path(first["sha256"])
        os.utime(blob, (1_000_000, 1_000_000))
        horizon = dt.datetime.now(dt.UTC).timestamp() - 3600
        with sa.orm.Session(engine) as session:
            suspects = objects.unreferenced_blobs(session, blobs, horizon)
        assert suspects == [first["sha256"]]
        if taken_up == "recorded":
            assert _put(api, "again", picture).status_code == 201
            os.utime(blob, (1_000_000, 1_000_000))  # only its record can save it now
        else:
            staged = tmp_path / "v" / "tmp" / "again.part"
            staged.write_bytes(picture)
            blobs.keep(Staged(staged, first["sha256"], len(picture)))
        with sa.orm.Session(engine) as session:
            assert objects.remove_unreferenced(session, blobs, suspects, horizon) == 0
        assert blob.read_bytes() == picture
        os.utime(blob, (1_000_000, 1_000_000))
        with sa.orm.Session(engine) as session:  # and once unused and old again, it goes
            with session.begin():
                for obj in session.scalars(
                    sa.select(StoredObject).where(StoredObject.state != "deleted")
                ).all():
                    objects.delete(session, obj)
            assert objects.remove_unreferenced(session, blobs, suspects, horizon) == 1
        assert not blob.exists()


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_the_upgrade_counts_the_objects_already_stored(pg_url: str, tmp_path: Path, dialect: str) -> None:
    url = pg_url if dialect == "postgresql" else f"sqlite:///{tmp_path / 'storage.db'}"
    migrations = spec("storage").migrations
    migrate(url, migrations, "storage_0002")
    engine = make_engine(url)
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    rows = [
        ("acme", "staging", 100),
        ("acme", "committed", 20),
        ("acme", "deleted", 5000),
        ("globex", "committed", 3),
        ("initech", "deleted", 7),
    ]
    with engine.begin() as conn:
        conn.execute(
            sa.insert(StoredObject),
            [
                {
                    "id": f"obj-{i}",
                    "key": f"k-{i}",
                    "account": account,
                    "kind": "input",
                    "sha256": f"{i:064x}",
                    "size": size,
                    "content_type": "image/png",
                    "width": 1,
                    "height": 1,
                    "state": state,
                    "created_at": now,
                }
                for i, (account, state, size) in enumerate(rows)
            ],
        )
    migrate(url, migrations)
    assert _usage(engine) == {"acme": (120, 2), "globex": (3, 1)}
    engine.dispose()


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_between_volume_scans_the_collector_looks_only_at_what_was_deleted(
    pg_url: str, secrets: dict[str, str], tmp_path: Path, dialect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deleted job's blob goes at the next sweep past its grace without the volume being
    listed, and one a live object shares stays; a blob no record names (a put that died after
    keeping it) goes at the next scan of the whole volume: the first sweep's, then one every
    ``scan_every`` seconds."""
    listings: list[BlobStore] = []
    whole = BlobStore.all_blobs

    def listed(self: BlobStore) -> list[tuple[str, float]]:
        listings.append(self)
        return whole(self)

    monkeypatch.setattr(BlobStore, "all_blobs", listed)
    url = pg_url if dialect == "postgresql" else f"sqlite:///{tmp_path / 'storage.db'}"
    for api, engine in _storage(url, secrets, tmp_path / "v"):
        _sweeps_between_scans(api, engine, tmp_path, listings, whole)


def _sweeps_between_scans(
    api: Api, engine: sa.Engine, tmp_path: Path, listings: list[BlobStore], whole: Any
) -> None:
    blobs = BlobStore(tmp_path / "v")
    clock = [0.0]
    collector = objects.Collector(scan_every=3600, clock=lambda: clock[0])

    def sweep() -> None:
        with sa.orm.Session(engine) as session:
            collector.sweep(session, blobs, staging_grace=3600, deleted_grace=0)

    sweep()
    assert len(listings) == 1  # a process's first sweep scans the volume
    shared, alone, orphan = images.png(color=(1, 1, 1)), images.png(color=(2, 2, 2)), images.png()
    _put(api, "kept", shared, state="committed", jobId="job-kept")
    _put(api, "gone-shared", shared, state="committed", jobId="job-gone")
    gone = _put(api, "gone-alone", alone, state="committed", jobId="job-gone").json()
    staged = tmp_path / "v" / "tmp" / "died.part"
    staged.write_bytes(orphan)
    blobs.keep(Staged(staged, hashlib.sha256(orphan).hexdigest(), len(orphan)))
    api.ok("POST", "/v1/jobs/job-gone/objects/delete", caller="operator")
    for sha, _ in whole(blobs):
        os.utime(blobs.path(sha), (1_000_000, 1_000_000))  # all past the grace

    def present() -> list[bool]:
        return [blobs.path(hashlib.sha256(c).hexdigest()).exists() for c in (shared, alone, orphan)]

    assert present() == [True, True, True]
    clock[0] = 10.0
    sweep()
    assert len(listings) == 1 and not blobs.path(gone["sha256"]).exists()
    assert present() == [True, False, True]
    clock[0] = 3600.0
    sweep()
    assert len(listings) == 2
    assert present() == [True, False, False]
