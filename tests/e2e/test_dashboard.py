"""The dashboard the chart ships, proven: a real Prometheus scrapes the stack (operator, five
services, a worker) while jobs are delivered, fail and get audited, and every panel's query
returns data. The values the panels show are written down as a person would read them."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from aijobs_dev.dashboard import Prometheus, Reading, panel_queries, record, render
from aijobs_dev.testbed.stack import Stack

from aijobs.wire.tokens import TokenSigner
from tests.e2e.conftest import QUOTA, Jobs, eventually, manifest, png


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    targets = {
        "aijobs-operator": [urlsplit(stack.operators[0].env["AIJOBS_METRICS_URL"]).netloc],
        "aijobs-services": [urlsplit(proc.url).netloc for proc in stack.services.values()],
        "aijobs-worker": [f"127.0.0.1:{stack.workers[0].env['AIJOBS_METRICS_PORT']}"],
    }
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), targets).start()
    try:
        yield server
    finally:
        server.stop()


def test_every_panel_of_the_dashboard_shows_data_from_a_real_prometheus(
    stack: Stack, prometheus: Prometheus, tmp_path: Path
) -> None:
    eventually(
        lambda: (up := prometheus.targets_up()) and all(up.values()) and len(up) == 7, 60, "targets up"
    )
    # Jobs other tests left on this API server count too: what this test adds is compared.
    before = {labels["phase"]: value for labels, value in prometheus.query(PHASES)}
    tenant = stack.tenant(f"d{uuid.uuid4().hex[:8]}", credits=100)
    jobs = Jobs(stack, tenant.namespace)
    jobs.apply(manifest("delivered", tenant.account))
    big = png(200, 200, noise=True)
    assert len(big) > QUOTA
    jobs.apply(manifest("storage-full", tenant.account, image=big))  # charged, then refunded
    jobs.apply(manifest("too-poor", tenant.account, price=500))  # refused at the charge
    phases = {name: jobs.wait(name)["status"]["phase"] for name in ("delivered", "storage-full", "too-poor")}
    assert phases == {"delivered": "Delivered", "storage-full": "Failed", "too-poor": "Failed"}

    # An admin's retried top-up (answered from its Idempotency-Key) and a stray hold the auditor
    # releases: what the replay and audit panels count.
    token = TokenSigner("admin", stack.secrets["admin"]).token_for("payment")
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex}
    for _ in range(2):
        url = f"{stack.services['payment'].url}/v1/accounts/{tenant.account}/top-ups"
        httpx.post(url, json={"amount": 1}, headers=headers, timeout=10).raise_for_status()
    failed = jobs.get("too-poor")
    assert failed is not None
    stack.call(
        "payment",
        "POST",
        "/v1/holds",
        {"account": tenant.account, "jobId": failed["metadata"]["uid"], "amount": 3},
    )
    eventually(lambda: stack.balance(tenant.account)["held"] == 0, 60, "the auditor released the stray hold")

    # Every query of every panel answers, every one that needs no GPU with data, and the values
    # say what happened: one delivered, two failed (one refunded), one stray hold repaired, one
    # replayed request, time spent in the steps and in inference.
    def shown(readings: list[Reading], expr: str) -> dict[str, float]:
        [series] = [r.series for r in readings if r.expr == expr]
        return {",".join(f"{k}={v}" for k, v in sorted(labels.items())): value for labels, value in series}

    def what_a_person_sees() -> list[Reading] | None:
        readings = record(prometheus)
        checks = [
            all(r.series or r.needs_gpu for r in readings),
            shown(readings, PHASES).get("phase=Delivered", 0) >= before.get("Delivered", 0) + 1,
            shown(readings, PHASES).get("phase=Failed", 0) >= before.get("Failed", 0) + 2,
            shown(readings, CREDITS).get("movement=charged", 0) > 0,
            shown(readings, CREDITS).get("movement=returned", 0) > 0,
            shown(readings, COMPENSATIONS).get("reason=StorageFull", 0) > 0,
            shown(readings, COMPENSATIONS).get("reason=InsufficientCredits", 0) > 0,
            shown(readings, AUDIT).get("action=repaired,kind=stray-hold", 0) > 0,
            shown(readings, REPLAYS).get("service=payment", 0) > 0,
            not math.isnan(shown(readings, STEP_P95).get("step=charge", math.nan)),
            not math.isnan(shown(readings, STAGE_P95).get("stage=infer", math.nan)),
            sum(shown(readings, BUSY).values()) > 0,
        ]
        return readings if all(checks) else None

    try:
        readings = eventually(what_a_person_sees, 120, "the dashboard showing what happened")
    finally:
        (tmp_path / "dashboard.txt").write_text(render(record(prometheus)))
    assert {r.panel for r in readings} == {title for title, _ in panel_queries()}


PHASES = "sum by (phase) (aijobs_jobs)"
CREDITS = "sum by (movement) (increase(aijobs_credits_total[1h]))"
COMPENSATIONS = "sum by (reason) (rate(aijobs_saga_compensations_total[5m]))"
AUDIT = "sum by (kind, action) (increase(aijobs_audit_findings_total[1h]))"
REPLAYS = "sum by (service) (rate(aijobs_idempotent_replays_total[5m]))"
STEP_P95 = "histogram_quantile(0.95, sum by (le, step) (rate(aijobs_saga_step_duration_seconds_bucket[5m])))"
STAGE_P95 = "histogram_quantile(0.95, sum by (le, stage) (rate(aijobs_worker_stage_seconds_bucket[5m])))"
BUSY = '100 * sum by (instance) (rate(aijobs_worker_stage_seconds_sum{stage="infer"}[5m]))'
