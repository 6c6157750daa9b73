"""The chart on a real single-node cluster, as a platform team installs it and a user uses it.

    python -m aijobs_dev.clusterdemo [--keep] [--dir DIR]      (``make cluster-demo``; root)

Builds the images (local bases, :mod:`aijobs_dev.images`), starts the node
(:mod:`aijobs_dev.controlplane.node`), loads the images into it, ``helm install``s the chart
with the bundled PostgreSQL and generated secrets (``charts/aijobs/ci/single-node.yaml``), runs
``helm test``, makes a tenant (a ``CreditAccount`` and an admin top-up), applies
``examples/upscale-inline.yaml`` with kubectl and waits for it to be Delivered by the operator
and the worker running as pods. Prints ``kubectl get pods -A``, the job, and how long each part
took; stops the cluster unless ``--keep``.

:class:`ChartOnNode` is what ``tests/cluster`` drives too.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from aijobs.cli import state_home
from aijobs_dev.controlplane.assets import AssetError, ensure_helm, ensure_node_assets
from aijobs_dev.controlplane.cluster import ControlPlaneError
from aijobs_dev.controlplane.node import NodeCluster
from aijobs_dev.images import build_images

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "aijobs"
VALUES = CHART / "ci" / "single-node.yaml"
RELEASE = "aijobs"
NAMESPACE = "aijobs-system"
IMAGES = ("aijobs:0.1.0", "aijobs-postgres:0.1.0", "aijobs-worker:0.1.0")

__all__ = ["ChartOnNode", "Timings"]


@dataclass
class Timings:
    parts: list[tuple[str, float]] = field(default_factory=list)

    def run(self, name: str, step: Callable[[], Any], log: Callable[[str], None] = print) -> Any:
        started = time.monotonic()
        log(f"== {name}")
        result = step()
        self.parts.append((name, time.monotonic() - started))
        log(f"   {name}: {time.monotonic() - started:.0f}s")
        return result

    def table(self) -> str:
        width = max(len(n) for n, _ in self.parts)
        rows = [f"  {name.ljust(width)}  {seconds:6.0f} s" for name, seconds in self.parts]
        return "\n".join([*rows, f"  {'total'.ljust(width)}  {sum(s for _, s in self.parts):6.0f} s"])


class ChartOnNode:
    """A node with the chart installed; helpers a platform admin and a user would use."""

    def __init__(self, root: Path) -> None:
        self.cluster = NodeCluster(root)
        self.helm_binary = ensure_helm()

    # -- setup -------------------------------------------------------------------------------
    def prepare(self, log: Callable[[str], None] = print) -> None:
        build_images(log=log)
        ensure_node_assets(log=log)

    def start(self, log: Callable[[str], None] = print) -> None:
        self.cluster.start(log=log)
        for image in IMAGES:
            self.cluster.load_image(image)

    def install(self, *extra: str, chart: Path = CHART) -> None:
        self.helm(
            "install", RELEASE, str(chart), "-n", NAMESPACE, "--create-namespace", "-f", str(VALUES), *extra
        )

    def helm(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        argv = [str(self.helm_binary), f"--kubeconfig={self.cluster.kubeconfig}", *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ControlPlaneError(f"helm {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, check=check)

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def wait_pods_ready(self, timeout: float = 600) -> list[dict[str, Any]]:
        """Every pod of the release Running and Ready (helm test pods excluded)."""
        deadline = time.monotonic() + timeout
        pods: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            pods = [
                p
                for p in self.get("pods", "-n", NAMESPACE)["items"]
                if "helm.sh/hook" not in p["metadata"].get("annotations", {})
                and p["metadata"].get("deletionTimestamp") is None
            ]
            if pods and all(_ready(p) for p in pods):
                return pods
            time.sleep(1)
        states = {p["metadata"]["name"]: p["status"].get("phase") for p in pods}
        raise AssertionError(f"pods not Ready after {timeout:.0f}s: {states}")

    # -- a platform admin's and a user's view ------------------------------------------------
    def secret(self, key: str) -> str:
        data = self.get("secret", "-n", NAMESPACE, "aijobs-callers")["data"]
        return base64.b64decode(data[key]).decode()

    def service_url(self, name: str) -> str:
        ip = self.get("service", "-n", NAMESPACE, f"{RELEASE}-{name}")["spec"]["clusterIP"]
        return f"http://{ip}:8080"  # kube-proxy routes this machine's traffic to ClusterIPs too

    def admin(self, service: str) -> httpx.Client:
        from aijobs.wire.tokens import TokenSigner

        token = TokenSigner("admin", self.secret("admin")).token_for(service)
        return httpx.Client(
            base_url=self.service_url(service), headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def tenant(self, account: str, namespace: str, credits: int) -> None:
        """A CreditAccount binding ``namespace`` (the operator syncs it) and credits on it."""
        self.kubectl("create", "namespace", namespace, check=False)
        manifest = {
            "apiVersion": "aijobs.io/v1alpha1",
            "kind": "CreditAccount",
            "metadata": {"name": account},
            "spec": {"namespaces": [namespace]},
        }
        self.apply(manifest)
        _until(lambda: _condition(self.get("creditaccount", account), "Ready"), f"account {account} Ready")
        with self.admin("payment") as http:
            key = {"Idempotency-Key": f"demo-top-up-{account}-{credits}"}
            r = http.post(f"/v1/accounts/{account}/top-ups", json={"amount": credits}, headers=key)
            r.raise_for_status()

    def apply(self, manifest: dict[str, Any], namespace: str | None = None) -> None:
        self.cluster.apply(manifest, namespace=namespace)

    def wait_phase(self, namespace: str, name: str, phases: set[str], timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.get("aij", "-n", namespace, name)
            if job.get("status", {}).get("phase") in phases:
                return job
            time.sleep(0.5)
        raise AssertionError(f"{namespace}/{name} not in {phases} after {timeout:.0f}s: {job.get('status')}")

    def charges(self, uid: str) -> Any:
        with self.admin("payment") as http:
            r = http.get(f"/v1/jobs/{uid}/charges")
            r.raise_for_status()
            return r.json()

    def tasks(self, uid: str) -> list[dict[str, Any]]:
        with self.admin("ai") as http:
            r = http.post("/v1/tasks/query", json={"jobIds": [uid]}, headers={"Idempotency-Key": uid})
            r.raise_for_status()
            items: list[dict[str, Any]] = r.json()["items"]
            return items


def _ready(pod: dict[str, Any]) -> bool:
    return _condition(pod, "Ready")


def _condition(obj: dict[str, Any], kind: str) -> bool:
    return any(
        c["type"] == kind and c["status"] == "True" for c in obj.get("status", {}).get("conditions", [])
    )


def _until(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"no {what} after {timeout:.0f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the cluster running afterwards")
    parser.add_argument("--dir", type=Path, default=state_home() / "cluster-demo")

    def log(msg: str) -> None:
        print(msg, flush=True)

    args = parser.parse_args()
    timings = Timings()
    demo = ChartOnNode(args.dir)
    if demo.cluster.running:
        demo.cluster.stop()  # a previous --keep run: start afresh
    try:
        timings.run("build images and node binaries", lambda: demo.prepare(log), log)
        timings.run("start the node, load the images", lambda: demo.start(log), log)
        timings.run("helm install (bundled PostgreSQL)", demo.install, log)
        timings.run("all pods Ready", demo.wait_pods_ready, log)
        timings.run("helm test", lambda: log(demo.helm("test", RELEASE, "-n", NAMESPACE).stdout), log)
        timings.run(
            "tenant acme: CreditAccount + 100 credits", lambda: demo.tenant("acme", "team-a", 100), log
        )
        job = yaml.safe_load((ROOT / "examples" / "upscale-inline.yaml").read_text())
        timings.run("kubectl apply examples/upscale-inline.yaml", lambda: demo.apply(job, "team-a"), log)
        timings.run(
            "job Delivered", lambda: demo.wait_phase("team-a", "upscale-inline", {"Delivered", "Failed"}), log
        )
        log("$ kubectl get pods -A -o wide")
        log(demo.kubectl("get", "pods", "-A", "-o", "wide").stdout)
        log("$ kubectl get aij -n team-a")
        log(demo.kubectl("get", "aij", "-n", "team-a").stdout)
        with contextlib.suppress(AssertionError):  # the account's status is refreshed every 30 s
            _until(
                lambda: demo.get("creditaccount", "acme").get("status", {}).get("balance") == 90,
                "the account's new balance",
                timeout=60,
            )
        log("$ kubectl get creditaccounts")
        log(demo.kubectl("get", "creditaccounts").stdout)
        phase = demo.get("aij", "-n", "team-a", "upscale-inline")["status"]["phase"]
        log(f"the job is {phase}\n\ntimings:\n{timings.table()}")
        if args.keep:
            log(f"\nthe cluster keeps running: export KUBECONFIG={demo.cluster.kubeconfig}")
            log(f"stop it with: aijobs cluster down --dir {args.dir}")
        return 0 if phase == "Delivered" else 1
    except (AssetError, ControlPlaneError, AssertionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            demo.cluster.stop()


if __name__ == "__main__":
    raise SystemExit(main())
