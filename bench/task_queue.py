"""bench/task_queue: the AI task queue's throughput through its full cycle (create -> lease ->
complete) on PostgreSQL, next to pgbench's default script (TPC-B-like) on the same server.

    .venv/bin/python bench/task_queue.py [--tasks 20000] [--batch 100] [--connections 8]
                                         [--uvicorn-workers 2] [--single 2000] [--explain]

Every request is sent by vegeta (compiled, :mod:`bench._loadgen`), so the load generator's own
CPU does not bound the figure on a small machine. The phases run one after the other, each as
fast as ``--connections`` connections go:

1. single creates: ``--single`` tasks, one ``POST /v1/tasks`` each (the operator's path until
   bulk creation);
2. bulk creates: ``--tasks`` tasks in ``POST /v1/bulk/tasks`` requests of ``--batch`` items;
3. leases: ``POST /v1/leases`` of ``maxTasks=--batch``, each under its own key, until every
   task is leased, the single creates' too (their answers kept: a completion needs its lease's
   token);
4. batched completions: one ``POST /v1/bulk/completions`` per lease, as a worker sends them.

vegeta's targets are a fixed file, so one wave cannot feed the next within it: the lease and
completion waves run back to back instead of interleaved, and the full cycle's figure is tasks
over the sum of the three waves' times, the lease's and the completion's taken for the bulk
tasks' share of what they leased and completed (a worker's real cycle interleaves them, which
can only overlap their costs). pgbench runs its default script with as many clients. Both share
this machine with whatever else runs on it; the ratio comes from one run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aijobs_dev.testbed.postgres import PostgresCluster, find_bindir
from aijobs_dev.testbed.processes import ServiceProcess, make_secrets

from aijobs.wire.tokens import TokenSigner
from bench._loadgen import Attack, Target, attack


def _task(job: str, item: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "jobId": job,
        "account": "bench",
        "pipeline": "grayscale",
        "inputObjectId": "obj-x",
    }
    return body if item is None else {**body, "item": item}


def _json(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _items_ok(run: Attack) -> int:
    """Bulk items answered 2xx, over every kept answer."""
    return sum(1 for r in run.results if r.code == 200 for a in r.json()["items"] if a["status"] < 300)


def _pgbench(cluster: PostgresCluster, clients: int, seconds: int) -> float:
    """pgbench's default (TPC-B-like) script: transactions per second."""
    binary = shutil.which("pgbench") or str(find_bindir() / "pgbench")
    cluster.create_database("pgbench")
    dsn = ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "pgbench"]
    subprocess.run([binary, "-i", "-q", "-s", "10", *dsn], check=True, capture_output=True)
    out = subprocess.run(
        [binary, "-c", str(clients), "-j", str(min(clients, 4)), "-T", str(seconds), *dsn],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    if found is None:
        raise RuntimeError(f"pgbench printed no tps:\n{out}")
    return float(found.group(1))


def _queue(
    url: str, secrets: dict[str, str], tasks: int, batch: int, single: int, connections: int
) -> dict[str, float]:
    json_body = {"Content-Type": "application/json"}
    operator = json_body | {
        "Authorization": f"Bearer {TokenSigner('operator', secrets['operator']).token_for('ai')}"
    }
    worker = json_body | {
        "Authorization": f"Bearer {TokenSigner('worker', secrets['worker']).token_for('ai')}"
    }
    figures: dict[str, float] = {}

    singles = [
        Target(
            "POST", f"{url}/v1/tasks", operator | {"Idempotency-Key": f"s{i}"}, _json(_task(f"single-{i}"))
        )
        for i in range(single)
    ]
    run = attack(singles, workers=connections)
    assert run.report.status_codes == {"201": single}, run.report.line()
    figures["single creates"] = single / run.report.duration_s
    print(f"single creates:   {run.report.line()}")

    # A batch job's images: one task per image, keyed by the job and the image's index.
    items = [{"key": f"job-b/{i}", "request": _task(f"job-b{i // 10_000}", i % 10_000)} for i in range(tasks)]
    bulk = [
        Target("POST", f"{url}/v1/bulk/tasks", operator, _json({"items": c})) for c in _chunks(items, batch)
    ]
    run = attack(bulk, workers=connections, keep=True)
    assert _items_ok(run) == tasks, run.report.line()
    figures["bulk creates"] = tasks / run.report.duration_s
    print(f"bulk creates:     {run.report.line()} ({tasks} tasks)")

    # Every task is leased and completed: the batch's and the single creates' (those are due too).
    total = tasks + single
    leased: list[dict[str, Any]] = []
    lease_s = 0.0
    waves = 0
    while len(leased) < total:  # concurrent leases skip each other's rows: a few may come short
        waves += 1
        count = -(-(total - len(leased)) // batch)
        body = _json({"worker": "bench", "maxTasks": batch, "leaseSeconds": 600})
        leases = [
            Target("POST", f"{url}/v1/leases", worker | {"Idempotency-Key": f"lease-{waves}-{i}"}, body)
            for i in range(count)
        ]
        run = attack(leases, workers=connections, keep=True)
        lease_s += run.report.duration_s
        got = [t for r in run.results if r.code == 200 for t in r.json()["items"]]
        if not got:
            break
        leased += got
    assert len(leased) == total, f"{len(leased)} of {total} leased"
    figures["leases"] = total / lease_s
    print(f"leases:           {total} tasks in {lease_s:.2f}s over {waves} wave(s)")

    completions = [
        {
            "key": f"{t['id']}:complete:{t['leaseToken']}",
            "request": {
                "taskId": t["id"],
                "leaseToken": t["leaseToken"],
                "resultObjectId": "obj-r",
                "result": {},
            },
        }
        for t in leased
    ]
    bulk = [
        Target("POST", f"{url}/v1/bulk/completions", worker, _json({"items": c}))
        for c in _chunks(completions, batch)
    ]
    run = attack(bulk, workers=connections, keep=True)
    assert _items_ok(run) == total, run.report.line()
    figures["bulk completions"] = total / run.report.duration_s
    print(f"bulk completions: {run.report.line()} ({total} tasks)")
    cycle_s = (
        tasks / figures["bulk creates"] + (lease_s + total / figures["bulk completions"]) * tasks / total
    )
    figures["full cycle"] = tasks / cycle_s
    return figures


def _explain(cluster: PostgresCluster, secrets: dict[str, str], tasks: int, batch: int) -> None:
    """EXPLAIN ANALYZE of the hot statements over ``tasks`` rows, each as the service sends it
    (the lease's reads captured from a real lease; the creation's and the completion's quick
    statements built by the service's own functions for a new key), each in a transaction
    rolled back."""
    import psycopg
    from aijobs_services.ai import queue
    from aijobs_services.ai.bulk import wire
    from aijobs_services.kit.app import create_app
    from aijobs_services.kit.idempotency import IdempotencyStore, Quick, item_request
    from aijobs_services.kit.settings import ServiceSettings
    from aijobs_services.registry import spec
    from fastapi.testclient import TestClient
    from sqlalchemy import event
    from sqlalchemy.dialects.postgresql import psycopg as dialect

    from aijobs.api.ai import Task

    url = cluster.create_database("explain")
    settings = ServiceSettings(service="ai", database_url=url, callers=secrets, sweep_interval_seconds=0)
    app = create_app(spec("ai"), settings)
    seen: list[tuple[str, Any]] = []

    def keep(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, many: bool) -> None:
        seen.append((statement, params))

    event.listen(app.state.engine, "before_cursor_execute", keep)

    def auth(who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {TokenSigner(who, secrets[who]).token_for('ai')}"}

    with TestClient(app) as http:
        for chunk in _chunks(list(range(tasks)), 1000):
            items = [{"key": f"e{i}", "request": _task("job-e", i)} for i in chunk]
            http.post("/v1/bulk/tasks", json={"items": items}, headers=auth("operator")).raise_for_status()
        lease = {"worker": "w", "maxTasks": 256, "leaseSeconds": 600}
        for n in range(tasks // 2 // 256):  # half of them running, as in the bench's lease wave
            http.post("/v1/leases", json=lease, headers=auth("worker") | {"Idempotency-Key": f"h{n}"})
        seen.clear()
        lease = {"worker": "w", "maxTasks": batch, "leaseSeconds": 600}
        leased = http.post("/v1/leases", json=lease, headers=auth("worker") | {"Idempotency-Key": "l"}).json()
    app.state.engine.dispose()
    store: IdempotencyStore = app.state.idempotency

    def compiled(quick: Quick | None) -> tuple[str, Any]:
        assert quick is not None
        done = quick.statement.compile(dialect=dialect.dialect())  # type: ignore[no-untyped-call]
        return done.string, done.construct_params(quick.params)

    creation = item_request("operator", "explain-1", "POST", "/v1/tasks", "/v1/tasks", b"{}")
    completion = item_request(
        "worker", "explain-2", "POST", "/v1/tasks/t/complete", "/v1/tasks/t/complete", b"{}"
    )
    task = leased["items"][0]
    scheduled, lapsed = [s for s in seen if "SKIP LOCKED" in s[0]][:2]
    hot = {
        "create (quick)": compiled(
            queue.quick_create(
                store.claim_row(creation),
                lambda t: wire(Task.of(t)),
                job_id="job-e",
                account="bench",
                pipeline="grayscale",
                params={},
                input_object_id="x",
                run_at=None,
                max_attempts=5,
                item=tasks,
            )
        ),
        "lease: the scheduled tasks due (half of them leased already)": scheduled,
        "lease: the running tasks whose lease ran out": lapsed,
        "complete (quick)": compiled(
            queue.quick_complete(store.claim_row(completion), task["id"], task["leaseToken"], "r", {})
        ),
    }
    with psycopg.connect(cluster.url("explain", driver="postgresql")) as conn:
        for name, (statement, params) in hot.items():
            plan = conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {statement}", params).fetchall()
            conn.rollback()
            print(f"\n-- {name} ({tasks} tasks in the table)\n" + "\n".join(row[0] for row in plan))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100, help="items per bulk request, tasks per lease")
    parser.add_argument("--single", type=int, default=2000, help="tasks created one request each")
    parser.add_argument("--connections", type=int, default=8, help="vegeta's and pgbench's")
    parser.add_argument("--uvicorn-workers", type=int, default=2)
    parser.add_argument("--pgbench-seconds", type=int, default=20)
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the hot statements")
    args = parser.parse_args()
    cluster = PostgresCluster()
    cluster.start()
    secrets = make_secrets()
    service = ServiceProcess(
        "ai", cluster.create_database("ai"), secrets, Path(tempfile.mkdtemp()), workers=args.uvicorn_workers
    )
    try:
        service.start()
        figures = _queue(service.url, secrets, args.tasks, args.batch, args.single, args.connections)
        service.stop()  # pgbench alone on the server, as the queue was
        tps = _pgbench(cluster, args.connections, args.pgbench_seconds)
        print(
            f"\nqueue (PostgreSQL, {args.uvicorn_workers} uvicorn workers, {args.connections} connections, "
            f"batches of {args.batch}):"
        )
        for name, value in figures.items():
            print(f"  {name:17} {value:8.0f} tasks/s  = {100 * value / tps:5.1f} % of pgbench")
        print(f"  {'pgbench default':17} {tps:8.0f} TPS  ({args.connections} clients, scale 10)")
        print(
            f"full cycle, bulk creation + batched completions: {figures['full cycle']:.0f} tasks/s = "
            f"{100 * figures['full cycle'] / tps:.1f} % of pgbench's {tps:.0f} TPS"
        )
        if args.explain:
            _explain(cluster, secrets, args.tasks, args.batch)
    finally:
        service.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
