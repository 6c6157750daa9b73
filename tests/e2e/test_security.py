"""Probes of Main API as an attacker and a careless user would send them, against the real
processes: each is refused with a problem that names the field, and nothing is stored, charged,
created or called."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa
from aijobs_dev.testbed.stack import Stack, Tenant
from aijobs_services.kit.db import make_engine

from tests.e2e.conftest import png


def _rows(stack: Stack, service: str, table: str) -> int:
    engine = make_engine(stack.database_url(service))
    with engine.connect() as conn:
        count = int(conn.execute(sa.text(f"select count(*) from {table}")).scalar_one())  # noqa: S608
    engine.dispose()
    return count


def test_a_webhook_to_a_private_address_is_refused_and_never_called(
    stack: Stack, tenant: Tenant, listener: tuple[str, list[dict[str, str]]]
) -> None:
    url, hits = listener
    main = stack.services["main"].url
    auth = {"Authorization": f"Bearer {tenant.token}"}
    before = _rows(stack, "main", "webhooks")
    for target in (f"{url}/hook", "http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/hook"):
        refused = httpx.put(
            f"{main}/v1/webhook",
            json={"url": target, "secret": "s" * 32},
            headers=auth | {"Idempotency-Key": f"hook-{target}"},
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["type"].endswith("/destination-refused") and "url:" in refused.json()["detail"]
    assert _rows(stack, "main", "webhooks") == before
    assert hits == []


@pytest.mark.parametrize(
    ("form", "says"),
    [
        pytest.param({"runAt": "9999-12-31T23:59:59Z"}, "runAt", id="year-9999"),
        pytest.param({"runAt": "2026-W48-5T12:00:00Z"}, "runAt", id="iso-week-date"),
        pytest.param({"runAt": "20261128T120000Z"}, "runAt", id="basic-format"),
        pytest.param({"runAt": "2001-01-01T00:00:00Z"}, "in the past", id="past"),
        pytest.param({"parameters": "[" * 50_000}, "parameters", id="nested-50000-deep"),
        pytest.param(
            {"pipeline": "grayscale", "parameters": '{"width": 10}'}, "width", id="foreign-parameter"
        ),
    ],
)
def test_a_bad_submission_is_refused_and_leaves_nothing(
    stack: Stack, tenant: Tenant, form: dict[str, str], says: str
) -> None:
    main = stack.services["main"].url
    objects = _rows(stack, "storage", "objects")
    response = httpx.post(
        f"{main}/v1/jobs",
        headers={"Authorization": f"Bearer {tenant.token}", "Idempotency-Key": f"bad-{says}"},
        data={"pipeline": "grayscale", **form},
        files={"file": ("x.png", png(8, 8), "image/png")},
    )
    assert response.status_code == 422, response.text
    assert (
        response.headers["content-type"] == "application/problem+json" and says in response.json()["detail"]
    )
    assert _rows(stack, "storage", "objects") == objects
    assert (
        httpx.get(f"{main}/v1/jobs", headers={"Authorization": f"Bearer {tenant.token}"}).json()["items"]
        == []
    )


def test_a_listing_with_a_continue_token_it_never_gave_is_a_clear_422(stack: Stack, tenant: Tenant) -> None:
    main = stack.services["main"].url
    response = httpx.get(
        f"{main}/v1/jobs", params={"continue": "garbage"}, headers={"Authorization": f"Bearer {tenant.token}"}
    )
    assert response.status_code == 422 and "continue" in response.json()["detail"]
