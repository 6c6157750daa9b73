"""bench/payment: hold+capture pairs per second against the Payment service on PostgreSQL, one
call per operation and through the bulk routes, next to pgbench's default (TPC-B-like) script on
the same database server.

    .venv/bin/python bench/payment.py [--clients 16] [--pairs 4000] [--bulk-pairs 20000] [--batch 100]

Everything runs on this machine: the PostgreSQL cluster, the service (uvicorn, N worker
processes) and the load generator, vegeta (Go, :mod:`bench._loadgen`), which spends far less
CPU per request than a Python client would. A wave of holds, each its own Idempotency-Key, is
sent as fast as ``--clients`` connections allow; then a wave of captures of the holds it placed.
pairs/s = pairs charged / (the holds' wave + the captures' wave). The bulk row sends the same
two waves as ``POST /v1/bulk/holds`` and ``POST /v1/bulk/captures`` of ``--batch`` items.
pgbench runs its default script (five statements in a transaction: three UPDATEs, a SELECT, an
INSERT) with as many clients. Prints each row, the ratios, and GET /healthz's rate with the same
clients (the HTTP stack alone: what no database work can beat).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aijobs_dev.testbed.postgres import PostgresCluster, find_bindir
from aijobs_dev.testbed.processes import ServiceProcess, make_secrets

from aijobs.wire.tokens import TokenSigner
from bench._loadgen import Report, Target, attack


def _body(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _accounts(url: str, signer: TokenSigner, accounts: int) -> None:
    auth = {"Authorization": f"Bearer {signer.token_for('payment')}"}
    with httpx.Client(base_url=url, headers=auth, timeout=30) as setup:
        for i in range(accounts):
            setup.post("/v1/accounts", json={"id": f"bench-{i}"}, headers={"Idempotency-Key": f"a{i}"})
            setup.post(
                f"/v1/accounts/bench-{i}/top-ups",
                json={"amount": 10**12},
                headers={"Idempotency-Key": f"t{i}"},
            )


def _single(
    url: str, auth: dict[str, str], pairs: int, accounts: int, clients: int
) -> tuple[int, Report, Report]:
    """A wave of single holds, then one of single captures: (pairs charged, both reports)."""
    run = uuid.uuid4().hex[:8]
    holds = [
        Target(
            "POST",
            f"{url}/v1/holds",
            {**auth, "Content-Type": "application/json", "Idempotency-Key": f"{run}-h{i}"},
            _body({"account": f"bench-{i % accounts}", "jobId": f"{run}-{i}", "amount": 1}),
        )
        for i in range(pairs)
    ]
    placed = attack(holds, workers=clients, keep=True)
    ids = [r.json()["id"] for r in placed.results if r.code == 201]
    captures = [
        Target("POST", f"{url}/v1/holds/{hold}/capture", {**auth, "Idempotency-Key": f"{run}-c{i}"})
        for i, hold in enumerate(ids)
    ]
    captured = attack(captures, workers=clients)
    return captured.report.status_codes.get("200", 0), placed.report, captured.report


def _bulk(
    url: str, auth: dict[str, str], pairs: int, batch: int, accounts: int, clients: int
) -> tuple[int, Report, Report]:
    """The same two waves through the bulk routes, ``batch`` items a request."""
    run = uuid.uuid4().hex[:8]
    headers = {**auth, "Content-Type": "application/json"}
    holds = [
        Target(
            "POST",
            f"{url}/v1/bulk/holds",
            headers,
            _body(
                {
                    "items": [
                        {
                            "key": f"{run}-h{i}",
                            "request": {
                                "account": f"bench-{i % accounts}",
                                "jobId": f"{run}-{i}",
                                "amount": 1,
                            },
                        }
                        for i in range(start, min(start + batch, pairs))
                    ]
                }
            ),
        )
        for start in range(0, pairs, batch)
    ]
    placed = attack(holds, workers=clients, keep=True)
    ids = [
        item["body"]["id"]
        for r in placed.results
        if r.code == 200
        for item in r.json()["items"]
        if item["status"] == 201
    ]
    captures = [
        Target(
            "POST",
            f"{url}/v1/bulk/captures",
            headers,
            _body(
                {
                    "items": [
                        {"key": f"{run}-c{hold}", "request": {"holdId": hold}}
                        for hold in ids[start : start + batch]
                    ]
                }
            ),
        )
        for start in range(0, len(ids), batch)
    ]
    captured = attack(captures, workers=clients, keep=True)
    done = sum(item["status"] == 200 for r in captured.results if r.code == 200 for item in r.json()["items"])
    return done, placed.report, captured.report


def _pgbench(cluster: PostgresCluster, clients: int, seconds: int) -> float:
    """pgbench's default script, TPC-B-like (not ``-N``), with ``clients`` clients."""
    bindir = find_bindir()
    dsn = cluster.url("pgbench", driver="postgresql")
    cluster.create_database("pgbench")
    subprocess.run([str(bindir / "pgbench"), "-i", "-q", "-s", "10", dsn], check=True, capture_output=True)
    out = subprocess.run(
        [str(bindir / "pgbench"), "-c", str(clients), "-j", "2", "-T", str(seconds), dsn],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(r"tps = ([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--clients", type=int, default=16, help="connections in flight, and pgbench's clients"
    )
    parser.add_argument("--pairs", type=int, default=4000, help="hold+capture pairs sent one call each")
    parser.add_argument("--bulk-pairs", type=int, default=20000, help="pairs sent through the bulk routes")
    parser.add_argument("--batch", type=int, default=100, help="items per bulk request")
    parser.add_argument("--seconds", type=int, default=20, help="pgbench's run")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument(
        "--accounts",
        type=int,
        default=200,
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
        _accounts(service.url, TokenSigner("admin", secrets["admin"]), args.accounts)
        auth = {
            "Authorization": f"Bearer {TokenSigner('operator', secrets['operator']).token_for('payment')}"
        }
        # A small first wave warms the workers' connections and caches.
        _single(service.url, auth, min(200, args.pairs), args.accounts, args.clients)
        single, s_holds, s_captures = _single(service.url, auth, args.pairs, args.accounts, args.clients)
        bulk, b_holds, b_captures = _bulk(
            service.url, auth, args.bulk_pairs, args.batch, args.accounts, args.clients
        )
        healthz = attack([Target("GET", f"{service.url}/healthz")], workers=args.clients, duration_s=5).report
        service.stop()
        tps = _pgbench(cluster, args.clients, args.seconds)
        single_rate = single / (s_holds.duration_s + s_captures.duration_s)
        bulk_rate = bulk / (b_holds.duration_s + b_captures.duration_s)
        print(
            f"single routes: {single_rate:.0f} pairs/s ({single} of {args.pairs} pairs charged; "
            f"{args.clients} clients, {args.accounts} accounts, {args.workers} uvicorn workers)"
        )
        print(f"  holds:    {s_holds.line()}")
        print(f"  captures: {s_captures.line()}")
        print(
            f"bulk routes, {args.batch} items a request: {bulk_rate:.0f} pairs/s "
            f"({bulk} of {args.bulk_pairs})"
        )
        print(f"  holds:    {b_holds.line()}")
        print(f"  captures: {b_captures.line()}")
        print(f"pgbench default TPC-B-like script: {tps:.0f} TPS, {args.clients} clients, same PostgreSQL")
        print(
            f"ratio single: {100 * single_rate / tps:.1f}% of pgbench TPS; "
            f"bulk: {100 * bulk_rate / tps:.1f}% (goal >= 10%)"
        )
        print(
            f"GET /healthz (no auth, no database), same clients: {healthz.throughput:.0f} req/s; "
            f"two requests a pair cap single-route pairs/s at {healthz.throughput / 2:.0f}"
        )
    finally:
        service.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
