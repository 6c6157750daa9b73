"""Shared pieces of the benchmark scripts: latency percentiles and a uniform report line; the
stack a bench runs on and what it reads of it from outside (CPU seconds by program, memory of a
process, API writes from the API server's audit log, HTTP calls from the services' metrics,
phases of the jobs as a cheap server-side table, the load average); crops of real photographs;
and the worker's own stages timed alone, the yardstick of the end-to-end ratios."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aijobs_dev.controlplane.cluster import ControlPlane
from aijobs_dev.testbed.postgres import PostgresCluster
from aijobs_dev.testbed.stack import SERVICES, Stack
from kubernetes import client as k8s

from aijobs.api.v1alpha1 import GROUP, PLURAL, VERSION
from aijobs.crds import install_crds
from aijobs.kube import api_client


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(samples_s: list[float]) -> str:
    ms = [s * 1000 for s in samples_s]
    return (
        f"p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms, "
        f"mean {statistics.fmean(ms) if ms else float('nan'):.1f} ms"
    )


# ------------------------------------------------------------------------------------- images
PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "stereo_motorcycle")


def photos(count: int, size: int, quality: int = 90) -> list[bytes]:
    """``count`` different ``size`` x ``size`` JPEGs cut from real photographs (scikit-image's
    colour samples, the ones bench/quality.py evaluates the upscaler on), each at its own seeded
    place: a photo's JPEG size and decode/encode costs, which a gradient or a flat test card
    would flatter. A photograph smaller than ``size`` is enlarged first."""
    from skimage import data  # the [dev] extra: benches and evaluation only

    sources = []
    for name in PHOTOGRAPHS:
        loaded = getattr(data, name)()
        pixels = loaded[0] if isinstance(loaded, tuple) else loaded  # a stereo pair: its left eye
        image = Image.fromarray(np.asarray(pixels, dtype=np.uint8)[..., :3])
        scale = max(1.0, size / min(image.size))
        if scale > 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)))
        sources.append(image)
    rng = np.random.default_rng(size)
    out = []
    for i in range(count):
        source = sources[i % len(sources)]
        x = int(rng.integers(0, source.width - size + 1))
        y = int(rng.integers(0, source.height - size + 1))
        buf = io.BytesIO()
        source.crop((x, y, x + size, y + size)).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


# ------------------------------------------------------------------------------------- the stack
@contextlib.contextmanager
def bench_stack(
    prefix: str,
    *,
    workers: int,
    quota_bytes: int,
    operator_env: dict[str, str] | None = None,
) -> Iterator[tuple[ControlPlane, PostgresCluster, Stack]]:
    """The stack of ``aijobs_dev.chaos.build_stack`` on a fresh control plane with the CRDs and
    one PostgreSQL: the five services reached directly (no fault proxy: what is deployed), one operator,
    ``workers`` CPU workers, the test-speed intervals of :class:`~aijobs_dev.testbed.stack.Stack`;
    Storage's per-account quota is the bench's (photos and their upscaled results outgrow
    build_stack's ~4 KB per job). All of it is stopped on the way out, a part-way start
    included; the run's files (Storage's volume, spools, logs) go too, unless the bench is
    failing: then the logs stay and their place is said."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    with contextlib.ExitStack() as cleanup:
        plane = ControlPlane(root / "cp")
        cleanup.callback(plane.stop)
        plane.start()
        pg = PostgresCluster()
        cleanup.callback(pg.stop)
        pg.start()
        install_crds(api_client(plane.kubeconfig))
        stack = Stack(
            root,
            plane.kubeconfig,
            lambda n: pg.create_database(f"{n}_{uuid.uuid4().hex[:6]}"),
            seed=1,
            # As deployed: no fault proxies in the way, and the services' own sweep interval.
            proxied=(),
            service_env={
                name: {
                    "AIJOBS_SWEEP_INTERVAL_SECONDS": "5",
                    **({"AIJOBS_ACCOUNT_QUOTA_BYTES": str(quota_bytes)} if name == "storage" else {}),
                }
                for name in ("auth", "payment", "storage", "ai", "main")
            },
            operator_env={  # the production intervals, not the test stack's quicker ones
                "AIJOBS_LEASE_NAME": "aijobs-bench",
                "AIJOBS_FOLLOW_INTERVAL_SECONDS": "1",
                "AIJOBS_AUDIT_INTERVAL_SECONDS": "30",
                **(operator_env or {}),
            },
            worker_env={"AIJOBS_LEASE_SECONDS": "30"},
        )
        cleanup.callback(stack.stop)
        stack.start_services()
        stack.start_operator()
        for _ in range(workers):
            stack.start_worker()
        try:
            yield plane, pg, stack
        except BaseException:
            print(f"the stack's logs: {stack.logs}", file=sys.stderr)
            raise
    shutil.rmtree(root, ignore_errors=True)


PROBES = ("/metrics", "/healthz", "/readyz", "/livez")
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def phases(api: k8s.ApiClient, namespace: str) -> dict[str, str]:
    """Each job's phase (name -> phase, "" before the operator's first write), read as the API
    server's table (the CRD's printer columns), so a poll of 10,000 jobs does not transfer
    10,000 inline images to the bench and back through the API server's encoder."""
    url = f"{api.configuration.host}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    response = api.call_api("GET", f"{url}?includeObject=None", header_params={"Accept": TABLE})
    table = json.loads(response.read())  # type: ignore[no-untyped-call]
    column = [c["name"] for c in table["columnDefinitions"]].index("Phase")
    return {row["cells"][0]: row["cells"][column] or "" for row in table.get("rows") or []}


# ------------------------------------------------------------------------------------- readings
def control_plane_pids(plane: ControlPlane) -> dict[str, int]:
    """kube-apiserver's and etcd's pids, from the state file the control plane keeps."""
    state = json.loads((plane.root / "state.json").read_text())
    return {"kube-apiserver": int(state["apiserver_pid"]), "etcd": int(state["etcd_pid"])}


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB: resident now, and the most it ever was."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found.get("VmRSS", float("nan")), found.get("VmHWM", float("nan"))


def postmaster_pid(data_dir: Path) -> int:
    """The PostgreSQL server's pid: ``pg_ctl`` detaches it, so it is not below the bench."""
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def _program(argv: list[str]) -> str:
    """A process's name for the report: ``service storage``, ``operator``, ``worker``,
    ``faultproxy``, ``kube-apiserver``, ``etcd``, ``postgres``."""
    if not argv:
        return "?"
    name = Path(argv[0]).name.split(":")[0]  # "postgres: …" backends go with their server
    if "-m" in argv:
        rest = argv[argv.index("-m") + 1 :]
        if rest[0] == "aijobs.cli":
            name = " ".join(w for w in rest[1:3] if not w.startswith("-"))
        else:
            name = rest[0].rsplit(".", 1)[-1]
    return name


def cpu_by_program(roots: Iterable[int] = ()) -> dict[str, float]:
    """CPU seconds (user + system) of every process below this one or below one of ``roots``,
    summed by program (see :func:`_program`); this process is ``bench (this process)``. A
    process that ended between two readings takes its seconds with it: read around a run whose
    processes live through it."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    stats: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = [w.decode(errors="replace") for w in (entry / "cmdline").read_bytes().split(b"\0") if w]
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        stats[pid] = (_program(argv), (int(fields[11]) + int(fields[12])) / ticks)
    me = os.getpid()
    tops = {me, *roots}
    out: dict[str, float] = {"bench (this process)": stats[me][1] if me in stats else 0.0}
    for pid, (name, cpu) in stats.items():
        p = pid
        while p not in tops and p in parents and p > 1:
            p = parents[p]
        if p in tops and pid != me:
            out[name] = out.get(name, 0.0) + cpu
    return out


def api_writes_per_job(audit_log: Path, names: set[str], namespace: str) -> tuple[float, float]:
    """(object writes, Events) per job, from the API server's audit log: patches and updates
    of the jobs, and Events created in their namespace (only the operator posts there)."""
    writes = events = 0
    for line in audit_log.read_text().splitlines():
        entry = json.loads(line)
        ref = entry.get("objectRef") or {}
        if entry.get("stage") != "ResponseComplete":
            continue
        if (
            ref.get("resource") == "aiimagejobs"
            and ref.get("name") in names
            and entry["verb"] in ("patch", "update")
        ):
            writes += 1
        elif (
            ref.get("resource") == "events"
            and ref.get("namespace") == namespace
            and entry["verb"] == "create"
        ):
            events += 1
    return writes / max(1, len(names)), events / max(1, len(names))


def http_requests(stack: Stack) -> Counter[str]:
    """Requests each service has answered (its ``aijobs_http_requests_total``), by service,
    method and route, less the probes and the scrapes themselves. Read before and after a run."""
    counts: Counter[str] = Counter()
    for name in SERVICES:
        text = httpx.get(f"{stack.services[name].url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                route = sample.labels.get("route", "?")
                if sample.name != "aijobs_http_requests_total" or route in PROBES:
                    continue
                counts[f"{name} {sample.labels.get('method')} {route}"] += int(sample.value)
    return counts


def diff(after: dict[str, Any], before: dict[str, Any]) -> dict[str, float]:
    """What each key gained between two readings."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def job_writes(audit_log: Path, name: str, namespace: str) -> Counter[str]:
    """One job's API writes from the API server's audit log, by kind: ``patch``/``update`` of
    the object itself (a finalizer, labels), of its ``status``, and ``event create`` for the
    Events posted in its namespace (a bench's namespace holds that job alone, and only the
    operator posts Events there). The user's own create is not the system's write: left out."""
    counts: Counter[str] = Counter()
    for line in audit_log.read_text().splitlines():
        entry = json.loads(line)
        ref = entry.get("objectRef") or {}
        if entry.get("stage") != "ResponseComplete" or ref.get("namespace") != namespace:
            continue
        if (
            ref.get("resource") == "aiimagejobs"
            and ref.get("name") == name
            and entry["verb"] in ("patch", "update")
        ):
            counts[f"{entry['verb']} {ref.get('subresource') or 'object'}"] += 1
        elif ref.get("resource") == "events" and entry["verb"] == "create":
            counts["event create"] += 1
    return counts


# ------------------------------------------------------------------------------------- the worker alone
def worker_alone(images: list[bytes], pipeline: str) -> tuple[float, float]:
    """(seconds, CPU seconds) for ``images`` through the worker's own stages, in this process:
    decode on a 4-thread pool, ``Runner.run``, encode on the pool, in runs of neighbours as the
    worker's ``_gather`` and ``_infer_and_spool`` do between fetch and upload, on batches sized
    as the worker sizes its leases (:class:`~aijobs_worker.sizing.LeaseSizer`, fed the same
    stages' timings: ~7 for upscale-x2 on this project's CPU, its most for grayscale); after one
    warm-up batch (the model loads, the allocator warms up)."""
    import torch
    from aijobs_worker import codec
    from aijobs_worker.config import WorkerSettings
    from aijobs_worker.runner import Item, Runner, pick_device
    from aijobs_worker.sizing import FIRST_LEASE, LeaseSizer

    cfg = WorkerSettings(device="cpu")
    runner = Runner(pick_device(cfg.device), None, cfg.max_batch)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=codec.THREADS, thread_name_prefix="codec")
    sizer = LeaseSizer(cfg.max_tasks, cfg.lease_work_seconds)

    def one_lease(batch: list[bytes]) -> None:
        items = []
        for run in pool.map(codec.decode_each, codec.runs(batch)):
            for image in run:
                if isinstance(image, codec.BadImage):
                    raise RuntimeError(f"an image the bench made does not decode: {image}")
                items.append(Item(f"t{len(items)}", pipeline, {}, image))
        t0 = time.perf_counter()
        runner.run(items)
        outputs: list[torch.Tensor] = []
        for item in items:
            if item.output is None:
                raise RuntimeError(f"the runner failed an image: {item.error}")
            outputs.append(item.output)
        list(pool.map(codec.encode_each, codec.runs(outputs)))
        sizer.observe(time.perf_counter() - t0, len(items))  # what the worker's loop times

    one_lease(images[:FIRST_LEASE])
    started, cpu = time.perf_counter(), time.process_time()
    start = 0
    while start < len(images):
        size = sizer.size()
        one_lease(images[start : start + size])
        start += size
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    pool.shutdown()
    return seconds, cpu_seconds


def machine_cpu() -> dict[str, float]:
    """The whole machine's CPU seconds so far by state, from ``/proc/stat`` (all cores summed):
    ``busy`` (user, nice, system, irq, softirq: kernel threads and interrupts included, which no
    process's own counters show), ``idle``, ``iowait`` and ``steal`` (taken by the host)."""
    ticks = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(v) / ticks for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return {"busy": user + nice + system + irq + softirq, "idle": idle, "iowait": iowait, "steal": steal}


def load_average() -> str:
    """The machine's 1/5/15-minute load averages, quoted with every figure of a shared machine."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"
