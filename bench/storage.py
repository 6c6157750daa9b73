"""bench/storage: Storage put/get throughput (MB/s) next to a plain file copy on the same disk
(write + fsync, then read) as the ceiling.

    .venv/bin/python bench/storage.py [--objects 40] [--side 1000]
    .venv/bin/python bench/storage.py --held 20000 [--objects 400] [--side 32]

Objects are distinct incompressible PNGs (~3 MB at 1000x1000), checked, hashed, fsynced and
recorded like any upload.

With ``--held M``: whether a put's cost grows with what the volume holds. Two Storage services
run side by side, one empty, one holding M committed objects of 50 accounts (rows inserted by
SQL, each with an old blob file on the volume, so the collector, sweeping every second, walks
them all), both with a quota and a capacity to check. Small puts of one account go to each in
alternating rounds; the ratio of their put rates (held / empty) should be near 1.0.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aijobs_dev.testbed.postgres import PostgresCluster
from aijobs_dev.testbed.processes import ServiceProcess, make_secrets
from aijobs_services.kit.db import make_engine

from aijobs.wire.tokens import TokenSigner


def _pictures(n: int, side: int) -> list[bytes]:
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, "PNG", compress_level=1)
        out.append(buf.getvalue())
    return out


def _copy_ceiling(folder: Path, blobs: list[bytes]) -> tuple[float, float]:
    started = time.perf_counter()
    for i, blob in enumerate(blobs):
        with (folder / f"copy-{i}").open("wb") as out:
            out.write(blob)
            out.flush()
            os.fsync(out.fileno())
    write = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(len(blobs)):
        (folder / f"copy-{i}").read_bytes()
    return write, time.perf_counter() - started


SEED_ACCOUNTS = 50
LIMITS = {"AIJOBS_ACCOUNT_QUOTA_BYTES": str(10**12), "AIJOBS_CAPACITY_BYTES": str(10**14)}


def _hold(database_url: str, volume: Path, held: int) -> None:
    """``held`` committed objects of 50 accounts, rows and usage inserted as the migration would
    count them, each with an old blob file under its sha256 (the collector's walk)."""
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into objects (id, key, account, job_id, kind, sha256, size, content_type,"
                " width, height, state, created_at, committed_at)"
                " select 'obj-held-' || i, 'held/' || i, 'acct-' || (i % :accounts), 'job-held', 'input',"
                " encode(sha256(('held-' || i)::bytea), 'hex'), 1000, 'image/png', 32, 32, 'committed',"
                " now() - interval '1 day', now() - interval '1 day'"
                " from generate_series(1, :held) as i"
            ),
            {"held": held, "accounts": SEED_ACCOUNTS},
        )
        conn.execute(
            sa.text(
                "insert into account_usage (account, bytes, objects)"
                " select account, sum(size), count(*) from objects where state = 'committed' group by account"
            )
        )
    engine.dispose()
    old = time.time() - 86400
    for i in range(1, held + 1):
        sha = hashlib.sha256(f"held-{i}".encode()).hexdigest()
        path = volume / "blobs" / sha[:2] / sha[2:4] / sha
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
        os.utime(path, (old, old))


def held_ratio(args: argparse.Namespace) -> None:
    pictures = _pictures(args.objects, args.side)
    work = Path(tempfile.mkdtemp(prefix="bench-storage-held-"))
    cluster = PostgresCluster()
    cluster.start()
    secrets = make_secrets()
    databases = {held: cluster.create_database(f"storage_{held}") for held in (0, args.held)}
    services = {
        held: ServiceProcess(
            "storage",
            databases[held],
            secrets,
            work / "logs",
            env={"AIJOBS_STORAGE_ROOT": str(work / f"volume-{held}"), **LIMITS},
        )
        for held in (0, args.held)
    }
    try:
        for service in services.values():
            service.start()
        _hold(databases[args.held], work / f"volume-{args.held}", args.held)
        headers = {"Authorization": f"Bearer {TokenSigner('worker', secrets['worker']).token_for('storage')}"}
        spent = dict.fromkeys(services, 0.0)
        rounds = 8
        per_round = len(pictures) // rounds

        async def put_round(url: str, batch: list[tuple[int, bytes]]) -> None:
            sem = asyncio.Semaphore(args.concurrency)
            async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as http:

                async def one(i: int, blob: bytes) -> None:
                    async with sem:
                        r = await http.put(
                            f"/v1/objects/bench:{i}",
                            params={"account": "acct-1", "state": "committed"},
                            content=blob,
                        )
                        r.raise_for_status()

                await asyncio.gather(*(one(i, b) for i, b in batch))

        for r in range(rounds):
            batch = list(enumerate(pictures))[r * per_round : (r + 1) * per_round]
            for held, service in services.items() if r % 2 == 0 else reversed(services.items()):
                t0 = time.perf_counter()
                asyncio.run(put_round(service.url, batch))
                spent[held] += time.perf_counter() - t0
        done = per_round * rounds
        rate = {held: done / seconds for held, seconds in spent.items()}
        print(
            f"storage --held: {done} puts of {args.side}x{args.side} PNGs per service, "
            f"concurrency {args.concurrency}"
        )
        print(f"  holding 0 objects: {rate[0]:.1f} puts/s")
        print(f"  holding {args.held} objects: {rate[args.held]:.1f} puts/s")
        print(f"  ratio held/empty: {rate[args.held] / rate[0]:.2f}")
    finally:
        for service in services.values():
            service.stop()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=40)
    parser.add_argument("--side", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--held", type=int, default=0, help="compare puts into an empty Storage and one holding this many"
    )
    args = parser.parse_args()
    if args.held:
        held_ratio(args)
        return
    blobs = _pictures(args.objects, args.side)
    mb = sum(map(len, blobs)) / 1e6
    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    cluster = PostgresCluster()
    cluster.start()
    secrets = make_secrets()
    service = ServiceProcess(
        "storage",
        cluster.create_database("storage"),
        secrets,
        work / "logs",
        workers=2,
        env={"AIJOBS_STORAGE_ROOT": str(work / "volume"), "AIJOBS_URL_SIGNING_KEY": "k" * 32},
    )
    try:
        service.start()
        headers = {"Authorization": f"Bearer {TokenSigner('worker', secrets['worker']).token_for('storage')}"}
        ids: list[str] = []

        async def put_all() -> None:
            sem = asyncio.Semaphore(args.concurrency)
            async with httpx.AsyncClient(base_url=service.url, timeout=120, headers=headers) as http:

                async def one(i: int, blob: bytes) -> None:
                    async with sem:
                        r = await http.put(
                            f"/v1/objects/bench:{i}",
                            params={"account": "bench", "state": "committed"},
                            content=blob,
                        )
                        r.raise_for_status()
                        ids.append(r.json()["id"])

                await asyncio.gather(*(one(i, b) for i, b in enumerate(blobs)))

        async def get_all() -> None:
            sem = asyncio.Semaphore(args.concurrency)
            async with httpx.AsyncClient(base_url=service.url, timeout=120, headers=headers) as http:

                async def one(object_id: str) -> None:
                    async with sem:
                        (await http.get(f"/v1/objects/{object_id}/content")).raise_for_status()

                await asyncio.gather(*(one(i) for i in ids))

        t0 = time.perf_counter()
        asyncio.run(put_all())
        put_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        asyncio.run(get_all())
        get_s = time.perf_counter() - t0
        (work / "copies").mkdir()
        copy_w, copy_r = _copy_ceiling(work / "copies", blobs)
        print(f"storage: {args.objects} objects, {mb:.0f} MB, concurrency {args.concurrency}")
        print(
            f"  put {mb / put_s:.0f} MB/s vs plain write+fsync {mb / copy_w:.0f} MB/s "
            f"= {100 * copy_w / put_s:.0f}% of the ceiling"
        )
        print(
            f"  get {mb / get_s:.0f} MB/s vs plain read {mb / copy_r:.0f} MB/s = {100 * copy_r / get_s:.0f}%"
        )
    finally:
        service.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
