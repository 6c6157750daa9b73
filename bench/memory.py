"""bench/memory: the operator's memory with many jobs in flight, all held Scheduled, and what of
it each job costs.

    .venv/bin/python bench/memory.py --jobs 10000 [--step 1000] [--size 192] [--timeout 3000]
        [--operator-env AIJOBS_MALLOC_TRIM_SECONDS=0 --operator-env AIJOBS_MALLOC_ARENAS=0]

The stack of bench/saga.py with no worker: every job is charged, uploaded and scheduled, then
waits on a task that nobody leases, which is how jobs pile up in front of busy GPUs. Each job
carries a ``--size`` px JPEG photograph inline and a deadline six hours away (so none expires
during the run). Jobs are applied in waves of ``--step`` by 16 client threads; after each wave
the bench polls the API server's table of phases until every job applied so far is Scheduled,
then reads VmRSS and VmHWM (/proc) of the operator, kube-apiserver and etcd. The operator
follows tasks at its production interval (1 s; the test stack's 0.2 s would measure the AI
service answering 10,000-job queries five times a second instead).

Printed: one line per wave, the figures at the last wave, the operator's growth per 1,000 jobs
(least squares over the waves), and where a job's share goes: the reconciler's cache entry for
one job (a real body as the watch delivers it, through the operator's own ``slim``, measured
with tracemalloc in this process) split by part, and the AI task the follower keeps for it.
Stopped by ``--timeout`` first, it reports the largest number of Scheduled jobs it reached.
``--operator-env`` sets the operator's environment: the two above measure it without the upkeep
of :mod:`aijobs_operator.memory` (glibc's arenas capped, free heap pages trimmed), and
``AIJOBS_TRACEMALLOC=FILE`` has it write what Python and malloc hold, line by line.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import datetime as dt
import json
import signal
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aijobs_dev.testbed.stack import Stack

from aijobs.api.v1alpha1 import GROUP, PLURAL, VERSION
from aijobs.kube import api_client
from bench._common import bench_stack, control_plane_pids, memory_mib, phases, photos

SAMPLE = 200  # jobs read back whole for the per-job estimate


def deep_size(value: Any) -> int:
    """Bytes of a JSON-like value and everything it holds (dicts, lists, strings, numbers)."""
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        size += sum(deep_size(k) + deep_size(v) for k, v in value.items())
    elif isinstance(value, list):
        size += sum(deep_size(v) for v in value)
    return size


def parts(body: dict[str, Any]) -> dict[str, int]:
    """Deep sizes of a cached body's parts, the inline image apart from the rest of the spec."""
    spec = dict(body.get("spec") or {})
    inline = ((spec.get("input") or {}).get("inline") or {}).get("data", "")
    status = dict(body.get("status") or {})
    out = {"metadata": deep_size(body.get("metadata") or {})}
    out["spec.input.inline.data (the image, base64)"] = deep_size(inline)
    out["spec, the rest"] = deep_size(spec) - deep_size(inline)
    for key in sorted(status, key=lambda k: -deep_size(status[k])):
        out[f"status.{key}"] = deep_size(status[key])
    out["the body's own dicts"] = sys.getsizeof(body) + sum(sys.getsizeof(k) for k in body)
    return out


def per_job_estimate(api: k8s.ApiClient, stack: Stack, namespace: str) -> float:
    """What the operator keeps for one Scheduled job, measured here on real bodies: the cache
    entry (:func:`aijobs_operator.engine.slim` of the body the watch hands over) and the AI task
    the follower keeps (:func:`aijobs_operator.engine._slim_task`); returns their bytes."""
    from aijobs_operator.engine import _slim_task, slim

    from aijobs.api.ai import TaskList

    url = f"{api.configuration.host}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}?limit={SAMPLE}"
    listing = json.loads(api.call_api("GET", url).read())  # type: ignore[no-untyped-call]
    raw = [json.dumps(item) for item in listing["items"]]
    uids = [json.loads(r)["metadata"]["uid"] for r in raw]
    tasks_json = json.dumps(stack.call("ai", "POST", "/v1/tasks/query", {"jobIds": uids}))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache = {i: slim(json.loads(r)) for i, r in enumerate(raw)}  # only the slimmed copies stay
    entry = (tracemalloc.get_traced_memory()[0] - before) / len(raw)
    before = tracemalloc.get_traced_memory()[0]
    tasks = [_slim_task(t) for t in TaskList.model_validate_json(tasks_json).items]
    task = (tracemalloc.get_traced_memory()[0] - before) / max(1, len(tasks))
    tracemalloc.stop()
    whole = sum(len(r) for r in raw) / len(raw)
    print(
        f"per job, from {len(raw)} real Scheduled bodies (tracemalloc in this process): the cache "
        f"entry {entry / 1024:.1f} KiB (the body as JSON on the wire: {whole / 1024:.1f} KiB), the "
        f"follower's task {task / 1024:.2f} KiB; the cache entry by part (deep sizes, mean):"
    )
    shares: Counter[str] = Counter()
    for body in cache.values():
        shares.update(parts(body))
    for name, size in shares.most_common():
        print(f"  {size / len(cache) / 1024:8.2f} KiB  {name}")
    return entry + task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--step", type=int, default=1_000, help="jobs applied per wave")
    parser.add_argument("--size", type=int, default=192, help="side of each job's photograph, px")
    parser.add_argument("--timeout", type=float, default=3000, help="seconds, then report what was reached")
    parser.add_argument(
        "--operator-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set in the operator's environment (AIJOBS_MALLOC_TRIM_SECONDS=0: no trimming)",
    )
    args = parser.parse_args()
    # Stopped (a bench started in the background ignores ^C), it still stops the stack it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))
    images = [base64.b64encode(i).decode() for i in photos(60, args.size)]
    quota = args.jobs * max(map(len, images)) + 10_000_000
    operator_env = {"AIJOBS_FOLLOW_INTERVAL_SECONDS": "1"}
    operator_env.update(pair.split("=", 1) for pair in args.operator_env)
    with bench_stack("bench-memory-", workers=0, quota_bytes=quota, operator_env=operator_env) as (
        plane,
        _,
        stack,
    ):
        tenant = stack.tenant("bench", credits=args.jobs + 10)
        api = api_client(plane.kubeconfig)
        custom = k8s.CustomObjectsApi(api)
        deadline_at = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
        operator = stack.operators[-1]
        assert operator.proc is not None
        pids = {"operator": operator.proc.pid, **control_plane_pids(plane)}

        def create(i: int) -> None:
            body: dict[str, Any] = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "AIImageJob",
                "metadata": {"name": f"m-{i:05d}"},
                "spec": {
                    "account": "bench",
                    "pipeline": "upscale-x2",
                    "price": 1,
                    "deadline": deadline_at,
                    "input": {"inline": {"contentType": "image/jpeg", "data": images[i % len(images)]}},
                },
            }
            custom.create_namespaced_custom_object(GROUP, VERSION, tenant.namespace, PLURAL, body)

        idle = {name: memory_mib(pid) for name, pid in pids.items()}
        print(
            f"idle, no job: operator {idle['operator'][0]:.0f} MiB, kube-apiserver "
            f"{idle['kube-apiserver'][0]:.0f} MiB, etcd {idle['etcd'][0]:.0f} MiB (VmRSS)",
            flush=True,
        )
        print(" jobs  seconds  operator RSS/HWM MiB  kube-apiserver MiB  etcd MiB  other phases", flush=True)
        started = time.monotonic()
        waves: list[tuple[int, float]] = [(0, idle["operator"][0])]
        reached, last = 0, idle
        pool = concurrent.futures.ThreadPoolExecutor(16)
        timed_out = False
        for wave_end in range(args.step, args.jobs + args.step, args.step):
            wave_end = min(wave_end, args.jobs)
            list(pool.map(create, range(reached, wave_end)))
            while True:
                counts = Counter(phases(api, tenant.namespace).values())
                settled = counts["Scheduled"] + counts["Failed"]  # a failed job is said, not awaited
                if settled >= wave_end or time.monotonic() - started > args.timeout:
                    break
                if operator.proc.poll() is not None:  # its log goes with the stack: show its end
                    tail = (operator.log_dir / f"{operator.name}.log").read_text().splitlines()[-20:]
                    sys.exit("\n".join([f"the operator exited ({operator.proc.returncode}):", *tail]))
                time.sleep(2.0)
            timed_out = counts["Scheduled"] + counts["Failed"] < wave_end
            reached = counts["Scheduled"]
            last = {name: memory_mib(pid) for name, pid in pids.items()}
            waves.append((reached, last["operator"][0]))
            others = {k: v for k, v in counts.items() if k != "Scheduled"}
            print(
                f"{reached:5d}  {time.monotonic() - started:7.0f}  {last['operator'][0]:8.0f} / "
                f"{last['operator'][1]:<8.0f}  {last['kube-apiserver'][0]:18.0f}  {last['etcd'][0]:8.0f}  "
                f"{others or ''}",
                flush=True,
            )
            if timed_out:
                break
            reached = wave_end
        pool.shutdown()
        elapsed = time.monotonic() - started
        fitted = waves[1:] if len(waves) > 2 else waves  # the first jobs also warm the code up
        xs, ys = [w[0] for w in fitted], [w[1] for w in fitted]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        spread = sum((x - mean_x) ** 2 for x in xs) or 1.0
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
        label = f"{reached} Scheduled" + (
            f" (of {args.jobs}: --timeout {args.timeout:.0f}s reached)" if timed_out else ""
        )
        print(
            f"memory: operator at {label}: VmRSS {last['operator'][0]:.0f} MiB, "
            f"VmHWM {last['operator'][1]:.0f} MiB; "
            f"kube-apiserver {last['kube-apiserver'][0]:.0f} MiB, etcd {last['etcd'][0]:.0f} MiB (VmRSS); "
            f"reached in {elapsed:.0f}s"
        )
        print(
            f"  operator growth: {slope * 1000:.0f} MiB per 1,000 jobs Scheduled "
            f"({slope * 1024:.1f} KiB per job; "
            f"least squares over the {len(fitted)} waves), {args.size}px JPEG inline"
        )
        kept = per_job_estimate(api, stack, tenant.namespace)
        print(
            f"  the cache entry and the task make {100 * kept / max(1e-9, slope * 2**20):.0f}% of the "
            f"operator's growth per job; the rest is elsewhere (kopf's per-object state, the allocator)"
        )


if __name__ == "__main__":
    main()
