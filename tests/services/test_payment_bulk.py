"""Payment's hot path: partial captures, the bulk routes (each item the single route's operation
under its own key) and one statement per new hold or capture on PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aijobs_services.payment import ledger

from tests.services.conftest import Api, _in_process

Payment = tuple[Api, sa.Engine]


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"])
def either(request: pytest.FixtureRequest, secrets: dict[str, str], tmp_path: Path) -> Iterator[Payment]:
    """The service on PostgreSQL (one statement per new hold or capture) and on SQLite (the
    portable way the demo takes): both must answer alike."""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'payment.db'}"
    yield from _in_process("payment", url, secrets)


def _account(api: Api, credits: int = 100, name: str = "acme") -> None:
    api.ok("POST", "/v1/accounts", {"id": name})
    api.ok("POST", f"/v1/accounts/{name}/top-ups", {"amount": credits})


def _hold(api: Api, amount: int = 30, job: str = "job-1", **body: Any) -> dict[str, Any]:
    return dict(
        api.ok(
            "POST",
            "/v1/holds",
            {"account": "acme", "jobId": job, "amount": amount, **body},
            caller="operator",
        )
    )


def _balance(api: Api) -> tuple[int, int]:
    account = api.ok("GET", "/v1/accounts/acme")
    return account["available"], account["held"]


def _bulk(api: Api, route: str, items: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    answer = api.ok(
        "POST",
        f"/v1/bulk/{route}",
        {"items": [{"key": k, "request": r} for k, r in items]},
        caller="operator",
        key=None,
    )
    return list(answer["items"])


def test_a_partial_capture_charges_a_part_and_releases_the_rest_at_once(either: Payment) -> None:
    api, _ = either
    _account(api)
    hold = _hold(api)
    captured = api.post(f"/v1/holds/{hold['id']}/capture", {"amount": 12}, caller="operator", key="c1")
    assert captured.status_code == 200
    body = captured.json()
    assert (body["state"], body["amount"], body["capturedAmount"], body["releasedAmount"]) == (
        "captured",
        30,
        12,
        18,
    )
    assert _balance(api) == (88, 0)
    charges = api.ok("GET", "/v1/jobs/job-1/charges", caller="operator")
    assert charges["charged"] == 12
    assert [(e["kind"], e["amount"]) for e in charges["entries"]] == [
        ("hold", -30),
        ("hold", 30),
        ("capture", -12),
        ("capture", 12),
        ("release", -18),
        ("release", 18),
    ]
    replay = api.post(f"/v1/holds/{hold['id']}/capture", {"amount": 12}, caller="operator", key="c1")
    assert replay.json() == body and replay.headers["idempotent-replayed"] == "true"
    # The same key without a body is another request; a second capture changes nothing.
    assert api.post(f"/v1/holds/{hold['id']}/capture", caller="operator", key="c1").status_code == 422
    assert api.ok("POST", f"/v1/holds/{hold['id']}/capture", caller="operator")["capturedAmount"] == 12
    assert api.ok("GET", "/v1/ledger/check")["consistent"] is True


@pytest.mark.parametrize("amount", [0, 31])
def test_a_capture_of_nothing_or_more_than_held_is_refused_and_moves_nothing(
    either: Payment, amount: int
) -> None:
    api, _ = either
    _account(api)
    hold = _hold(api)
    refused = api.post(f"/v1/holds/{hold['id']}/capture", {"amount": amount}, caller="operator")
    assert refused.status_code == 422
    assert _balance(api) == (70, 30)
    assert api.ok("GET", f"/v1/holds/{hold['id']}")["state"] == "active"


def test_the_answer_of_a_hold_and_a_capture_is_the_hold_as_read_back(either: Payment) -> None:
    """On PostgreSQL these answers are written by the statement that acts: they must say what
    the portable way says, to the byte (a whole second and a fraction of one alike)."""
    api, _ = either
    _account(api)
    whole = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).replace(microsecond=0)
    for job, expires in (("job-1", whole), ("job-2", whole + dt.timedelta(microseconds=5))):
        hold = _hold(api, 10, job, expiresAt=expires.isoformat())
        assert hold == api.ok("GET", f"/v1/holds/{hold['id']}")
        captured = api.ok("POST", f"/v1/holds/{hold['id']}/capture", caller="operator")
        assert captured == api.ok("GET", f"/v1/holds/{hold['id']}")


def test_a_new_hold_and_its_capture_are_one_statement_each_on_postgres(payment: Payment) -> None:
    api, engine = payment
    _account(api)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        hold = _hold(api)
        assert len(statements) == 1, statements
        api.ok("POST", f"/v1/holds/{hold['id']}/capture", caller="operator")
        assert len(statements) == 2, statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert _balance(api) == (70, 0)
    assert api.ok("GET", "/v1/ledger/check")["consistent"] is True


def test_bulk_holds_answer_each_item_as_its_single_call_would(either: Payment) -> None:
    api, _ = either
    _account(api, 50)
    hold = {"account": "acme", "jobId": "job-1", "amount": 30}
    single = api.post("/v1/holds", {**hold, "jobId": "job-0", "amount": 5}, caller="operator", key="h0")
    answers = _bulk(
        api,
        "holds",
        [
            ("h0", {**hold, "jobId": "job-0", "amount": 5}),  # the single call's key: replayed
            ("h1", hold),
            ("h2", {**hold, "jobId": "job-2"}),  # 15 left: 402, stored
            ("h1", {**hold, "amount": 1}),  # h1 again, another body: reused
            ("h3", {**hold, "amount": -1}),  # invalid: its own 422, nothing stored
            ("h4", {**hold, "jobId": "job-4", "amount": 15}),
        ],
    )
    assert [(a["key"], a["status"], a["replayed"]) for a in answers] == [
        ("h0", 201, True),
        ("h1", 201, False),
        ("h2", 402, False),
        ("h1", 422, False),
        ("h3", 422, False),
        ("h4", 201, False),
    ]
    assert answers[0]["body"] == single.json()
    # A refused item is decided after the batch's one-statement items: what it saw available then.
    assert answers[2]["body"]["requested"] == 30 and answers[2]["body"]["available"] in (0, 15)
    assert answers[3]["body"]["type"].endswith("/idempotency-key-reused")
    assert answers[4]["body"]["type"].endswith("/validation-error")
    assert _balance(api) == (0, 50)
    # Each item is its single call: replayed by it, the refusal too, whatever the balance now.
    api.ok("POST", "/v1/accounts/acme/top-ups", {"amount": 100})
    again = api.post("/v1/holds", {**hold, "jobId": "job-2"}, caller="operator", key="h2")
    assert (again.status_code, again.headers["idempotent-replayed"]) == (402, "true")
    assert api.post("/v1/holds", hold, caller="operator", key="h1").json() == answers[1]["body"]
    # The invalid item stored nothing: sent right, it acts.
    assert api.post("/v1/holds", {**hold, "amount": 1}, caller="operator", key="h3").status_code == 201
    assert api.ok("GET", "/v1/ledger/check")["consistent"] is True


def test_bulk_captures_answer_each_item_as_its_single_call_would(either: Payment) -> None:
    api, _ = either
    _account(api)
    h = [_hold(api, 20, f"job-{i}")["id"] for i in range(4)]
    single = api.post(f"/v1/holds/{h[0]}/capture", caller="operator", key="c0")
    answers = _bulk(
        api,
        "captures",
        [
            ("c0", {"holdId": h[0]}),  # the single call without a body: replayed
            ("c1", {"holdId": h[1], "amount": 5}),  # partial
            ("c2", {"holdId": h[2]}),
            ("c3", {"holdId": "hold-nope"}),
            ("c4", {"holdId": h[3], "amount": 21}),  # more than held
            ("c5", {"holdId": h[3], "bogus": 1}),  # invalid
        ],
    )
    assert [(a["status"], a["replayed"]) for a in answers] == [
        (200, True),
        (200, False),
        (200, False),
        (404, False),
        (422, False),
        (422, False),
    ]
    assert answers[0]["body"] == single.json()
    assert (answers[1]["body"]["capturedAmount"], answers[1]["body"]["releasedAmount"]) == (5, 15)
    assert answers[2]["body"]["capturedAmount"] == 20
    assert answers[4]["body"]["type"].endswith("/bad-capture-amount")
    assert _balance(api) == (20 + 15, 20)
    # A single call with an item's key and body replays it; with another body it is refused.
    replay = api.post(f"/v1/holds/{h[1]}/capture", {"amount": 5}, caller="operator", key="c1")
    assert (replay.json(), replay.headers["idempotent-replayed"]) == (answers[1]["body"], "true")
    assert (
        api.post(f"/v1/holds/{h[2]}/capture", {"amount": 20}, caller="operator", key="c2").status_code == 422
    )
    assert api.ok("GET", "/v1/jobs/job-1/charges", caller="operator")["charged"] == 5
    assert api.ok("GET", "/v1/ledger/check")["consistent"] is True


def test_a_failing_item_is_that_items_500_and_the_others_commit(
    payment: Payment, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, _ = payment
    _account(api)
    h = [_hold(api, 10, f"job-{i}")["id"] for i in range(3)]
    capture, quick = ledger.capture, ledger.quick_capture

    def broken(session: Any, hold_id: str, *args: Any) -> Any:
        if hold_id == h[1]:
            session.execute(sa.text("UPDATE accounts SET available = available + 1000"))  # half done
            raise RuntimeError("the disk is on fire")
        return capture(session, hold_id, *args)

    def slow(key: Any, hold_id: str, amount: Any) -> Any:
        return None if hold_id == h[1] else quick(key, hold_id, amount)

    monkeypatch.setattr(ledger, "capture", broken)
    monkeypatch.setattr(ledger, "quick_capture", slow)
    answers = _bulk(api, "captures", [(f"c{i}", {"holdId": hold}) for i, hold in enumerate(h)])
    assert [a["status"] for a in answers] == [200, 500, 200]
    assert _balance(api) == (70, 10)  # the two others charged, nothing of the failed one kept
    monkeypatch.undo()
    retried = api.post(f"/v1/holds/{h[1]}/capture", caller="operator", key="c1")  # its key was not kept
    assert (retried.status_code, "idempotent-replayed" in retried.headers) == (200, False)
    assert api.ok("GET", "/v1/ledger/check")["consistent"] is True


def test_a_batch_whose_one_statement_fails_is_done_again_and_every_item_acts_once(
    payment: Payment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quick statement that fails (a key a racing request claimed first, a deadlock) aborts
    the batch's transaction: the batch is done again item by item, none of it twice."""
    api, _ = payment
    _account(api)
    quick = ledger.quick_hold
    clash = sa.text(
        "INSERT INTO accounts (id, available, held, created_at) VALUES ('acme', 0, 0, now()) RETURNING 'x'"
    )

    def racing(key: Any, account: str, job: str, *args: Any) -> Any:
        real = quick(key, account, job, *args)
        return ledger.Quick(clash, {}, 201) if job == "job-1" and real is not None else real

    monkeypatch.setattr(ledger, "quick_hold", racing)
    hold = {"account": "acme", "amount": 10}
    answers = _bulk(api, "holds", [(f"h{i}", {**hold, "jobId": f"job-{i}"}) for i in range(3)])
    assert [(a["status"], a["replayed"]) for a in answers] == [(201, False)] * 3
    assert _balance(api) == (70, 30)
    assert api.ok("GET", "/v1/ledger/check")["consistent"] is True
