"""Payment: two-phase credits on a double-entry ledger, over real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from aijobs_services.kit.db import make_engine
from aijobs_services.payment import ledger

from aijobs.wire.tokens import TokenSigner
from tests.services.conftest import Api, snapshot

Payment = tuple[Api, sa.Engine]


def _account(api: Api, name: str = "acme", credits: int = 100) -> None:
    api.ok("POST", "/v1/accounts", {"id": name})
    if credits:
        api.ok("POST", f"/v1/accounts/{name}/top-ups", {"amount": credits})


def _hold(api: Api, amount: int = 10, job: str = "job-1", **kw: Any) -> httpx.Response:
    return api.post("/v1/holds", {"account": "acme", "jobId": job, "amount": amount}, caller="operator", **kw)


def _balance(api: Api, name: str = "acme") -> dict[str, int]:
    return api.ok("GET", f"/v1/accounts/{name}")


def test_hold_then_capture_charges_the_price_once(payment: Payment) -> None:
    api, _ = payment
    _account(api)
    hold = _hold(api, 30).json()
    assert _balance(api) == {"id": "acme", "available": 70, "held": 30, "balance": 100}
    captured = api.ok("POST", f"/v1/holds/{hold['id']}/capture", caller="operator")
    again = api.ok("POST", f"/v1/holds/{hold['id']}/capture", caller="operator")  # another key: still once
    assert captured["state"] == again["state"] == "captured"
    assert _balance(api) == {"id": "acme", "available": 70, "held": 0, "balance": 70}
    charges = api.ok("GET", "/v1/jobs/job-1/charges", caller="operator")
    assert charges["charged"] == 30
    assert [e["kind"] for e in charges["entries"]] == ["hold", "hold", "capture", "capture"]
    assert api.ok("GET", "/v1/ledger/check")["consistent"] is True


def test_hold_then_release_returns_every_credit(payment: Payment) -> None:
    api, _ = payment
    _account(api)
    hold = _hold(api, 30).json()
    assert api.ok("POST", f"/v1/holds/{hold['id']}/release", caller="operator")["state"] == "released"
    assert api.ok("POST", f"/v1/holds/{hold['id']}/release", caller="operator")["state"] == "released"
    assert _balance(api) == {"id": "acme", "available": 100, "held": 0, "balance": 100}
    assert api.ok("GET", "/v1/jobs/job-1/charges")["charged"] == 0


@pytest.mark.parametrize(
    ("first", "then", "state"),
    [
        pytest.param("capture", "release", "captured", id="release-after-capture"),
        pytest.param("release", "capture", "released", id="capture-after-release"),
    ],
)
def test_a_settled_hold_is_final(payment: Payment, first: str, then: str, state: str) -> None:
    api, engine = payment
    _account(api)
    hold = _hold(api, 30).json()
    api.ok("POST", f"/v1/holds/{hold['id']}/{first}", caller="operator")
    before = snapshot(engine)
    refused = api.post(f"/v1/holds/{hold['id']}/{then}", caller="operator")
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"].endswith("/hold-settled") and refused.json()["state"] == state
    assert snapshot(engine) == before


def _expire_in_db(engine: sa.Engine, hold_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text("update holds set expires_at = now() - interval '1 second' where id = :id"),
            {"id": hold_id},
        )


def test_an_expired_hold_cannot_be_captured_and_its_credits_come_back(payment: Payment) -> None:
    api, engine = payment
    _account(api)
    hold = _hold(api, 40).json()
    _expire_in_db(engine, hold["id"])
    refused = api.post(f"/v1/holds/{hold['id']}/capture", caller="operator")
    assert refused.status_code == 409 and refused.json()["type"].endswith("/hold-expired")
    assert _balance(api) == {"id": "acme", "available": 100, "held": 0, "balance": 100}
    assert api.ok("GET", f"/v1/holds/{hold['id']}")["state"] == "expired"


def test_the_sweep_releases_expired_holds(payment: Payment) -> None:
    api, engine = payment
    _account(api)
    holds = [_hold(api, 10, job=f"job-{i}").json() for i in range(3)]
    _expire_in_db(engine, holds[0]["id"])
    with sa.orm.Session(engine) as session, session.begin():
        assert ledger.expire_due(session) == 1
    assert _balance(api) == {"id": "acme", "available": 80, "held": 20, "balance": 100}
    assert api.ok("GET", "/v1/ledger/check")["consistent"] is True


def test_an_active_hold_can_be_extended(payment: Payment) -> None:
    api, _ = payment
    _account(api)
    hold = _hold(api, 10).json()
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).isoformat()
    extended = api.ok("POST", f"/v1/holds/{hold['id']}/extend", {"expiresAt": later}, caller="operator")
    assert dt.datetime.fromisoformat(extended["expiresAt"]) == dt.datetime.fromisoformat(later)


@pytest.mark.parametrize(
    ("settle", "delta", "status", "kind"),
    [
        pytest.param(None, dt.timedelta(days=31), 422, "bad-expiry", id="past-the-longest-hold"),
        pytest.param(None, -dt.timedelta(minutes=1), 422, "bad-expiry", id="into-the-past"),
        pytest.param("capture", dt.timedelta(days=2), 409, "hold-settled", id="captured"),
        pytest.param("release", dt.timedelta(days=2), 409, "hold-settled", id="released"),
    ],
)
def test_a_hold_is_extended_only_while_active_and_within_its_longest_life(
    payment: Payment, settle: str | None, delta: dt.timedelta, status: int, kind: str
) -> None:
    api, engine = payment
    _account(api)
    hold = _hold(api, 10).json()
    if settle:
        api.ok("POST", f"/v1/holds/{hold['id']}/{settle}", caller="operator")
    before = snapshot(engine)
    expires = (dt.datetime.now(dt.UTC) + delta).isoformat()
    refused = api.post(f"/v1/holds/{hold['id']}/extend", {"expiresAt": expires}, caller="operator")
    assert (refused.status_code, refused.json()["type"]) == (status, f"https://aijobs.io/problems/{kind}")
    assert snapshot(engine) == before


def test_the_openapi_documents_each_answer_of_a_hold_as_the_service_gives_it(payment: Payment) -> None:
    """A client (and the fuzzer) reads what a route answers from the schema: the body of each
    success, and each refusal with its problem type, as application/problem+json."""
    api, _ = payment
    _account(api)
    doc = api.http.get("/openapi.json").json()
    place = doc["paths"]["/v1/holds"]["post"]["responses"]
    assert place["201"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Hold"}
    for status, kind in [("402", "insufficient-credits"), ("404", "unknown-account"), ("422", "bad-expiry")]:
        assert (
            "application/problem+json" in place[status]["content"]
            and f"`{kind}`" in place[status]["description"]
        )
    capture = doc["paths"]["/v1/holds/{hold_id}/capture"]["post"]["responses"]
    assert (
        "`hold-settled`" in capture["409"]["description"]
        and "`hold-expired`" in capture["409"]["description"]
    )
    charges = doc["paths"]["/v1/jobs/{job_id}/charges"]["get"]["responses"]
    assert charges["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Charges"}
    refused = _hold(api, 1000)
    assert refused.status_code == 402 and refused.headers["content-type"] == "application/problem+json"


def _long(n: int) -> str:
    return "x" * n


BAD_REQUESTS = [
    pytest.param(
        {"content": b'{"account": "acme", "jobId": ', "headers": {"content-type": "application/json"}},
        400,
        "malformed-json",
        None,
        id="malformed-json",
    ),
    pytest.param(
        {"json": {"account": "acme", "jobId": "j"}}, 422, "validation-error", "body.amount", id="missing"
    ),
    pytest.param(
        {"json": {"account": "acme", "jobId": "j", "amount": "ten"}},
        422,
        "validation-error",
        "body.amount",
        id="wrong-type",
    ),
    pytest.param(
        {"json": {"account": "acme", "jobId": "j", "amount": 0}},
        422,
        "validation-error",
        "body.amount",
        id="zero",
    ),
    pytest.param(
        {"json": {"account": "acme", "jobId": "j", "amount": -5}},
        422,
        "validation-error",
        "body.amount",
        id="negative",
    ),
    pytest.param(
        {"json": {"account": "acme", "jobId": "j", "amount": 1, "tip": 5}},
        422,
        "validation-error",
        "body.tip",
        id="unknown-field",
    ),
    pytest.param(
        {"json": {"account": "nobody", "jobId": "j", "amount": 1}},
        404,
        "unknown-account",
        None,
        id="unknown-account",
    ),
    pytest.param(
        {"json": {"account": "acme", "jobId": "j", "amount": 101}},
        402,
        "insufficient-credits",
        None,
        id="insufficient-credits",
    ),
    pytest.param(
        {"json": {"account": "acme", "jobId": _long(100_000), "amount": 1}},
        413,
        "payload-too-large",
        None,
        id="oversized",
    ),
    pytest.param(
        {"json": {"account": "acme", "jobId": "j", "amount": 1, "expiresAt": "2001-01-01T00:00:00Z"}},
        422,
        "bad-expiry",
        None,
        id="expiry-in-the-past",
    ),
    pytest.param(
        {"json": {"account": "acme", "jobId": "j", "amount": 1}, "caller": None},
        401,
        "unauthenticated",
        None,
        id="no-token",
    ),
    pytest.param(
        {"json": {"account": "acme", "jobId": "j", "amount": 1}, "caller": "worker"},
        403,
        "forbidden",
        None,
        id="caller-not-allowed",
    ),
    pytest.param(
        {"json": {"account": "acme", "jobId": "j", "amount": 1}, "key": None},
        400,
        "idempotency-key-missing",
        None,
        id="no-idempotency-key",
    ),
    # Money is an integer JSON number and nothing else: no coercion from strings, fractions, booleans
    # (2.0 is the integer 2, as JSON Schema says: see the test after this table).
    *(
        pytest.param(
            {"json": {"account": "acme", "jobId": "j", "amount": amount}},
            422,
            "validation-error",
            "body.amount",
            id=f"amount-{name}",
        )
        for name, amount in [("string-3", "3"), ("fraction-2.5", 2.5), ("true", True), ("null", None)]
    ),
    pytest.param(
        {"content": b"[" * 50_000 + b"]" * 50_000, "headers": {"content-type": "application/json"}},
        413,
        "payload-too-large",
        None,
        id="nested-50000-deep",
    ),
    pytest.param(
        {"content": iter([b'{"account": "acme", "jobId": "', b"x" * 70_000, b'", "amount": 1}'])},
        413,
        "payload-too-large",
        None,
        id="chunked-over-the-limit",
    ),
]


@pytest.mark.parametrize(("request_kw", "status", "kind", "field"), BAD_REQUESTS)
def test_a_bad_hold_request_gets_a_clear_problem_and_changes_nothing(
    payment: Payment, request_kw: dict[str, Any], status: int, kind: str, field: str | None
) -> None:
    api, engine = payment
    _account(api)
    before = snapshot(engine)
    kw = dict(request_kw)
    caller = kw.pop("caller", "operator")
    key = kw.pop("key", "bad-request-key")
    headers = api.headers(caller, key) | kw.pop("headers", {})
    response = api.http.post("/v1/holds", headers=headers, **kw)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == f"https://aijobs.io/problems/{kind}"
    assert problem["status"] == status and problem["detail"]
    if field:
        assert field in problem["detail"] and any(e["field"] == field for e in problem["errors"])
    assert snapshot(engine) == before


def test_an_amount_written_as_an_integral_number_is_that_many_credits(payment: Payment) -> None:
    api, _ = payment
    _account(api)
    hold = _hold(api, amount=2.0)  # type: ignore[arg-type]  # JSON's 2.0, as a client may write it
    assert hold.status_code == 201, hold.text
    assert hold.json()["amount"] == 2 and _balance(api)["held"] == 2


def test_a_forged_or_expired_service_token_is_refused(payment: Payment) -> None:
    api, _ = payment
    forged = TokenSigner("operator", "not-the-secret-but-32-bytes-long!").token_for("payment")
    assert api.http.get("/v1/accounts/acme", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    import jwt

    old = jwt.encode(
        {"iss": "operator", "aud": "payment", "iat": 999_000, "exp": 1_000_000},
        api.secrets["operator"],
        "HS256",
    )
    response = api.http.get("/v1/accounts/acme", headers={"Authorization": f"Bearer {old}"})
    assert response.status_code == 401 and "expired" in response.json()["detail"]
    wrong_audience = TokenSigner("operator", api.secrets["operator"]).token_for("storage")
    assert (
        api.http.get("/v1/accounts/x", headers={"Authorization": f"Bearer {wrong_audience}"}).status_code
        == 401
    )


def test_a_replay_returns_the_first_answer_and_a_changed_body_is_refused(payment: Payment) -> None:
    api, engine = payment
    _account(api)
    first = _hold(api, 10, key="hold-key-1")
    _ = first.json()  # the caller "loses" this response...
    retry = _hold(api, 10, key="hold-key-1")  # ...and retries with the same key
    assert retry.status_code == 201 and retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    before = snapshot(engine)
    changed = _hold(api, 11, key="hold-key-1")
    assert changed.status_code == 422 and changed.json()["type"].endswith("/idempotency-key-reused")
    assert snapshot(engine) == before
    holds = api.ok("GET", "/v1/jobs/job-1/charges")["holds"]
    assert len(holds) == 1
    assert "aijobs_idempotent_replays_total" in api.http.get("/metrics").text


def test_a_stored_refusal_is_replayed_even_after_the_account_is_topped_up(payment: Payment) -> None:
    """A retry of one logical request gets the same answer; a new attempt needs a new key."""
    api, _ = payment
    _account(api, credits=5)
    assert _hold(api, 10, key="k").status_code == 402
    api.ok("POST", "/v1/accounts/acme/top-ups", {"amount": 100})
    assert _hold(api, 10, key="k").status_code == 402
    assert _hold(api, 10, key="k2").status_code == 201


def test_the_ledger_check_finds_a_tampered_balance(payment: Payment) -> None:
    api, engine = payment
    _account(api)
    _hold(api, 10)
    assert api.ok("GET", "/v1/ledger/check")["consistent"] is True
    with engine.begin() as conn:
        conn.execute(sa.text("update accounts set available = available + 5 where id = 'acme'"))
    report = api.ok("GET", "/v1/ledger/check")
    assert report["consistent"] is False
    assert report["problems"] == ["acme:available: cached 95, ledger says 90"]


async def _hammer(url: str, api: Api, bodies: list[tuple[str, dict[str, Any]]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(
            *(
                client.post("/v1/holds", json=body, headers=api.headers("operator", key))
                for key, body in bodies
            )
        )


def test_concurrent_holds_on_a_small_balance_never_overdraw(
    pg_url: str, service_process: Any, secrets: Any
) -> None:
    proc = service_process("payment", pg_url, workers=2)
    with httpx.Client(base_url=proc.url) as http:
        api = Api(http, "payment", secrets)
        _account(api, credits=10)
        bodies = [(f"k{i}", {"account": "acme", "jobId": f"job-{i}", "amount": 3}) for i in range(40)]
        responses = asyncio.run(_hammer(proc.url, api, bodies))
        codes = sorted(r.status_code for r in responses)
        assert codes.count(201) == 3 and codes.count(402) == 37
        assert _balance(api) == {"id": "acme", "available": 1, "held": 9, "balance": 10}
        assert api.ok("GET", "/v1/ledger/check")["consistent"] is True


def test_concurrent_identical_requests_act_once(pg_url: str, service_process: Any, secrets: Any) -> None:
    proc = service_process("payment", pg_url, workers=2)
    with httpx.Client(base_url=proc.url) as http:
        api = Api(http, "payment", secrets)
        _account(api)
        body = {"account": "acme", "jobId": "job-1", "amount": 7}
        responses = asyncio.run(_hammer(proc.url, api, [("same-key", body)] * 25))
        assert {r.status_code for r in responses} == {201}
        assert len({json.dumps(r.json(), sort_keys=True) for r in responses}) == 1
        assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 24
        assert _balance(api) == {"id": "acme", "available": 93, "held": 7, "balance": 100}
    engine = make_engine(pg_url)
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("select count(distinct txn_id) from ledger_entries where kind='hold'")
            ).scalar()
            == 1
        )
    engine.dispose()


@pytest.mark.parametrize(
    ("claims", "says"),
    [
        pytest.param({"iat": 0}, "exp", id="no-expiry"),
        pytest.param({"exp": 0}, "iat", id="no-issued-at"),
        pytest.param({"iat": 0, "exp": 10 * 365 * 86400}, "900s at most", id="ten-year-token"),
        pytest.param({"iat": 0, "exp": 3600}, "900s at most", id="one-hour-token"),
    ],
)
def test_a_service_token_without_expiry_or_with_a_long_life_is_refused(
    payment: Payment, secrets: dict[str, str], claims: dict[str, int], says: str
) -> None:
    import time

    import jwt

    api, engine = payment
    _account(api)
    before = snapshot(engine)
    now = int(time.time())
    body = {"iss": "operator", "aud": "payment", **{k: now + v for k, v in claims.items()}}
    token = jwt.encode(body, secrets["operator"], algorithm="HS256")
    response = api.http.post(
        "/v1/holds",
        json={"account": "acme", "jobId": "j", "amount": 1},
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "long-lived"},
    )
    assert response.status_code == 401, response.text
    assert says in response.json()["detail"]
    assert snapshot(engine) == before


def test_every_admin_money_movement_lands_once_in_an_audit_trail_only_admins_read(payment: Payment) -> None:
    api, _ = payment
    api.ok("POST", "/v1/accounts", {"id": "acme"})
    top_up = {"amount": 50, "reason": "welcome credits"}
    first = api.post("/v1/accounts/acme/top-ups", top_up, key="top-up-1")
    again = api.post("/v1/accounts/acme/top-ups", top_up, key="top-up-1")  # a retry moves money once
    assert first.json() == again.json()
    trail = api.ok("GET", "/v1/admin/audit")["items"]
    assert [(e["action"], e["target"]) for e in trail] == [
        ("account.top-up", "acme"),
        ("account.open", "acme"),
    ]
    assert trail[0]["detail"]["amount"] == 50 and trail[0]["detail"]["reason"] == "welcome credits"
    assert trail[0]["detail"]["key"] == "top-up-1" and trail[0]["caller"] == "admin"
    assert api.get("/v1/admin/audit", caller="operator").status_code == 403
    assert api.ok("GET", "/v1/accounts/acme")["available"] == 50


def test_the_whole_audit_trail_is_read_page_by_page(payment: Payment) -> None:
    api, _ = payment
    api.ok("POST", "/v1/accounts", {"id": "acme"})
    for i in range(7):
        api.ok("POST", "/v1/accounts/acme/top-ups", {"amount": 1, "reason": f"gift {i}"})
    pages, params = [], {"limit": 3}
    while True:
        page = api.ok("GET", "/v1/admin/audit", params=params)
        pages.append(page["items"])
        if page["next"] is None:
            break
        params = {"limit": 3, "before": page["next"]}
    entries = [e for page in pages for e in page]
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [e["detail"].get("reason") for e in entries] == [f"gift {i}" for i in reversed(range(7))] + [None]
    assert len({e["id"] for e in entries}) == 8 and entries[-1]["action"] == "account.open"
