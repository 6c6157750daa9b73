"""An account's jobs in flight, against the real processes: submissions sent at once to two Main
API replicas on one database never create more jobs than the account may have (issue 25: six
parallel submissions of ~7.7 MB images against a limit of 3 made six jobs)."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa
from aijobs_dev.controlplane.cluster import ControlPlane
from aijobs_dev.testbed.postgres import PostgresCluster
from aijobs_dev.testbed.processes import ServiceProcess
from aijobs_dev.testbed.stack import SERVICES, Stack
from aijobs_services.kit.db import make_engine
from kubernetes import client as k8s

from aijobs.api.v1alpha1 import GROUP, PLURAL, VERSION
from aijobs.kube import api_client
from tests.e2e.conftest import png

LIMIT = 3
SUBMISSIONS = 8


@pytest.fixture(scope="module")
def replicas(
    control_plane: ControlPlane, postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, list[str]]]:
    """A stack with no operator (no job ends, so none frees a slot during the test), Main limited
    to 3 jobs in flight and to a rate the test never reaches, and a second Main replica on the
    same database. Yields the stack and both replicas' URLs."""
    suffix = uuid.uuid4().hex[:8]
    urls = {name: postgres.create_database(f"{name}_{suffix}") for name in SERVICES}
    stack = Stack(
        tmp_path_factory.mktemp("stack"),
        control_plane.kubeconfig,
        urls.__getitem__,
        service_env={
            "main": {
                "AIJOBS_MAX_JOBS_IN_FLIGHT": str(LIMIT),
                "AIJOBS_SUBMISSIONS_PER_MINUTE": "6000",
                "AIJOBS_SUBMISSION_BURST": "1000",
            }
        },
    )
    second: ServiceProcess | None = None
    try:
        stack.start_services()
        first = stack.services["main"]
        second = ServiceProcess("main", urls["main"], stack.secrets, stack.logs, env=dict(first.env))
        second.name = "main-replica-2"  # its own log file
        second.start()
        yield stack, [first.url, second.url]
    finally:
        if second is not None:
            second.stop()
        stack.stop()


def _staged_uploads(stack: Stack, account: str) -> int:
    engine = make_engine(stack.database_url("storage"))
    with engine.connect() as conn:
        count = conn.execute(
            sa.text("select count(*) from objects where account = :account and state != 'deleted'"),
            {"account": account},
        ).scalar_one()
    engine.dispose()
    return int(count)


def test_parallel_submissions_to_two_replicas_create_no_more_jobs_than_the_limit(
    replicas: tuple[Stack, list[str]],
) -> None:
    stack, mains = replicas
    tenant = stack.tenant(f"t{uuid.uuid4().hex[:8]}", credits=1000)
    image = png(1600, 1600, noise=True)  # ~7.7 MB: a wide window between admission and creation
    run_at = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    start = threading.Barrier(SUBMISSIONS)

    def submit(i: int) -> httpx.Response:
        with httpx.Client(timeout=120) as http:
            start.wait()
            return http.post(
                f"{mains[i % 2]}/v1/jobs",
                headers={"Authorization": f"Bearer {tenant.token}", "Idempotency-Key": f"burst-{i}"},
                data={"pipeline": "grayscale", "runAt": run_at},
                files={"file": ("in.png", image, "image/png")},
            )

    with ThreadPoolExecutor(SUBMISSIONS) as pool:
        answers = list(pool.map(submit, range(SUBMISSIONS)))

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] * LIMIT + [429] * (SUBMISSIONS - LIMIT), [a.text[:300] for a in answers]
    for refused in (a for a in answers if a.status_code == 429):
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith("/rate-limited") and "in flight" in refused.json()["detail"]
        assert refused.headers["retry-after"]
    listed = k8s.CustomObjectsApi(api_client(stack.kubeconfig)).list_namespaced_custom_object(
        GROUP, VERSION, tenant.namespace, PLURAL
    )["items"]
    assert sorted(j["metadata"]["name"] for j in listed) == sorted(
        a.json()["id"] for a in answers if a.status_code == 201
    )
    assert _staged_uploads(stack, tenant.account) == LIMIT  # the refused ones stored nothing
