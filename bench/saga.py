"""bench/saga: N jobs applied at once, driven to Delivered by the operator, on the real API
server, with an instant pipeline (grayscale on a tiny image) so the saga itself is measured.

    .venv/bin/python bench/saga.py --jobs 100 [--jobs 1000] [--workers 2]

Prints jobs/s to Delivered, p50/p99 apply-to-Delivered latency, API writes per job (from the API
server's audit log), the operator's peak RSS, and the ceiling: raw status patches/s that a plain
client achieves against the same API server.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aijobs_dev.chaos import build_stack
from aijobs_dev.controlplane.cluster import ControlPlane
from aijobs_dev.testbed.postgres import PostgresCluster

from aijobs.api.rules import TERMINAL_PHASES
from aijobs.api.v1alpha1 import GROUP, PLURAL, VERSION
from aijobs.crds import install_crds
from aijobs.kube import api_client
from bench._common import api_writes_per_job, cpu_by_program, memory_mib, postmaster_pid, summary


def _tiny_png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 200)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _ceiling(custom: k8s.CustomObjectsApi, namespace: str, names: list[str]) -> float:
    def patch(name: str) -> None:
        custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": {"message": "ceiling"}},
            _content_type="application/merge-patch+json",
        )

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(patch, names))
    return len(names) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-saga-"))
    plane = ControlPlane(root / "cp")
    plane.start()
    pg = PostgresCluster()
    pg.start()
    install_crds(api_client(plane.kubeconfig))
    stack = build_stack(
        root,
        plane.kubeconfig,
        lambda n: pg.create_database(f"{n}_{uuid.uuid4().hex[:6]}"),
        seed=1,
        workers=args.workers,
        jobs=args.jobs,  # Storage's per-account quota grows with the run
    )
    try:
        tenant = stack.tenant("bench", credits=args.jobs * 10)
        custom = k8s.CustomObjectsApi(api_client(plane.kubeconfig))
        data = _tiny_png()
        names = [f"b-{i:05d}" for i in range(args.jobs)]

        def create(name: str) -> float:
            body: dict[str, Any] = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "AIImageJob",
                "metadata": {"name": name},
                "spec": {
                    "account": "bench",
                    "pipeline": "grayscale",
                    "price": 1,
                    "input": {"inline": {"contentType": "image/png", "data": data}},
                },
            }
            custom.create_namespaced_custom_object(GROUP, VERSION, tenant.namespace, PLURAL, body)
            return time.perf_counter()

        roots = [postmaster_pid(pg.data)]  # PostgreSQL is detached by pg_ctl: counted as a root
        cpu_before = cpu_by_program(roots)
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            applied = dict(zip(names, pool.map(create, names), strict=True))
        delivered: dict[str, float] = {}
        deadline = time.monotonic() + 600 + args.jobs * 0.5
        while len(delivered) < len(names) and time.monotonic() < deadline:
            listing: Any = custom.list_namespaced_custom_object(GROUP, VERSION, tenant.namespace, PLURAL)
            now = time.perf_counter()
            for job in listing["items"]:
                phase = (job.get("status") or {}).get("phase")
                if phase in TERMINAL_PHASES and job["metadata"]["name"] not in delivered:
                    delivered[job["metadata"]["name"]] = now
            time.sleep(0.25 if args.jobs <= 1000 else 2.0)  # listing 10,000 jobs costs CPU too
        elapsed = max(delivered.values()) - started
        cpu_after = cpu_by_program(roots)
        latencies = [delivered[n] - applied[n] for n in delivered]
        operator = stack.operators[-1]
        assert operator.proc is not None
        rss = memory_mib(operator.proc.pid)[1]
        time.sleep(3)  # let the auditor's verdicts land: they are writes too
        writes, events = api_writes_per_job(plane.audit_log, set(names), tenant.namespace)
        ceiling = _ceiling(custom, tenant.namespace, names)
        rate = len(delivered) / elapsed
        print(
            f"saga: {len(delivered)}/{args.jobs} jobs ended in {elapsed:.1f}s = {rate:.1f} jobs/s; "
            f"apply-to-Delivered {summary(latencies)}"
        )
        print(
            f"  API writes per job (audit log, auditor and Events included): {writes + events:.2f} "
            f"({writes:.2f} object writes + {events:.2f} Events); operator peak RSS {rss:.0f} MiB"
        )
        print(
            f"  ceiling: a plain client patches status at {ceiling:.0f}/s on the same API server "
            f"({ceiling / max(writes + events, 1):.0f} jobs/s at this many writes per job); "
            f"ratio {rate / ceiling:.3f}"
        )
        print(f"  {args.workers} CPU workers; balance after: {stack.balance('bench')}")
        spent = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_after.items()}
        total = sum(spent.values())
        print(
            f"  CPU per job, all processes: {1000 * total / len(delivered):.0f} ms "
            f"({total:.1f} CPU-s over {elapsed:.1f} s on {os.cpu_count()} cores = "
            f"{100 * total / elapsed / (os.cpu_count() or 1):.0f}% busy); by program:"
        )
        for name, cpu in sorted(spent.items(), key=lambda kv: -kv[1])[:14]:
            print(f"    {1000 * cpu / len(delivered):7.1f} ms  {name}")
    finally:
        stack.stop()
        plane.stop()
        pg.stop()


if __name__ == "__main__":
    main()
