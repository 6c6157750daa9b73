"""The whole stack as real processes: control plane, PostgreSQL, five services behind fault
proxies, the operator and a CPU worker."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aijobs_dev.controlplane.cluster import ControlPlane, free_port
from aijobs_dev.testbed.postgres import PostgresCluster
from aijobs_dev.testbed.stack import SERVICES, Stack, Tenant
from PIL import Image

QUOTA = 100_000  # bytes per account in Storage: scenario 1 uploads more than that


def make_stack(
    control_plane: ControlPlane,
    postgres: PostgresCluster,
    tmp_path_factory: pytest.TempPathFactory,
    **operator_env: str,
) -> Stack:
    suffix = uuid.uuid4().hex[:8]
    urls = {name: postgres.create_database(f"{name}_{suffix}") for name in SERVICES}
    stack = Stack(
        tmp_path_factory.mktemp("stack"),
        control_plane.kubeconfig,
        urls.__getitem__,
        service_env={
            "storage": {
                "AIJOBS_ACCOUNT_QUOTA_BYTES": str(QUOTA),
                # An image server of the tests' own (test_batch_list): the one loopback address
                # Storage may fetch from. Every service listens on 127.0.0.1, which stays refused.
                "AIJOBS_INGEST_ALLOW_CIDRS": '["127.0.0.2/32"]',
            }
        },
        operator_env={"AIJOBS_LEASE_NAME": f"aijobs-operator-{suffix}", **operator_env},
    )
    stack.start_services()
    return stack


@pytest.fixture(scope="module")
def stack(
    control_plane: ControlPlane, postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = make_stack(control_plane, postgres, tmp_path_factory)
    try:
        stack.start_operator()
        stack.start_worker(AIJOBS_METRICS_PORT=str(free_port()))  # scraped by the dashboard test
        yield stack
    finally:
        stack.stop()


def png(width: int = 24, height: int = 16, noise: bool = False) -> bytes:
    if noise:
        import os

        image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    else:
        image = Image.linear_gradient("L").convert("RGB").resize((width, height))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def manifest(
    name: str,
    account: str,
    *,
    image: bytes | None = None,
    price: int = 10,
    pipeline: str = "upscale-x2",
    **spec: Any,
) -> dict[str, Any]:
    data = base64.b64encode(image if image is not None else png()).decode()
    body: dict[str, Any] = {
        "account": account,
        "pipeline": pipeline,
        "price": price,
        "input": {"inline": {"contentType": "image/png", "data": data}},
        **spec,
    }
    return {
        "apiVersion": "aijobs.io/v1alpha1",
        "kind": "AIImageJob",
        "metadata": {"name": name},
        "spec": body,
    }


class Jobs:
    """kubectl against one namespace, and polling with a deadline (never a bare sleep)."""

    def __init__(self, stack: Stack, namespace: str) -> None:
        self.stack, self.namespace = stack, namespace

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = ["kubectl", f"--kubeconfig={self.stack.kubeconfig}", f"--namespace={self.namespace}", *args]
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
        return proc

    def apply(self, body: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", stdin=json.dumps(body))

    def get(self, name: str) -> dict[str, Any] | None:
        proc = self.kubectl("get", "aij", name, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def wait(
        self, name: str, phases: tuple[str, ...] = ("Delivered", "Failed"), timeout: float = 90
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job = None
        while time.monotonic() < deadline:
            job = self.get(name)
            if job and (job.get("status") or {}).get("phase") in phases:
                return job
            time.sleep(0.2)
        raise AssertionError(
            f"{name} did not reach {phases} in {timeout}s: {json.dumps(job, indent=1)[-3000:]}"
        )

    def wait_gone(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get(name) is None:
                return
            time.sleep(0.2)
        raise AssertionError(f"{name} still exists after {timeout}s")


def eventually(check: Any, timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} not met in {timeout}s (last: {last})")


@pytest.fixture
def tenant(stack: Stack) -> Tenant:
    return stack.tenant(f"t{uuid.uuid4().hex[:8]}", credits=100)


@pytest.fixture
def jobs(stack: Stack, tenant: Tenant) -> Jobs:
    return Jobs(stack, tenant.namespace)


def live(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["state"] != "deleted"]


def reason(job: dict[str, Any]) -> str:
    return next(c["reason"] for c in job["status"]["conditions"] if c["type"] == "Failed")
