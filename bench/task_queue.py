"""bench/task_queue: lease+complete throughput of the AI task queue on PostgreSQL with W concurrent
workers, each leasing up to B tasks at a time and completing them one by one.

    .venv/bin/python bench/task_queue.py [--tasks 2000] [--workers 8] [--batch 4]

Prints tasks/s and p50/p99 of (lease + complete) per task. Everything shares this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aijobs_dev.testbed.postgres import PostgresCluster
from aijobs_dev.testbed.processes import ServiceProcess, make_secrets

from aijobs.wire.tokens import TokenSigner
from bench._common import summary


async def _create(url: str, token: str, n: int) -> None:
    async with httpx.AsyncClient(
        base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                body = {
                    "jobId": f"job-{i}",
                    "account": "bench",
                    "pipeline": "grayscale",
                    "inputObjectId": "obj-x",
                }
                r = await http.post("/v1/tasks", json=body, headers={"Idempotency-Key": f"c{i}"})
                r.raise_for_status()

        await asyncio.gather(*(one(i) for i in range(n)))


async def _worker(
    url: str, token: str, name: str, batch: int, latencies: list[float], done: list[int]
) -> None:
    counter = itertools.count()
    async with httpx.AsyncClient(
        base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        while True:
            started = time.perf_counter()
            r = await http.post(
                "/v1/leases",
                json={"worker": name, "maxTasks": batch, "leaseSeconds": 60},
                headers={"Idempotency-Key": f"{name}:{next(counter)}"},
            )
            tasks = r.json()["items"]
            if not tasks:
                return
            leased = time.perf_counter() - started
            for task in tasks:
                t0 = time.perf_counter()
                c = await http.post(
                    f"/v1/tasks/{task['id']}/complete",
                    json={"leaseToken": task["leaseToken"], "resultObjectId": "obj-r"},
                    headers={"Idempotency-Key": f"done:{task['id']}"},
                )
                c.raise_for_status()
                latencies.append(leased / len(tasks) + time.perf_counter() - t0)
                done[0] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--uvicorn-workers", type=int, default=2)
    args = parser.parse_args()
    cluster = PostgresCluster()
    cluster.start()
    secrets = make_secrets()
    service = ServiceProcess(
        "ai", cluster.create_database("ai"), secrets, Path(tempfile.mkdtemp()), workers=args.uvicorn_workers
    )
    try:
        service.start()
        asyncio.run(
            _create(service.url, TokenSigner("operator", secrets["operator"]).token_for("ai"), args.tasks)
        )
        token = TokenSigner("worker", secrets["worker"]).token_for("ai")
        latencies: list[float] = []
        done = [0]

        async def run() -> None:
            await asyncio.gather(
                *(
                    _worker(service.url, token, f"w{i}", args.batch, latencies, done)
                    for i in range(args.workers)
                )
            )

        started = time.perf_counter()
        asyncio.run(run())
        elapsed = time.perf_counter() - started
        print(
            f"queue: {done[0]} tasks leased+completed in {elapsed:.1f}s = {done[0] / elapsed:.0f} tasks/s; "
            f"per task {summary(latencies)}; {args.workers} workers, lease batch {args.batch}, "
            f"{args.uvicorn_workers} uvicorn workers, PostgreSQL"
        )
    finally:
        service.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
