"""GPU workers that follow the queue, live: KEDA (built here from the Go module proxy, run as
pods the way its own manifests install it) scales the chart's worker Deployment on the AI
queue's depth. Idle, no worker runs; jobs arrive and workers start; the queue drains, every job
is Delivered and charged once; after the cooldown the workers are gone again.

KEDA itself takes the workers from zero to one and back; above one, the HPA it makes reads
the queue depth through the ``external.metrics.k8s.io`` APIService, which this node's API server
(no aggregation-layer flags) reports unavailable, so the test asks for one worker or more, not
for a count.

A node of its own (module-scoped), started after ``test_cluster.py``'s has stopped. Needs root
and Docker, like the other cluster tests (``scripts/ensure-docker``); run it under the cluster
lock: ``flock /tmp/aijobs-cluster.lock .venv/bin/pytest tests/cluster/test_autoscaling.py``.

Not part of ``make test`` yet: opt in with ``AIJOBS_KEDA_TEST=1``. It passed one run in three
here: in the others KEDA's operator got 404 from the queue-depth route that answered 200 from
the node and from inside the AI pod, and the external-metrics APIService came and went (the
node's API server lacks the aggregation layer's front-proxy flags). A test that passes by luck
would make CI's verdict luck too; and KEDA's adapter takes ~30 minutes to build on 2 cores."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.cluster.test_cluster import _charged_once, _job

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(os.geteuid() != 0, reason="a node runs containers: needs root"),
    pytest.mark.skipif(
        os.environ.get("AIJOBS_KEDA_TEST") != "1",
        reason="KEDA's live proof is not reliable on this node yet (see the module's docstring): "
        "AIJOBS_KEDA_TEST=1 runs it",
    ),
]

NS = "team-a"
JOBS = 6
COOLDOWN = 20  # seconds with an empty queue before the last worker stops
AUTOSCALING = {
    "worker": {
        "autoscaling": {
            "enabled": True,
            "minReplicas": 0,
            "maxReplicas": 3,
            "tasksPerWorker": 2,
            "pollingInterval": 5,
            "cooldownPeriod": COOLDOWN,
        }
    }
}


def _until(check: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"no {what} after {timeout:.0f}s")


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


def test_workers_start_when_jobs_arrive_and_stop_when_the_queue_is_empty(node: Any) -> None:
    # Idle: KEDA has taken the workers to zero (the Deployment is created with one).
    _until(lambda: _replicas(node) == 0 and not _workers(node), "zero workers while idle", 300)

    names = [f"burst-{i}" for i in range(JOBS)]
    for name in names:
        node.apply(_job(name), NS)

    seen: set[str] = set()
    peak = 0

    def all_finished() -> bool:
        nonlocal peak
        workers = _workers(node)
        seen.update(workers)
        peak = max(peak, _replicas(node))
        phases = [node.get("aij", "-n", NS, n).get("status", {}).get("phase") for n in names]
        return all(p in {"Delivered", "Failed"} for p in phases)

    _until(all_finished, f"{JOBS} jobs finished", 600)
    assert seen and peak >= 1, "no worker ever started: the jobs were run by nothing KEDA scaled"
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
    )
    print(f"workers: 0 -> {peak} (pods {sorted(seen)}) -> 0")


def test_keda_reads_the_queue_depth_and_sees_it_empty_after_the_burst(node: Any) -> None:
    """The ScaledObject's scaler works (Ready) and, the queue drained, reports it inactive."""
    scaled = node.get("scaledobject", "-n", "aijobs-system", "aijobs-worker")
    conditions = {c["type"]: c["status"] for c in scaled["status"]["conditions"]}
    assert conditions["Ready"] == "True", scaled["status"]
    assert conditions["Active"] == "False", scaled["status"]
    assert scaled["status"]["scaleTargetKind"] == "apps/v1.Deployment"
