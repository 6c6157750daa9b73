"""bench/payment: hold+capture pairs per second against the Payment service on PostgreSQL,
next to pgbench's built-in simple-update script on the same database server as the ceiling.

    .venv/bin/python bench/payment.py [--clients 16] [--seconds 20] [--workers 2]

Everything runs on this machine: the PostgreSQL cluster, the service (uvicorn, N worker
processes) and the load generator (asyncio + httpx) share its cores, as pgbench shares them
with the server. Prints pairs/s, p50/p99 per pair, pgbench TPS and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aijobs_dev.testbed.postgres import PostgresCluster, find_bindir
from aijobs_dev.testbed.processes import ServiceProcess, make_secrets

from aijobs.wire.tokens import TokenSigner
from bench._common import summary


async def _client(
    url: str, signer: TokenSigner, accounts: int, stop_at: float, latencies: list[float], errors: list[str]
) -> None:
    headers = {"Authorization": f"Bearer {signer.token_for('payment')}"}
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as http:
        while time.perf_counter() < stop_at:
            job = uuid.uuid4().hex
            started = time.perf_counter()
            account = f"bench-{random.randrange(accounts)}"
            hold = await http.post(
                "/v1/holds",
                json={"account": account, "jobId": job, "amount": 1},
                headers={"Idempotency-Key": f"{job}:hold"},
            )
            if hold.status_code != 201:
                errors.append(f"hold {hold.status_code}")
                continue
            cap = await http.post(
                f"/v1/holds/{hold.json()['id']}/capture", headers={"Idempotency-Key": f"{job}:cap"}
            )
            if cap.status_code != 200:
                errors.append(f"capture {cap.status_code}")
                continue
            latencies.append(time.perf_counter() - started)


async def _floor(url: str, path: str, headers: dict[str, str], clients: int, seconds: float) -> float:
    """Requests/s the same clients get from ``path``: what the HTTP stack alone allows."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal done
        async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as http:
            while time.perf_counter() < stop_at:
                (await http.get(path)).raise_for_status()
                done += 1

    await asyncio.gather(*(one() for _ in range(clients)))
    return done / seconds


def _pgbench(cluster: PostgresCluster, clients: int, seconds: int) -> float:
    bindir = find_bindir()
    dsn = cluster.url("pgbench", driver="postgresql")
    cluster.create_database("pgbench")
    subprocess.run([str(bindir / "pgbench"), "-i", "-q", "-s", "10", dsn], check=True, capture_output=True)
    out = subprocess.run(
        [str(bindir / "pgbench"), "-N", "-c", str(clients), "-j", "2", "-T", str(seconds), dsn],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(r"tps = ([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--accounts",
        type=int,
        default=1000,
        help="accounts the jobs are spread over (1 = every hold contends for one row lock)",
    )
    args = parser.parse_args()

    cluster = PostgresCluster()
    cluster.start()
    secrets = make_secrets()
    service = ServiceProcess(
        "payment",
        cluster.create_database("payment"),
        secrets,
        Path(tempfile.mkdtemp(prefix="bench-payment-")),
        workers=args.workers,
    )
    try:
        service.start()
        admin = TokenSigner("admin", secrets["admin"])
        auth = {"Authorization": f"Bearer {admin.token_for('payment')}"}
        with httpx.Client(base_url=service.url, headers=auth) as setup:
            for i in range(args.accounts):
                setup.post("/v1/accounts", json={"id": f"bench-{i}"}, headers={"Idempotency-Key": f"a{i}"})
                setup.post(
                    f"/v1/accounts/bench-{i}/top-ups",
                    json={"amount": 10**9},
                    headers={"Idempotency-Key": f"t{i}"},
                )
        signer = TokenSigner("operator", secrets["operator"])
        latencies: list[float] = []
        errors: list[str] = []

        async def run() -> None:
            stop_at = time.perf_counter() + args.seconds
            await asyncio.gather(
                *(
                    _client(service.url, signer, args.accounts, stop_at, latencies, errors)
                    for _ in range(args.clients)
                )
            )

        asyncio.run(run())
        pairs = len(latencies) / args.seconds
        # What bounds the row: the same clients and processes, with less and less work behind them.
        op = {"Authorization": f"Bearer {signer.token_for('payment')}"}
        healthz = asyncio.run(_floor(service.url, "/healthz", {}, args.clients, args.seconds / 2))
        read = asyncio.run(_floor(service.url, "/v1/accounts/bench-0", op, args.clients, args.seconds / 2))
        service.stop()
        tps = _pgbench(cluster, args.clients, args.seconds)
        print(
            f"payment hold+capture: {pairs:.0f} pairs/s ({2 * pairs:.0f} requests/s), {summary(latencies)}, "
            f"{len(errors)} errors; {args.clients} clients, {args.accounts} accounts, "
            f"{args.workers} uvicorn workers, {args.seconds}s"
        )
        print(f"pgbench simple-update (-N): {tps:.0f} TPS, {args.clients} clients, same PostgreSQL server")
        print(f"ratio: {100 * pairs / tps:.1f}% of pgbench TPS (goal >= 10%)")
        print(
            f"floor of the HTTP stack, same clients: GET /healthz (no auth, no database) {healthz:.0f} "
            f"req/s, "
            f"GET /v1/accounts/<id> (token + one SELECT) {read:.0f} req/s; two requests per pair cap "
            f"pairs/s at {healthz / 2:.0f} = {100 * healthz / 2 / tps:.1f}% of pgbench"
        )
    finally:
        service.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
