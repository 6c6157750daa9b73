"""GPU workers that follow the queue, live: KEDA (built here from the Go module proxy, run as
pods the way its own manifests install it) scales the chart's worker Deployment on the AI
queue's depth. Idle, no worker runs; jobs pile up and KEDA asks for as many workers as the
queue needs; the queue drains, every job is Delivered and charged once; after the cooldown the
workers are gone again.

Two deciders are proven, not one: KEDA's operator takes the workers from zero to one (and back),
and above one the HPA that KEDA made reads the queue's demand through the
``external.metrics.k8s.io`` APIService (KEDA's metrics adapter, reached through the node's API
server's aggregation layer: its front-proxy flags are in
:mod:`aijobs_dev.controlplane.cluster`). The test asks for the maximum, three workers for six
tasks at two per worker, and gets it without a race against a fast worker: while the jobs pile
up, the node is not yet labelled for workers (the label the values' ``nodeSelector`` asks for,
as a GPU node pool still coming up), so no worker can take a task and the demand stays at six
until the HPA has answered; then the label comes and the workers run.

A node of its own (module-scoped), started after ``test_cluster.py``'s has stopped. Needs root
and Docker, like the other cluster tests (``scripts/ensure-docker``); run it under the cluster
lock: ``flock /tmp/aijobs-cluster.lock .venv/bin/pytest tests/cluster/test_autoscaling.py``.
KEDA's two binaries are built once into the tools cache (``make tools`` does it ahead).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from aijobs_dev.controlplane.node import NODE_NAME

from tests.cluster.test_cluster import _charged_once, _job

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.controlplane,  # the node's API server is started in this process
    pytest.mark.skipif(os.geteuid() != 0, reason="a node runs containers: needs root"),
]

NS = "team-a"
JOBS = 6
MAX_WORKERS = 3  # JOBS / tasksPerWorker: what the HPA asks for while nothing is taken
COOLDOWN = 20  # seconds with an empty queue before the last worker stops
GPU_READY = "aijobs.test/gpu-ready"  # the node label the workers wait for
AUTOSCALING = {
    "worker": {
        "nodeSelector": {GPU_READY: "yes"},
        "autoscaling": {
            "enabled": True,
            "minReplicas": 0,
            "maxReplicas": MAX_WORKERS,
            "tasksPerWorker": 2,
            "pollingInterval": 5,
            "cooldownPeriod": COOLDOWN,
        },
    }
}


def _until(check: Any, what: str, timeout: float, node: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"no {what} after {timeout:.0f}s" + (_autoscaler_state(node) if node else ""))


def _autoscaler_state(node: Any) -> str:
    """What KEDA and its HPA last said, for a failure's message: their conditions, the
    APIService's, and KEDA's operator's last errors."""
    lines = []
    for kind, ns, name in (
        ("scaledobject", "aijobs-system", "aijobs-worker"),
        ("hpa", "aijobs-system", "keda-hpa-aijobs-worker"),
        ("apiservice", None, "v1beta1.external.metrics.k8s.io"),
    ):
        where = ["-n", ns] if ns else []
        found = node.kubectl("get", kind, *where, name, "-o", "json", check=False)
        status = yaml.safe_load(found.stdout).get("status", {}) if found.returncode == 0 else {}
        conditions = [
            f"{c['type']}={c['status']} {c.get('message', '')[:160]}" for c in status.get("conditions", [])
        ]
        lines.append(f"{kind}: {conditions or found.stderr.strip()}")
    logs = node.kubectl("logs", "-n", "keda", "deploy/keda-operator", "--tail=200", check=False).stdout
    lines += [line[:400] for line in logs.splitlines() if "ERROR" in line][-5:]
    return "\n" + "\n".join(lines)


def _available(obj: dict[str, Any]) -> bool:
    conditions = obj.get("status", {}).get("conditions", [])
    return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from aijobs_dev.clusterdemo import ChartOnNode
    from aijobs_dev.controlplane import keda
    from aijobs_dev.controlplane.assets import ensure_node_assets

    demo = ChartOnNode(tmp_path_factory.mktemp("autoscaling") / "cluster")
    demo.prepare()
    image = keda.ensure_keda_image()
    install = keda.keda_manifests(keda.render_minimal(keda.keda_module(), ensure_node_assets() / "kubectl"))
    values = tmp_path_factory.mktemp("values") / "autoscaling.yaml"
    values.write_text(yaml.safe_dump(AUTOSCALING))
    try:
        demo.start()
        demo.kubectl("label", "node", NODE_NAME, f"{GPU_READY}=yes")
        demo.cluster.load_image(image)
        # Server-side: KEDA's CRDs are too large for kubectl's last-applied annotation.
        demo.cluster.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(install))
        for name in ("keda-operator", "keda-metrics-apiserver"):
            _until(lambda n=name: _available(demo.get("deployment", "-n", keda.NAMESPACE, n)), f"{name}", 300)
        demo.install("-f", str(values))
        demo.wait_pods_ready()
        demo.tenant("acme", NS, 1000)
        yield demo
    finally:
        demo.cluster.stop()


def _workers(node: Any) -> list[str]:
    """Worker pods that exist and are not on their way out."""
    pods = node.get("pods", "-n", "aijobs-system", "-l", "app.kubernetes.io/component=worker")["items"]
    return [p["metadata"]["name"] for p in pods if p["metadata"].get("deletionTimestamp") is None]


def _replicas(node: Any) -> int:
    return int(node.get("deployment", "-n", "aijobs-system", "aijobs-worker")["spec"].get("replicas", 1))


def test_workers_follow_the_queue_up_to_the_maximum_and_back_to_zero(node: Any) -> None:
    # Idle: KEDA has taken the workers to zero (the Deployment is created with one).
    _until(lambda: _replicas(node) == 0 and not _workers(node), "zero workers while idle", 300, node)

    # The workers' node is not ready for them yet: tasks wait in the queue, none is taken.
    node.kubectl("label", "node", NODE_NAME, f"{GPU_READY}-")
    names = [f"burst-{i}" for i in range(JOBS)]
    for name in names:
        node.apply(_job(name), NS)
    # KEDA wakes the workers (0 -> 1); its HPA reads the demand, six, through the external
    # metrics API and asks for six over two per worker.
    _until(lambda: _replicas(node) == MAX_WORKERS, f"{MAX_WORKERS} workers asked for", 300, node)
    hpa = node.get("hpa", "-n", "aijobs-system", "keda-hpa-aijobs-worker")
    assert hpa["status"]["desiredReplicas"] == MAX_WORKERS, hpa["status"]

    node.kubectl("label", "node", NODE_NAME, f"{GPU_READY}=yes")
    seen: set[str] = set()

    def all_finished() -> bool:
        seen.update(_workers(node))
        phases = [node.get("aij", "-n", NS, n).get("status", {}).get("phase") for n in names]
        return all(p in {"Delivered", "Failed"} for p in phases)

    _until(all_finished, f"{JOBS} jobs finished", 600, node)
    for name in names:
        job = node.get("aij", "-n", NS, name)
        assert job["status"]["phase"] == "Delivered", job["status"]
        _charged_once(node, job)
        assert node.tasks(job["metadata"]["uid"])[0]["state"] == "succeeded"

    # Drained: after the cooldown KEDA takes the workers back to zero.
    _until(
        lambda: _replicas(node) == 0 and not _workers(node),
        "zero workers after the queue drained",
        COOLDOWN + 300,
        node,
    )
    print(f"workers: 0 -> {MAX_WORKERS} (pods {sorted(seen)}) -> 0")


def test_keda_reads_the_queue_depth_and_sees_it_empty_after_the_burst(node: Any) -> None:
    """The ScaledObject's scaler works (Ready) and, the queue drained, reports it inactive."""
    scaled = node.get("scaledobject", "-n", "aijobs-system", "aijobs-worker")
    conditions = {c["type"]: c["status"] for c in scaled["status"]["conditions"]}
    assert conditions["Ready"] == "True", scaled["status"]
    assert conditions["Active"] == "False", scaled["status"]
    assert scaled["status"]["scaleTargetKind"] == "apps/v1.Deployment"
