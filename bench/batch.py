"""bench/batch: what the whole system keeps of the worker's speed for one batch job. N photographs
uploaded to Storage under a prefix, one AIImageJob naming the prefix, applied on the real stack;
then the same N photographs through the worker's own code in this process, with nothing around it.

    .venv/bin/python bench/batch.py --images 500 [--pipeline upscale-x2] [--size 192] [--workers 1]

The stack is bench/e2e.py's (bench._common.bench_stack): a real kube-apiserver and etcd with an
audit log, one PostgreSQL, the five services as processes reached directly (no fault proxy), the
operator as a process at its default ``batch_progress_seconds`` (30 s), and ``--workers`` real
worker processes on the CPU. The N images are uploaded as the tenant's committed inputs under a
fresh prefix, by 8 client threads, before the clock starts: uploading is the user's time. One
warm-up batch of one image goes through first (the worker loads its model, the operator takes
its Lease). Then the batch is applied and its status polled every 0.25 s until it has ended.

    batch ratio R = (N / seconds from apply to Delivered) / (images/s of the worker alone)

The worker alone: bench._common.worker_alone, the same stages bench/e2e.py times (decode on 4
codec threads -> ``Runner.run`` -> encode), same pipeline, after the stack is stopped. Goals
(issue 28): R >= 0.9 for upscale-x2 at N = 10,000; R >= 0.5 for grayscale, which stands in for a
GPU (the model's share tiny, so everything around it shows); API writes for the batch <= 50.

Also printed: when the first and last task ended (AI's tasks, read after), the job's API writes
by kind (audit log), CPU seconds by program while it ran and per image outside the worker, HTTP
calls by route (the services' counters: how many ``POST /v1/bulk/tasks`` requests created the
tasks, how many the worker's completions took), the manifest's lines and the charged amount
(must be price x succeeded), and the load average with each figure (a shared machine).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, cast

import httpx
from kubernetes import client as k8s

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aijobs_dev.testbed.stack import Stack, Tenant

from aijobs.api.rules import TERMINAL_PHASES
from aijobs.api.v1alpha1 import GROUP, PLURAL, VERSION
from aijobs.kube import api_client
from bench._common import (
    bench_stack,
    cpu_by_program,
    diff,
    http_requests,
    job_writes,
    load_average,
    machine_cpu,
    photos,
    postmaster_pid,
    worker_alone,
)
from bench.e2e import wait_workers_polling

PRICE = 1
OUTSIDE_THE_WORKER = ("worker", "bench (this process)")
WRITES_GOAL = 50
DEADLINE_MAX_S = 7 * 86400


def batch_body(name: str, account: str, prefix: str, pipeline: str, deadline_s: float) -> dict[str, Any]:
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=deadline_s)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AIImageJob",
        "metadata": {"name": name},
        "spec": {
            "account": account,
            "pipeline": pipeline,
            "price": PRICE,
            "input": {"batch": {"prefix": prefix}},
            "deadline": deadline.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }


UPLOAD_CHUNK = 10_000  # images uploaded under one admin token (a token lives a few minutes)


def upload(stack: Stack, account: str, prefix: str, images: list[bytes]) -> None:
    """The images as a user's upload leaves them: committed inputs of the account under the
    prefix, ``img-000000.jpg`` on, by 8 threads over an admin client, a fresh one (and token)
    for every ``UPLOAD_CHUNK`` images: 100,000 took past one token's life."""
    for start in range(0, len(images), UPLOAD_CHUNK):
        with stack.admin("storage") as http:

            def put(n: int, http: httpx.Client = http) -> None:
                response = http.put(
                    f"/v1/objects/{prefix}img-{n:06d}.jpg",
                    params={"account": account, "kind": "input", "state": "committed"},
                    content=images[n],
                    headers={"Content-Type": "image/jpeg"},
                )
                response.raise_for_status()

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(put, range(start, min(start + UPLOAD_CHUNK, len(images)))))


def follow(
    custom: k8s.CustomObjectsApi, namespace: str, name: str, timeout: float
) -> tuple[dict[str, Any], float, list[tuple[float, str]]]:
    """(the job once ended, when that was first seen, each progress first seen and when), polling
    the job every 0.25 s; its status holds counts, not images, so a poll is small."""
    deadline = time.monotonic() + timeout
    progress: list[tuple[float, str]] = []
    while time.monotonic() < deadline:
        job = cast(
            dict[str, Any], custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        )
        now = time.perf_counter()
        status = job.get("status") or {}
        shown = f"{status.get('phase', '')} {(status.get('batch') or {}).get('progress', '')}".strip()
        if not progress or progress[-1][1] != shown:
            progress.append((now, shown))
        if status.get("phase") in TERMINAL_PHASES:
            return job, now, progress
        time.sleep(0.25)
    raise TimeoutError(f"{name} did not end within {timeout:.0f}s; last seen: {progress[-1:]}")


def task_times(stack: Stack, job_uid: str) -> tuple[list[float], dict[str, int]]:
    """Each succeeded task's end (its last update, epoch seconds) and the tasks by state, read
    from AI page by page after the batch."""
    ends: list[float] = []
    states: dict[str, int] = {}
    after: int | None = None
    with stack.admin("ai") as http:
        while True:
            params: dict[str, Any] = {"limit": 1000, **({"after": after} if after is not None else {})}
            page = http.get(f"/v1/jobs/{job_uid}/tasks", params=params).raise_for_status().json()
            for task in page["items"]:
                states[task["state"]] = states.get(task["state"], 0) + 1
                if task["state"] == "succeeded":
                    ends.append(dt.datetime.fromisoformat(task["updatedAt"]).timestamp())
            after = page["next"]
            if after is None:
                return ends, states


def run_batch(
    custom: k8s.CustomObjectsApi,
    tenant: Tenant,
    name: str,
    prefix: str,
    args: argparse.Namespace,
    n: int,
) -> tuple[dict[str, Any], float, float, float, list[tuple[float, str]]]:
    """Apply one batch and follow it: (job, apply's perf_counter, its epoch time, end's
    perf_counter, progress seen)."""
    # A minute an image, within a week: Payment holds credits for 30 days at most, and the
    # operator fails a job whose deadline its hold could not cover (its first N = 100,000 run).
    body = batch_body(name, tenant.account, prefix, args.pipeline, min(3600 + 60.0 * n, DEADLINE_MAX_S))
    applied, applied_epoch = time.perf_counter(), time.time()
    custom.create_namespaced_custom_object(GROUP, VERSION, tenant.namespace, PLURAL, body)
    job, ended, progress = follow(custom, tenant.namespace, name, 600 + 10.0 * n)
    return job, applied, applied_epoch, ended, progress


def end_to_end(args: argparse.Namespace, images: list[bytes]) -> dict[str, Any]:
    n = len(images)
    # Inputs, and results: a PNG of up to twice the side, about as big as its raw pixels.
    quota = 2 * (sum(map(len, images)) + n * (2 * args.size) ** 2 * 3) + 10_000_000
    with bench_stack("bench-batch-", workers=args.workers, quota_bytes=quota) as (plane, pg, stack):
        tenant = stack.tenant("bench", credits=n + 10)
        api = api_client(plane.kubeconfig)
        custom = k8s.CustomObjectsApi(api)
        wait_workers_polling(stack, args.workers)
        warm_prefix = f"{tenant.account}/warm-up/"
        upload(stack, tenant.account, warm_prefix, images[:1])
        warm, *_ = run_batch(custom, tenant, "warm-up", warm_prefix, args, 1)
        if warm["status"]["phase"] != "Delivered":
            raise RuntimeError(f"the warm-up batch did not deliver: {json.dumps(warm['status'])[-1000:]}")

        prefix = f"{tenant.account}/batch-{uuid.uuid4().hex[:8]}/"
        uploading = time.perf_counter()
        upload(stack, tenant.account, prefix, images)
        uploaded_s = time.perf_counter() - uploading

        roots = [postmaster_pid(pg.data)]
        cpu_before, http_before = cpu_by_program(roots), http_requests(stack)
        machine_before = machine_cpu()
        load_before = load_average()
        job, applied, applied_epoch, ended, progress = run_batch(custom, tenant, "batch", prefix, args, n)
        cpu_after, http_after = cpu_by_program(roots), http_requests(stack)
        machine_after = machine_cpu()
        load_after = load_average()
        time.sleep(3)  # the auditor's verdicts land: they are API writes too
        writes = job_writes(plane.audit_log, "batch", tenant.namespace)
        status = job["status"]
        manifest = (
            httpx.get(status["result"]["url"], timeout=60).raise_for_status().text
            if (status.get("result") or {}).get("url")
            else ""
        )
        lines = [json.loads(line) for line in manifest.splitlines()]
        charges = stack.call("payment", "GET", f"/v1/jobs/{job['metadata']['uid']}/charges")
        ends, states = task_times(stack, job["metadata"]["uid"])
        return {
            "phase": status["phase"],
            "status": status,
            "batch": status.get("batch") or {},
            "seconds": ended - applied,
            "uploaded_s": uploaded_s,
            "progress": [(t - applied, shown) for t, shown in progress],
            "first_task_s": min(ends) - applied_epoch if ends else float("nan"),
            "last_task_s": max(ends) - applied_epoch if ends else float("nan"),
            "task_states": states,
            "writes": writes,
            "cpu": diff(cpu_after, cpu_before),
            "machine": diff(machine_after, machine_before),
            "http": diff(dict(http_after), dict(http_before)),
            "manifest_lines": len(lines),
            "manifest_succeeded": sum(1 for line in lines if line.get("state") == "succeeded"),
            "charged": charges["charged"],
            "load": (load_before, load_after),
        }


def refuse_unless_delivered(run: dict[str, Any]) -> None:
    """A batch that did not deliver has no ratio: say why it ended, from its conditions."""
    if run["phase"] == "Delivered":
        return
    conditions = run["status"].get("conditions") or []
    said = "; ".join(
        f"{c.get('type')}={c.get('status')} {c.get('reason')}: {c.get('message')}" for c in conditions
    )
    raise SystemExit(
        f"the batch ended {run['phase']}, not Delivered, {run['seconds']:.1f}s after the apply: no ratio. "
        f"{run['batch']}; conditions: {said or 'none'}"
    )


def report(
    args: argparse.Namespace,
    images: list[bytes],
    run: dict[str, Any],
    alone: tuple[float, float],
    load_alone: str,
) -> None:
    n = len(images)
    alone_s, alone_cpu = alone
    succeeded = int(run["batch"].get("succeeded", 0))
    rate, alone_rate = n / run["seconds"], n / alone_s
    ratio = rate / alone_rate
    print(
        f"batch ratio: {ratio:.3f}  (one batch of {n} x {args.pipeline} of a {args.size}px JPEG photograph, "
        f"{sum(map(len, images)) // n} bytes on average; {args.workers} worker process(es))"
    )
    print(
        f"  end to end: {run['phase']}, {succeeded}/{n} succeeded ({run['batch'].get('failed', 0)} failed), "
        f"apply to {run['phase']} {run['seconds']:.1f}s = {rate:.2f} images/s "
        f"[{run['load'][0]} before, {run['load'][1]} after]; upload (not timed) {run['uploaded_s']:.1f}s"
    )
    print(
        f"  tasks (AI, after): {run['task_states']}; first ended {run['first_task_s']:.1f}s after the apply, "
        f"last {run['last_task_s']:.1f}s (epoch clocks: +-1 s)"
    )
    shown = ", ".join(f"{t:.1f}s {s}" for t, s in run["progress"])
    print(f"  status seen (0.25 s polls), from the apply: {shown}")
    print(
        f"  worker alone (decode -> Runner.run -> encode, in process): {alone_s:.1f}s = "
        f"{alone_rate:.2f} images/s, {1000 * alone_cpu / n:.1f} CPU-ms per image [{load_alone}]"
    )
    writes: dict[str, int] = run["writes"]
    total_writes = sum(writes.values())
    verdict = "within" if total_writes <= WRITES_GOAL else "OVER"
    print(
        f"  API writes for the batch (audit log): {total_writes} ({verdict} the goal of {WRITES_GOAL}): "
        f"{dict(writes)}"
    )
    cpu: dict[str, float] = run["cpu"]
    outside = sum(v for k, v in cpu.items() if k not in OUTSIDE_THE_WORKER)
    print(
        f"  CPU while the batch ran: {sum(cpu.values()):.1f} CPU-s over {run['seconds']:.1f}s; "
        f"outside the worker (and the bench) {1000 * outside / n:.2f} ms per image; by program, "
        f"CPU-s (ms per image):"
    )
    for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"    {seconds:8.2f} ({1000 * seconds / n:7.2f})  {name}")
    machine: dict[str, float] = run["machine"]
    unowned = machine["busy"] - sum(cpu.values())
    print(
        f"  the machine meanwhile (/proc/stat, {os.cpu_count()} cores): busy {machine['busy']:.1f} CPU-s, "
        f"of which {unowned:.1f} in no process above (kernel threads, interrupts, other programs: "
        f"{1000 * unowned / n:.2f} ms per image); idle {machine['idle']:.1f}, "
        f"iowait {machine['iowait']:.1f}, steal {machine['steal']:.1f}"
    )
    http: dict[str, float] = run["http"]
    print(f"  HTTP requests while the batch ran, all services: {sum(http.values()):.0f}; by route:")
    for route, count in sorted(http.items(), key=lambda kv: -kv[1]):
        print(f"    {count:8.0f}  {route}")
    bulk = http.get("ai POST /v1/bulk/tasks", 0)
    single = http.get("ai POST /v1/tasks", 0)
    print(
        f"  tasks created: {bulk:.0f} POST /v1/bulk/tasks (at least {-(-n // 1000)} for {n} items "
        f"of <= 1000), "
        f"{single:.0f} single POST /v1/tasks"
    )
    expected = PRICE * succeeded
    print(
        f"  manifest: {run['manifest_lines']} lines ({run['manifest_succeeded']} succeeded); charged "
        f"{run['charged']} = price {PRICE} x {succeeded} succeeded: "
        f"{'yes' if run['charged'] == expected else 'NO'}"
    )
    print(json.dumps({"batch_ratio": round(ratio, 4), "batch_images_s": round(rate, 3),
                      "alone_images_s": round(alone_rate, 3), "api_writes": total_writes}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--pipeline", default="upscale-x2")
    parser.add_argument("--size", type=int, default=192, help="side of each photograph, px")
    parser.add_argument("--workers", type=int, default=1, help="worker processes in the stack")
    args = parser.parse_args()
    images = photos(args.images, args.size)
    run = end_to_end(args, images)
    refuse_unless_delivered(run)
    load_alone = load_average()
    alone = worker_alone(images, args.pipeline)
    report(args, images, run, alone, load_alone)


if __name__ == "__main__":
    main()
