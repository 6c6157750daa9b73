"""The inputs an attacker's probes and a fuzzer found answered with a 500 (or taken when they
should not be), sent again to the real processes on PostgreSQL: each is now a 4xx problem+json
that names the field, and nothing is stored, charged or created."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from aijobs_dev.testbed.stack import Stack, Tenant
from aijobs_services.kit.db import make_engine

from aijobs.wire.tokens import TokenSigner
from tests.e2e.conftest import png

BIG = 2**63  # one more than a 64-bit column holds

# (service, caller, method, path, JSON body, the field the problem must name)
PROBES = [
    pytest.param(
        "payment",
        "admin",
        "GET",
        "/v1/accounts/{account}/ledger?before=" + str(BIG),
        None,
        "before",
        id="ledger-before-2**63",
    ),
    pytest.param(
        "payment",
        "admin",
        "GET",
        "/v1/admin/audit?before=" + str(BIG),
        None,
        "before",
        id="audit-before-2**63",
    ),
    pytest.param(
        "payment",
        "operator",
        "POST",
        "/v1/holds",
        {"account": "{account}", "jobId": "probe", "amount": 1, "expiresAt": "0001-01-01T00:00:00+01:00"},
        "expiresAt",
        id="hold-expires-year-0-in-utc",
    ),
    pytest.param(
        "payment",
        "operator",
        "POST",
        "/v1/holds",
        {"account": "{account}", "jobId": "probe", "amount": 1, "expiresAt": "9999-12-31T23:59:59-01:00"},
        "expiresAt",
        id="hold-expires-year-10000-in-utc",
    ),
    pytest.param(
        "payment",
        "operator",
        "POST",
        "/v1/holds/no-such-hold/extend",
        {"expiresAt": "0001-01-01T00:00:00+01:00"},
        "expiresAt",
        id="extend-unknown-hold-year-0",
    ),
    pytest.param(
        "ai",
        "operator",
        "POST",
        "/v1/tasks",
        {
            "jobId": "probe",
            "account": "{account}",
            "pipeline": "grayscale",
            "inputObjectId": "obj-1",
            "runAt": "9999-12-31T23:59:59-01:00",
        },
        "runAt",
        id="task-run-at-year-10000-in-utc",
    ),
    pytest.param(
        "ai",
        "operator",
        "POST",
        "/v1/tasks",
        {
            "jobId": "probe",
            "account": "{account}",
            "pipeline": "resize",
            "inputObjectId": "obj-1",
            "params": {"width": "8", "height": 8},
        },
        "parameters.width",
        id="task-width-as-a-string",
    ),
    pytest.param(
        "ai",
        "worker",
        "POST",
        "/v1/tasks/no-such-task/fail",
        {"leaseToken": "t", "reason": "r", "retryable": 0},
        "retryable",
        id="fail-retryable-0",
    ),
    pytest.param(
        "storage",
        "operator",
        "POST",
        "/v1/ingest",
        {"key": "probe-1", "url": "http://[::1/x.png", "account": "{account}"},
        "url",
        id="ingest-unclosed-bracket",
    ),
    pytest.param(
        "storage",
        "operator",
        "POST",
        "/v1/ingest",
        {"key": "probe-2", "url": "http://a]b/", "account": "{account}"},
        "url",
        id="ingest-stray-bracket",
    ),
    pytest.param(
        "storage",
        "operator",
        "POST",
        "/v1/ingest",
        {"key": "probe-3", "url": "https://[zz]/", "account": "{account}"},
        "url",
        id="ingest-not-an-address",
    ),
    pytest.param(
        "storage",
        "operator",
        "POST",
        "/v1/ingest",
        {"key": "probe-4", "url": "https://[::1::2]/x.png", "account": "{account}"},
        "url",
        id="ingest-bad-ipv6-the-pattern-lets-through",
    ),
    pytest.param(
        "main", "admin", "GET", "/v1/admin/jobs/{namespace}/%25", None, "name", id="admin-job-bad-name"
    ),
    pytest.param("main", "admin", "GET", "/v1/admin/jobs/NS/job-1", None, "namespace", id="admin-job-bad-ns"),
]


def _fill(value: Any, tenant: Tenant) -> Any:
    if isinstance(value, str):
        return value.replace("{account}", tenant.account).replace("{namespace}", tenant.namespace)
    if isinstance(value, dict):
        return {k: _fill(v, tenant) for k, v in value.items()}
    return value


def _tables(stack: Stack) -> dict[str, int]:
    counts = {}
    for service, table in (("payment", "holds"), ("ai", "tasks"), ("storage", "objects")):
        engine = make_engine(stack.database_url(service))
        with engine.connect() as conn:
            counts[table] = int(conn.execute(sa.text(f"select count(*) from {table}")).scalar_one())  # noqa: S608
        engine.dispose()
    return counts


def _refused(response: httpx.Response, field: str) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json", response.headers
    assert field in response.json()["detail"], response.json()


@pytest.mark.parametrize(("service", "caller", "method", "path", "body", "field"), PROBES)
def test_a_probe_that_once_got_a_500_is_a_4xx_naming_the_field_and_stores_nothing(
    stack: Stack, tenant: Tenant, service: str, caller: str, method: str, path: str, body: Any, field: str
) -> None:
    before = _tables(stack)
    token = TokenSigner(caller, stack.secrets[caller]).token_for(service)
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex}
    url = stack.services[service].url + _fill(path, tenant)
    response = httpx.request(method, url, json=_fill(body, tenant), headers=headers, timeout=30)
    _refused(response, field)
    assert _tables(stack) == before


USER_PROBES = [
    pytest.param("GET", "/v1/jobs/%25", {}, "job_id", id="get-job-bad-name"),
    pytest.param("POST", "/v1/jobs/%25/cancel", {}, "job_id", id="cancel-job-bad-name"),
    pytest.param("GET", "/v1/jobs/" + "a" * 254, {}, "job_id", id="get-job-name-too-long"),
    pytest.param(
        "PUT", "/v1/webhook", {"json": {"url": "https://[", "secret": "s" * 32}}, "url", id="webhook-["
    ),
    pytest.param(
        "PUT",
        "/v1/webhook",
        {"json": {"url": "https://[::1::2]/h", "secret": "s" * 32}},
        "url",
        id="webhook-bad-ipv6",
    ),
    pytest.param(
        "POST",
        "/v1/jobs",
        {"data": {"pipeline": "grayscale", "url": "http://[::1/x.png"}},
        "url",
        id="job-url-unclosed-bracket",
    ),
    pytest.param(
        "POST",
        "/v1/jobs",
        {"data": {"pipeline": "grayscale", "url": "http://a.example:99999/x.png"}},
        "url",
        id="job-url-port-out-of-range",
    ),
    pytest.param(
        "POST",
        "/v1/jobs",
        {"data": {"pipeline": "resize", "parameters": '{"width": 8, "height": 8, "antialias": "yes"}'}},
        "parameters.antialias: must be of type boolean",
        id="job-antialias-yes",
    ),
    pytest.param(
        "POST",
        "/v1/jobs",
        {"data": {"pipeline": "resize", "parameters": '{"width": "8", "height": 8}'}},
        "parameters.width: must be of type integer",
        id="job-width-as-a-string",
    ),
]


@pytest.mark.parametrize(("method", "path", "send", "field"), USER_PROBES)
def test_a_users_probe_is_a_4xx_naming_the_field_and_creates_no_job(
    stack: Stack, tenant: Tenant, method: str, path: str, send: dict[str, Any], field: str
) -> None:
    before = _tables(stack)
    headers = {"Authorization": f"Bearer {tenant.token}", "Idempotency-Key": uuid.uuid4().hex}
    if "data" in send and "url" not in send["data"]:
        send = {**send, "files": {"file": ("x.png", png(8, 8), "image/png")}}
    response = httpx.request(method, stack.services["main"].url + path, headers=headers, timeout=30, **send)
    _refused(response, field)
    assert _tables(stack) == before
    listing = httpx.get(
        f"{stack.services['main'].url}/v1/jobs", headers={"Authorization": headers["Authorization"]}
    )
    assert listing.json()["items"] == []
