"""Auth: tokens that are shown once and stored hashed, revocation, and tenant bindings."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from aijobs_services.auth.models import Binding
from aijobs_services.kit.db import utcnow

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


def _bind(api: Api, namespace: str, account: str) -> httpx.Response:
    return api.post("/v1/bindings", {"namespace": namespace, "account": account}, caller="operator")


def _may_charge(api: Api, namespace: str, account: str) -> int:
    body = {"namespace": namespace, "account": account}
    return api.post("/v1/authorize-charge", body, caller="operator", key=None).status_code


def test_a_namespace_bound_to_one_account_is_refused_to_another_who_is_told_the_holder(
    auth: AuthFx,
) -> None:
    """Else a manifest in one tenant's namespace could spend another tenant's credits."""
    api, engine = auth
    _tenant_with_user(api, "acme", "alice")
    _tenant_with_user(api, "globex", "bob")
    assert _bind(api, "team-a", "acme").status_code == 201
    before = snapshot(engine, skip=("idempotency_keys", "alembic_version", "admin_actions"))
    refused = _bind(api, "team-a", "globex")
    assert refused.status_code == 409, refused.text
    problem = refused.json()
    assert problem["type"] == "https://aijobs.io/problems/namespace-bound-elsewhere"
    assert (problem["namespace"], problem["account"], problem["heldBy"]) == ("team-a", "globex", "acme")
    assert "bound to account 'acme'" in problem["detail"]
    assert snapshot(engine, skip=("idempotency_keys", "alembic_version", "admin_actions")) == before
    assert _may_charge(api, "team-a", "globex") == 403
    assert _may_charge(api, "team-a", "acme") == 200
    # Binding it to its holder again is still an idempotent success.
    assert _bind(api, "team-a", "acme").status_code == 201
    assert api.ok("GET", "/v1/bindings?namespace=team-a")["items"] == [
        {"namespace": "team-a", "account": "acme"}
    ]
    # Once the holder lets go, the other account may have it.
    released = api.http.delete("/v1/bindings/team-a/acme", headers=api.headers("operator", "release-1"))
    assert released.status_code == 200
    assert _bind(api, "team-a", "globex").status_code == 201
    assert _may_charge(api, "team-a", "globex") == 200 and _may_charge(api, "team-a", "acme") == 403


def test_of_two_accounts_binding_one_namespace_at_once_exactly_one_wins(auth: AuthFx) -> None:
    api, _ = auth
    _tenant_with_user(api, "acme", "alice")
    _tenant_with_user(api, "globex", "bob")
    namespaces = [f"team-{i}" for i in range(8)]
    for namespace in namespaces:
        start = threading.Barrier(2, timeout=30)

        def race(
            account: str, namespace: str = namespace, start: threading.Barrier = start
        ) -> httpx.Response:
            start.wait()
            return _bind(api, namespace, account)

        with ThreadPoolExecutor(2) as pool:
            answers = dict(zip(("acme", "globex"), pool.map(race, ("acme", "globex")), strict=True))
        codes = sorted(r.status_code for r in answers.values())
        assert codes == [201, 409], {a: r.text for a, r in answers.items()}
        winner = next(a for a, r in answers.items() if r.status_code == 201)
        loser = next(r for r in answers.values() if r.status_code == 409)
        assert loser.json()["heldBy"] == winner
        held = api.ok("GET", f"/v1/bindings?namespace={namespace}")["items"]
        assert held == [{"namespace": namespace, "account": winner}]


def test_a_bind_that_loses_a_race_in_the_database_is_a_409_naming_the_winner(auth: AuthFx) -> None:
    """The check before the insert cannot see a concurrent bind that has not committed yet: the
    unique index is the guard, and losing to it is the same refusal, not a 500."""
    api, engine = auth
    _tenant_with_user(api, "acme", "alice")
    _tenant_with_user(api, "globex", "bob")

    def waiting_on_a_lock() -> bool:
        with engine.connect() as probe:
            waiting = probe.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        return bool(waiting)

    with engine.connect() as winner, ThreadPoolExecutor(1) as pool:
        winner.begin()
        winner.execute(sa.insert(Binding).values(namespace="team-a", account_id="acme", created_at=utcnow()))
        loser = pool.submit(_bind, api, "team-a", "globex")  # reads no holder, then waits on the index
        deadline = time.monotonic() + 30
        while not (loser.done() or waiting_on_a_lock()):
            assert time.monotonic() < deadline, "the second bind neither finished nor waited"
            time.sleep(0.02)
        winner.commit()
        answer = loser.result(timeout=30)
    assert answer.status_code == 409, answer.text
    assert answer.json()["heldBy"] == "acme"
    assert api.ok("GET", "/v1/bindings?namespace=team-a")["items"] == [
        {"namespace": "team-a", "account": "acme"}
    ]
    assert _may_charge(api, "team-a", "globex") == 403
