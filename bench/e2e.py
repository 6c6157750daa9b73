"""bench/e2e: what the whole system keeps of the worker's speed. N upscale-x2 jobs, one photograph
each, applied at once on the real stack; then the same N photographs through the worker's own
code in this process, with nothing around it.

    .venv/bin/python bench/e2e.py [--jobs 120] [--size 192] [--workers 1]

The stack is the one bench/saga.py and ``aijobs chaos`` run, all on this machine: a real
kube-apiserver and etcd, one PostgreSQL, the five services as processes reached directly (no
fault proxy), the operator as a process, and ``--workers`` real worker processes running
upscale-x2 on the CPU (leasing up to 8 tasks at once, the worker's default). The jobs carry
their photograph inline, as ``aijobs submit`` sends a small file. One warm-up job goes through
first (the worker loads its model, the operator takes its Lease), then the N jobs are applied by
16 client threads and the bench polls the API server's table of phases until all have ended.

    e2e ratio R = (images/s end to end) / (images/s of the worker alone)

End to end: N delivered / (last Delivered seen - first apply). The worker alone: the same N
images through what the worker does to each leased batch, decode on its 4 codec threads ->
``Runner.run`` (batches of 8) -> encode, in this process, after the stack is stopped (so the
cores are its own) and after one warm-up batch. R = 1 means the saga, the services, the API
server and the databases cost the worker nothing; on a CPU-only machine they share its cores,
so R also says how much CPU everything around the worker takes.

Also printed: apply-to-Delivered latency, CPU seconds by program while the jobs ran (from
/proc: the operator, each service, kube-apiserver, etcd, PostgreSQL, the
workers, this bench) and per job outside the worker, API writes per job (the API server's audit
log, Events included) and HTTP calls per job (the services' request counters, before and after).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aijobs_dev.testbed.stack import Stack

from aijobs.api.rules import TERMINAL_PHASES
from aijobs.api.v1alpha1 import GROUP, PLURAL, VERSION
from aijobs.kube import api_client
from bench._common import (
    api_writes_per_job,
    bench_stack,
    cpu_by_program,
    diff,
    http_requests,
    phases,
    photos,
    postmaster_pid,
    summary,
    worker_alone,
)

PIPELINE = "upscale-x2"
OUTSIDE_THE_WORKER = ("worker", "bench (this process)")


def job_body(name: str, image: bytes) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AIImageJob",
        "metadata": {"name": name},
        "spec": {
            "account": "bench",
            "pipeline": PIPELINE,
            "price": 1,
            "input": {"inline": {"contentType": "image/jpeg", "data": base64.b64encode(image).decode()}},
        },
    }


def wait_ended(
    api: k8s.ApiClient, namespace: str, names: set[str], timeout: float
) -> dict[str, dict[str, float]]:
    """phase -> name -> when the job was first seen in that phase, polling the API server's
    table of phases every 0.25 s, until every one of ``names`` has ended or ``timeout`` passes."""
    first_seen: dict[str, dict[str, float]] = {}
    ended: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(ended) < len(names) and time.monotonic() < deadline:
        seen = phases(api, namespace)
        now = time.perf_counter()
        for name in names - ended:
            phase = seen.get(name) or "New"
            first_seen.setdefault(phase, {}).setdefault(name, now)
            if phase in TERMINAL_PHASES:
                ended.add(name)
        time.sleep(0.25)
    return first_seen


def wait_workers_polling(stack: Stack, workers: int, timeout: float = 120.0) -> None:
    """Until every worker process has asked AI for work (torch imported, loop running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        polls = sum(v for k, v in http_requests(stack).items() if k.startswith("ai POST /v1/leases"))
        if polls >= 3 * workers:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the workers did not poll AI within {timeout:.0f}s; see {stack.logs}")


def end_to_end(args: argparse.Namespace, images: list[bytes]) -> dict[str, Any]:
    # Inputs, and results: a PNG of twice the side, about as big as its raw pixels for a photo.
    quota = 2 * (sum(len(i) for i in images) + len(images) * (2 * args.size) ** 2 * 3) + 10_000_000
    with bench_stack("bench-e2e-", workers=args.workers, quota_bytes=quota) as (plane, pg, stack):
        tenant = stack.tenant("bench", credits=len(images) + 10)
        api = api_client(plane.kubeconfig)
        custom = k8s.CustomObjectsApi(api)
        wait_workers_polling(stack, args.workers)
        custom.create_namespaced_custom_object(
            GROUP, VERSION, tenant.namespace, PLURAL, job_body("warm-up", images[0])
        )
        warm = wait_ended(api, tenant.namespace, {"warm-up"}, 300)
        if "warm-up" not in warm.get("Delivered", {}):
            raise RuntimeError(f"the warm-up job did not deliver: {warm.keys()} seen")
        names = [f"e2e-{i:05d}" for i in range(len(images))]
        roots = [postmaster_pid(pg.data)]

        def create(name_image: tuple[str, bytes]) -> float:
            sent = time.perf_counter()
            body = job_body(*name_image)
            custom.create_namespaced_custom_object(GROUP, VERSION, tenant.namespace, PLURAL, body)
            return sent

        cpu_before, http_before = cpu_by_program(roots), http_requests(stack)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            applied = dict(zip(names, pool.map(create, zip(names, images, strict=True)), strict=True))
        ended = wait_ended(api, tenant.namespace, set(names), 600 + 5.0 * len(names))
        cpu_after, http_after = cpu_by_program(roots), http_requests(stack)
        time.sleep(3)  # the auditor's verdicts land: they are API writes too
        writes, events = api_writes_per_job(plane.audit_log, set(names), tenant.namespace)
        delivered = ended.get("Delivered", {})
        if not delivered:
            raise RuntimeError(f"no job was delivered: {ended.keys()} seen")
        first = min(applied.values())
        reached = {  # phase -> (seconds from the first apply to the last job seen there, jobs seen)
            phase: (max(seen.values()) - first, len(seen)) for phase, seen in ended.items()
        }
        return {
            "delivered": len(delivered),
            "ended": sum(len(ended.get(p, {})) for p in TERMINAL_PHASES),
            "reached": reached,
            "seconds": max(delivered.values()) - first,
            "latencies": [delivered[n] - applied[n] for n in delivered],
            "writes": writes,
            "events": events,
            "cpu": diff(cpu_after, cpu_before),
            "http": diff(dict(http_after), dict(http_before)),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=120)
    parser.add_argument("--size", type=int, default=192, help="side of each photograph, px")
    parser.add_argument("--workers", type=int, default=1, help="worker processes in the stack")
    args = parser.parse_args()
    images = photos(args.jobs, args.size)
    n = len(images)
    e2e = end_to_end(args, images)
    alone_s, alone_cpu = worker_alone(images, PIPELINE)
    e2e_rate, alone_rate = e2e["delivered"] / e2e["seconds"], n / alone_s
    print(
        f"e2e ratio: {e2e_rate / alone_rate:.3f}  ({args.jobs} x {PIPELINE} of a {args.size}px JPEG "
        f"photograph, {sum(map(len, images)) // n} bytes on average; {args.workers} worker process(es), "
        f"{os.cpu_count()} cores)"
    )
    print(
        f"  end to end: {e2e['delivered']}/{n} delivered ({e2e['ended'] - e2e['delivered']} failed) "
        f"in {e2e['seconds']:.1f}s = {e2e_rate:.2f} images/s; "
        f"apply-to-Delivered {summary(e2e['latencies'])}"
    )
    stages = ", ".join(
        f"{p} {t:.1f}s ({k})" for p, (t, k) in sorted(e2e["reached"].items(), key=lambda kv: kv[1])
    )
    print(
        f"  last job first seen in each phase (jobs seen there, 0.25 s polls), from the first apply: {stages}"
    )
    print(
        "  worker alone (decode -> Runner.run, batched as the worker leases -> encode, in process): "
        f"{alone_s:.1f}s = {alone_rate:.2f} images/s, {1000 * alone_cpu / n:.0f} CPU-ms per image"
    )
    cpu: dict[str, float] = e2e["cpu"]
    outside = sum(v for k, v in cpu.items() if k not in OUTSIDE_THE_WORKER)
    total = sum(cpu.values())
    print(
        f"  CPU while the jobs ran: {total:.1f} CPU-s over {e2e['seconds']:.1f}s; outside the worker "
        f"(and the bench) {1000 * outside / n:.0f} ms per job; by program, ms per job:"
    )
    for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"    {1000 * seconds / n:8.1f}  {name}")
    print(
        f"  API writes per job (audit log, auditor and Events included): {e2e['writes'] + e2e['events']:.2f} "
        f"({e2e['writes']:.2f} object writes + {e2e['events']:.2f} Events)"
    )
    http: dict[str, float] = e2e["http"]
    print(f"  HTTP calls per job, all services: {sum(http.values()) / n:.2f}; by route:")
    for route, count in sorted(http.items(), key=lambda kv: -kv[1]):
        print(f"    {count / n:6.2f}  {route}")
    print(json.dumps({"e2e_ratio": round(e2e_rate / alone_rate, 4), "e2e_images_s": round(e2e_rate, 3),
                      "alone_images_s": round(alone_rate, 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
