"""The chart as platform teams run it: images built here, a real node (kubelet, containerd, CNI,
kube-proxy, CoreDNS), ``helm install`` with the bundled PostgreSQL, jobs applied with kubectl
and carried out by the operator and the worker running as pods.

The tests share one node and one release and run in file order (the last uninstalls). Needs
root (a node runs containers) and Debian's docker.io/containerd (``scripts/ensure-docker``)."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.controlplane,  # the node's API server is started in this process
    pytest.mark.skipif(os.geteuid() != 0, reason="a node runs containers: needs root"),
]

NS = "team-a"
INLINE_PNG = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "examples" / "upscale-inline.yaml").read_text()
)["spec"]["input"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from aijobs_dev.clusterdemo import ChartOnNode

    demo = ChartOnNode(tmp_path_factory.mktemp("node") / "cluster")
    demo.prepare()
    try:
        demo.start()
        demo.install()
        demo.wait_pods_ready()
        demo.tenant("acme", NS, 1000)
        yield demo
    finally:
        demo.cluster.stop()


def _job(name: str, *, pipeline: str = "resize") -> dict[str, Any]:
    spec: dict[str, Any] = {"account": "acme", "pipeline": pipeline, "price": 5, "input": INLINE_PNG}
    if pipeline == "resize":
        spec["parameters"] = {"width": 8, "height": 8}
    return {
        "apiVersion": "aijobs.io/v1alpha1",
        "kind": "AIImageJob",
        "metadata": {"name": name},
        "spec": spec,
    }


def _pods(node: Any, component: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/component={component}"
    items: list[dict[str, Any]] = node.get("pods", "-n", "aijobs-system", "-l", selector)["items"]
    return [p for p in items if p["metadata"].get("deletionTimestamp") is None]


@contextlib.contextmanager
def _no_workers(node: Any) -> Iterator[None]:
    """No GPU worker runs inside the block: a job stops at Scheduled (charged, uploaded,
    scheduled; mid-saga) for as long as the block lasts, on a fast machine or a slow one."""
    node.kubectl("scale", "deployment", "-n", "aijobs-system", "aijobs-worker", "--replicas=0")
    deadline = time.monotonic() + 120
    while node.get("pods", "-n", "aijobs-system", "-l", "app.kubernetes.io/component=worker")["items"]:
        assert time.monotonic() < deadline, "the worker pod did not go away"
        time.sleep(1)
    try:
        yield
    finally:
        node.kubectl("scale", "deployment", "-n", "aijobs-system", "aijobs-worker", "--replicas=1")


def _charged_once(node: Any, job: dict[str, Any]) -> None:
    """Exactly one captured hold for the price, and exactly one task at AI."""
    uid = job["metadata"]["uid"]
    charges = node.charges(uid)
    assert charges["charged"] == job["spec"]["price"], charges
    assert [h["state"] for h in charges["holds"]].count("captured") == 1, charges
    assert len(node.tasks(uid)) == 1


def test_every_pod_is_ready_and_hardened(node: Any) -> None:
    pods = node.wait_pods_ready()
    components = {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods}
    assert components == {"operator", "auth", "payment", "storage", "ai", "main", "worker", "postgresql"}
    for pod in pods:
        security = pod["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001, pod["metadata"]["name"]
        for container in pod["spec"]["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # Running, not crash-looping: nothing restarted on its way up.
    restarts = {
        p["metadata"]["name"]: s["restartCount"] for p in pods for s in p["status"]["containerStatuses"]
    }
    assert set(restarts.values()) == {0}, restarts


def test_helm_test_passes(node: Any) -> None:
    out = node.helm("test", "aijobs", "-n", "aijobs-system").stdout
    assert "Phase:          Succeeded" in out, out


def test_a_job_applied_with_kubectl_is_delivered_by_pods(node: Any) -> None:
    node.apply(_job("first", pipeline="upscale-x2"), NS)
    job = node.wait_phase(NS, "first", {"Delivered", "Failed"})
    assert job["status"]["phase"] == "Delivered", job["status"]
    _charged_once(node, job)
    assert node.tasks(job["metadata"]["uid"])[0]["state"] == "succeeded"
    # The worker pod ran it: its metrics, scraped through its Service, count the image.
    import httpx

    ip = node.get("service", "-n", "aijobs-system", "aijobs-worker-metrics")["spec"]["clusterIP"]
    metrics = httpx.get(f"http://{ip}:9400/metrics", timeout=10).text
    done = [
        line
        for line in metrics.splitlines()
        if line.startswith('aijobs_worker_images_total{outcome="ok",pipeline="upscale-x2"}')
    ]
    assert done and float(done[0].split()[-1]) >= 1, metrics[-2000:]


def test_killing_the_leader_operator_mid_saga_hands_over_and_charges_once(node: Any) -> None:
    lease = node.get("lease", "-n", "aijobs-system", "aijobs-operator")
    leader = lease["spec"]["holderIdentity"]
    assert leader in {p["metadata"]["name"] for p in _pods(node, "operator")}
    with _no_workers(node):
        node.apply(_job("handover"), NS)
        mid = node.wait_phase(NS, "handover", {"Scheduled"})  # charged, uploaded, scheduled: mid-saga
        assert mid["status"]["phase"] == "Scheduled"
        node.kubectl("delete", "pod", "-n", "aijobs-system", leader, "--grace-period=0", "--force")

    job = node.wait_phase(NS, "handover", {"Delivered", "Failed"}, timeout=300)
    assert job["status"]["phase"] == "Delivered", job["status"]
    holder = node.get("lease", "-n", "aijobs-system", "aijobs-operator")["spec"]["holderIdentity"]
    assert holder != leader, "the job finished, but the killed pod still holds the lease"
    _charged_once(node, job)
    node.wait_pods_ready()  # the Deployment replaced the killed replica: two again
    assert len(_pods(node, "operator")) == 2


def test_a_deleted_service_pod_comes_back_and_the_saga_finishes(node: Any) -> None:
    before = _pods(node, "storage")[0]["metadata"]["name"]
    with _no_workers(node):
        node.apply(_job("restarted"), NS)
        node.wait_phase(NS, "restarted", {"Scheduled"})
        node.kubectl("delete", "pod", "-n", "aijobs-system", before, "--wait=false")
    job = node.wait_phase(NS, "restarted", {"Delivered", "Failed"}, timeout=300)
    assert job["status"]["phase"] == "Delivered", job["status"]
    _charged_once(node, job)
    node.wait_pods_ready()
    after = _pods(node, "storage")
    assert len(after) == 1 and after[0]["metadata"]["name"] != before


WEDGE = "/tmp/aijobs-wedge"  # the worker's test-only fault: its loop blocks for good once this appears


def _worker_serves_metrics(node: Any, pod: str) -> bool:
    """Whether the metrics Service sends traffic to this worker pod (a ready endpoint)."""
    slices = node.get(
        "endpointslices", "-n", "aijobs-system", "-l", "kubernetes.io/service-name=aijobs-worker-metrics"
    )["items"]
    return any(
        (ep.get("targetRef") or {}).get("name") == pod and ep.get("conditions", {}).get("ready") is True
        for s in slices
        for ep in s.get("endpoints") or []
    )


def _wait(check: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f}s"
        time.sleep(0.5)
    return result


def test_a_wedged_worker_leaves_the_metrics_service_is_restarted_and_works_again(node: Any) -> None:
    from aijobs_dev.clusterdemo import VALUES
    from aijobs_worker.config import WorkerSettings

    probes = yaml.safe_load(VALUES.read_text())["worker"]["probes"]
    worker = WorkerSettings()
    # How long the kubelet may take to restart a wedged loop, from these probes and the worker's
    # own bound (its idle wait, or a lease call, plus the grace), with a minute for the kubelet.
    live = probes["liveness"]
    restart_within = (
        worker.call_timeout_seconds
        + worker.stall_grace_seconds
        + (live["periodSeconds"] + live["timeoutSeconds"]) * (live["failureThreshold"] + 1)
        + live["terminationGracePeriodSeconds"]
        + 60
    )
    start_within = probes["startup"]["periodSeconds"] * probes["startup"]["failureThreshold"] + 60

    # The fault hook is off unless its variable names a file: a rollout turns it on.
    node.kubectl(
        "set", "env", "deployment/aijobs-worker", "-n", "aijobs-system", f"AIJOBS_WEDGE_FILE={WEDGE}"
    )

    def rolled_out() -> str | None:
        pods = _pods(node, "worker")
        envs = [{e["name"] for e in p["spec"]["containers"][0]["env"]} for p in pods]
        if (
            len(pods) == 1
            and "AIJOBS_WEDGE_FILE" in envs[0]
            and _worker_serves_metrics(node, pods[0]["metadata"]["name"])
        ):
            return str(pods[0]["metadata"]["name"])
        return None

    pod = _wait(rolled_out, "worker rolled out with the fault hook and ready", start_within)
    restarts = node.get("pod", "-n", "aijobs-system", pod)["status"]["containerStatuses"][0]["restartCount"]

    node.kubectl("exec", "-n", "aijobs-system", pod, "-c", "worker", "--", "touch", WEDGE)
    # Wedged: no longer ready, so out of the metrics Service; then restarted by its liveness probe.
    _wait(lambda: not _worker_serves_metrics(node, pod), "worker out of the metrics Service", restart_within)

    def restarted() -> bool:
        status = node.get("pod", "-n", "aijobs-system", pod)["status"]["containerStatuses"][0]
        return bool(status["restartCount"] > restarts)

    _wait(restarted, "restart of the wedged worker", restart_within)
    _wait(
        lambda: _worker_serves_metrics(node, pod),
        "restarted worker back in the metrics Service",
        start_within,
    )
    # It was the fault, seen by the probe: the loop took the file, /healthz said so, the kubelet acted.
    previous = node.kubectl("logs", "-n", "aijobs-system", pod, "-c", "worker", "--previous").stdout
    assert f"fault: {WEDGE} found" in previous, previous[-2000:]
    events = node.get("events", "-n", "aijobs-system", "--field-selector", f"involvedObject.name={pod}")[
        "items"
    ]
    failures = [e["message"] for e in events if e["reason"] == "Unhealthy" and "Liveness" in e["message"]]
    assert any("503" in m for m in failures), [e["message"] for e in events]

    node.apply(_job("after-wedge", pipeline="upscale-x2"), NS)
    job = node.wait_phase(NS, "after-wedge", {"Delivered", "Failed"})
    assert job["status"]["phase"] == "Delivered", job["status"]
    _charged_once(node, job)


def test_helm_upgrade_changes_the_crd_and_keeps_the_jobs(node: Any, tmp_path: Path) -> None:
    chart = tmp_path / "aijobs"
    shutil.copytree(node_chart(), chart)
    crd_file = chart / "files" / "aijobs.io_aiimagejobs.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    changed = copy.deepcopy(crd)
    version = changed["spec"]["versions"][0]
    version["additionalPrinterColumns"].append(
        {"name": "Account", "type": "string", "jsonPath": ".spec.account", "priority": 1}
    )
    crd_file.write_text(yaml.safe_dump(changed))
    jobs_before = {j["metadata"]["uid"] for j in node.get("aij", "-n", NS)["items"]}

    node.helm("upgrade", "aijobs", str(chart), "-n", "aijobs-system", "--reuse-values")
    live = node.get("crd", "aiimagejobs.aijobs.io")
    columns = [c["name"] for c in live["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert "Account" in columns
    assert {j["metadata"]["uid"] for j in node.get("aij", "-n", NS)["items"]} == jobs_before
    wide = node.kubectl("get", "aij", "-n", NS, "-o", "wide").stdout
    assert "ACCOUNT" in wide and "acme" in wide
    node.wait_pods_ready()


def test_helm_uninstall_keeps_the_crd_and_the_jobs(node: Any) -> None:
    jobs_before = {j["metadata"]["name"] for j in node.get("aij", "-n", NS)["items"]}
    assert jobs_before >= {"first", "handover", "restarted", "after-wedge"}
    node.helm("uninstall", "aijobs", "-n", "aijobs-system", "--wait")
    assert node.get("crd", "aiimagejobs.aijobs.io")["metadata"]["name"] == "aiimagejobs.aijobs.io"
    assert {j["metadata"]["name"] for j in node.get("aij", "-n", NS)["items"]} == jobs_before
    deadline = time.monotonic() + 120
    while _pods(node, "operator") and time.monotonic() < deadline:
        time.sleep(1)
    assert not _pods(node, "operator")


def node_chart() -> Path:
    from aijobs_dev.clusterdemo import CHART

    return CHART
