"""Auth: tokens that are shown once and stored hashed, revocation, and tenant bindings."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.services.conftest import Api, snapshot

AuthFx = tuple[Api, sa.Engine]


def _tenant_with_user(api: Api, tenant: str = "acme", user: str = "alice") -> None:
    api.ok("POST", "/v1/tenants", {"id": tenant})
    api.ok("POST", "/v1/users", {"id": user, "tenant": tenant})


def test_a_token_is_shown_once_stored_hashed_and_verifies_to_its_user(auth: AuthFx) -> None:
    api, engine = auth
    _tenant_with_user(api)
    issued = api.post("/v1/tokens", {"user": "alice"}, key="issue-1")
    assert issued.status_code == 201
    token = issued.json()["token"]
    assert token.startswith("aij_")
    principal = api.ok("POST", "/v1/tokens/verify", {"token": token}, caller="main-api", key=None)
    assert principal == {"kind": "user", "subject": "alice", "tenant": "acme", "tokenId": issued.json()["id"]}
    # Nowhere in the database, replays included, is the secret kept in the clear.
    secret = token.split("_", 2)[2]
    dump = str(snapshot(engine, skip=()))
    assert secret not in dump and "$argon2id$" in dump
    replay = api.post("/v1/tokens", {"user": "alice"}, key="issue-1")
    assert replay.status_code == 201 and replay.json()["token"] is None
    assert replay.json()["id"] == issued.json()["id"]


def test_a_revoked_token_no_longer_verifies(auth: AuthFx) -> None:
    api, _ = auth
    _tenant_with_user(api)
    issued = api.ok("POST", "/v1/tokens", {"user": "alice"})
    api.ok("POST", f"/v1/tokens/{issued['id']}/revoke")
    refused = api.post("/v1/tokens/verify", {"token": issued["token"]}, caller="main-api", key=None)
    assert refused.status_code == 401 and refused.json()["type"].endswith("/invalid-token")


def test_service_identities_get_tokens_too(auth: AuthFx) -> None:
    api, _ = auth
    issued = api.ok("POST", "/v1/tokens", {"service": "operator"})
    principal = api.ok("POST", "/v1/tokens/verify", {"token": issued["token"]}, caller="operator", key=None)
    assert (
        principal["kind"] == "service" and principal["subject"] == "operator" and principal["tenant"] is None
    )


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("not-a-token", id="garbage"),
        pytest.param("aij_0000000000000000_guess", id="unknown-id"),
    ],
)
def test_a_bad_token_does_not_verify(auth: AuthFx, token: str) -> None:
    api, _ = auth
    response = api.post("/v1/tokens/verify", {"token": token}, caller="main-api", key=None)
    assert response.status_code in (401, 422)
    assert response.headers["content-type"] == "application/problem+json"


def test_a_token_whose_secret_is_wrong_does_not_verify(auth: AuthFx) -> None:
    api, _ = auth
    _tenant_with_user(api)
    token = api.ok("POST", "/v1/tokens", {"user": "alice"})["token"]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert api.post("/v1/tokens/verify", {"token": forged}, caller="main-api", key=None).status_code == 401


def test_a_namespace_charges_only_the_accounts_it_is_bound_to(auth: AuthFx) -> None:
    api, _ = auth
    _tenant_with_user(api, "acme", "alice")
    _tenant_with_user(api, "globex", "bob")
    api.ok("POST", "/v1/bindings", {"namespace": "team-a", "account": "acme"})
    allowed = api.post(
        "/v1/authorize-charge", {"namespace": "team-a", "account": "acme"}, caller="operator", key=None
    )
    assert allowed.status_code == 200 and allowed.json()["allowed"] is True
    refused = api.post(
        "/v1/authorize-charge", {"namespace": "team-a", "account": "globex"}, caller="operator", key=None
    )
    assert refused.status_code == 403
    assert refused.json()["type"].endswith("/tenant-not-allowed")
    assert "not bound to account 'globex'" in refused.json()["detail"]
    assert api.ok("GET", "/v1/bindings?account=acme")["items"] == [{"namespace": "team-a", "account": "acme"}]


BAD = [
    pytest.param("/v1/users", {"id": "carol", "tenant": "nope"}, 404, "unknown-tenant", id="unknown-tenant"),
    pytest.param("/v1/users", {"id": "Carol!", "tenant": "acme"}, 422, "validation-error", id="bad-user-id"),
    pytest.param("/v1/users", {"id": "alice", "tenant": "acme"}, 409, "user-exists", id="duplicate-user"),
    pytest.param(
        "/v1/tokens", {"user": "alice", "service": "operator"}, 422, "validation-error", id="two-subjects"
    ),
    pytest.param("/v1/tokens", {"user": "nobody"}, 404, "unknown-user", id="unknown-user"),
    pytest.param(
        "/v1/bindings", {"namespace": "team-a", "account": "nope"}, 404, "unknown-tenant", id="bind-unknown"
    ),
    pytest.param("/v1/tenants", {"id": 42}, 422, "validation-error", id="wrong-type"),
]


@pytest.mark.parametrize(("path", "body", "status", "kind"), BAD)
def test_bad_admin_requests_get_a_problem_and_change_nothing(
    auth: AuthFx, path: str, body: Any, status: int, kind: str
) -> None:
    api, engine = auth
    _tenant_with_user(api)
    before = snapshot(engine)
    response = api.post(path, body)
    assert response.status_code == status, response.text
    assert response.json()["type"] == f"https://aijobs.io/problems/{kind}"
    assert snapshot(engine) == before


def test_only_the_admin_may_manage_tenants_users_and_tokens(auth: AuthFx) -> None:
    """The operator makes CreditAccount objects into tenants and bindings (who may create those
    is the cluster's RBAC), and nothing more: users and tokens stay the admin's."""
    api, engine = auth
    before = snapshot(engine)
    assert api.post("/v1/tenants", {"id": "acme"}, caller="main-api").status_code == 403
    assert api.post("/v1/tenants", {"id": "acme"}, caller=None).status_code == 401
    assert api.post("/v1/users", {"id": "bob", "tenant": "acme"}, caller="operator").status_code == 403
    assert api.post("/v1/tokens", {"service": "x1"}, caller="operator").status_code == 403
    assert snapshot(engine) == before
    assert api.post("/v1/tenants", {"id": "acme"}, caller="operator").status_code == 201


def test_auth_and_payment_run_as_real_processes(
    pg_url: str, postgres: Any, service_process: Any, secrets: dict[str, str]
) -> None:
    auth_proc = service_process("auth", postgres.create_database("auth_proc"))
    payment_proc = service_process("payment", pg_url)
    with httpx.Client(base_url=auth_proc.url) as a, httpx.Client(base_url=payment_proc.url) as p:
        auth_api, pay_api = Api(a, "auth", secrets), Api(p, "payment", secrets)
        auth_api.ok("POST", "/v1/tenants", {"id": "acme"})
        pay_api.ok("POST", "/v1/accounts", {"id": "acme"})
        assert a.get("/healthz").json() == {"status": "ok", "service": "auth"}
        assert p.get("/readyz").json() == {"status": "ready"}
        assert "aijobs_http_requests_total" in p.get("/metrics").text
        assert "/v1/holds" in p.get("/openapi.json").json()["paths"]
