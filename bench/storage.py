"""bench/storage: Storage put/get throughput (MB/s) next to a plain file copy on the same disk
(write + fsync, then read) as the ceiling.

    .venv/bin/python bench/storage.py [--objects 40] [--side 1000]

Objects are distinct incompressible PNGs (~3 MB at 1000x1000), checked, hashed, fsynced and
recorded like any upload.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aijobs_dev.testbed.postgres import PostgresCluster
from aijobs_dev.testbed.processes import ServiceProcess, make_secrets

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=40)
    parser.add_argument("--side", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
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
