"""The simulator's twins answer as the real services do.

One sequence of calls runs against a twin and against the real service (in process, on the
throwaway PostgreSQL); for each call the status, the problem type and the fields the operator
reads must agree, and so must the money at the end. A twin that drifts from its service makes
the simulation prove things about a system that does not exist; this test stops that.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aijobs_dev.simulation.twins import Account as TwinAccount
from aijobs_dev.simulation.twins import AITwin, AuthTwin, PaymentTwin, StorageTwin, Twin
from aijobs_dev.testbed.processes import make_secrets

from tests.services import images
from tests.services.conftest import Api, _in_process
from tests.services.test_storage import _storage

pytestmark = pytest.mark.postgres

Call = tuple[str, str, str | None, Any]  # method, path (with {placeholders}), key, JSON body


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(delta: dt.timedelta) -> str:
    return (_now() + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def _slug(body: Any) -> str | None:
    return str(body.get("type", "")).rsplit("/", 1)[-1] or None if isinstance(body, dict) else None


def _observable(status: int, body: Any, fields: tuple[str, ...]) -> tuple[Any, ...]:
    if status >= 400:
        return (status, _slug(body))
    picked = tuple((f, body.get(f)) for f in fields) if isinstance(body, dict) else ()
    return (status, *picked)


def _run(
    script: list[tuple[Call, tuple[str, ...], str | None]],
    real: Api,
    twin: Twin,
    caller: str,
    content: dict[str, bytes] | None = None,
) -> None:
    """Run the script on both; ``save`` names an id (from the answer's ``id``) later paths use."""
    ids_real: dict[str, str] = {}
    ids_twin: dict[str, str] = {}
    for (method, path, key, body), fields, save in script:
        real_path, twin_path = path.format(**ids_real), path.format(**ids_twin)
        if method == "PUT":
            name, params = body
            response = real.http.put(
                real_path, params=params, content=content[name], headers=real.headers(caller, key)
            )
            got_real = (response.status_code, response.json())
            reply = twin.handle(method, twin_path, key, None, params, content[name])
        elif method == "GET":
            response = real.get(real_path, caller=caller)
            got_real = (response.status_code, response.json())
            reply = twin.handle(method, twin_path, key, None, {}, b"")
        else:
            response = real.post(real_path, body, caller=caller, key=key)
            got_real = (response.status_code, response.json())
            reply = twin.handle(method, twin_path, key, body, {}, b"")
        expect = _observable(*got_real, fields)
        assert _observable(reply.status, reply.body, fields) == expect, f"{method} {path} key={key}"
        if save and got_real[0] < 300:
            ids_real[save], ids_twin[save] = got_real[1]["id"], reply.body["id"]


@pytest.fixture
def secrets() -> dict[str, str]:
    return make_secrets()


@pytest.fixture
def payment_real(pg_url: str, secrets: dict[str, str]) -> Iterator[tuple[Api, sa.Engine]]:
    yield from _in_process("payment", pg_url, secrets)


def test_the_payment_twin_moves_money_as_payment_does(payment_real: tuple[Api, sa.Engine]) -> None:
    real, _ = payment_real
    real.ok("POST", "/v1/accounts", {"id": "acme"})
    real.ok("POST", "/v1/accounts/acme/top-ups", {"amount": 50})
    twin = PaymentTwin(_now)
    twin.accounts["acme"] = TwinAccount(available=50)
    hold = {"account": "acme", "jobId": "job-1", "amount": 30, "expiresAt": _iso(dt.timedelta(hours=1))}
    hold2 = {"account": "acme", "jobId": "job-2", "amount": 10, "expiresAt": _iso(dt.timedelta(hours=1))}
    fields = ("state", "amount", "jobId")
    _run(
        [
            (("POST", "/v1/holds", "k1", hold), fields, "h1"),
            (("POST", "/v1/holds", "k1", hold), fields, None),  # replay
            (("POST", "/v1/holds", "k1", {**hold, "amount": 31}), fields, None),  # key reused
            (("POST", "/v1/holds", "k2", {**hold, "jobId": "job-9"}), fields, None),  # 402
            (
                ("POST", "/v1/holds", "k3", {**hold2, "expiresAt": _iso(-dt.timedelta(minutes=1))}),
                fields,
                None,
            ),
            (("POST", "/v1/holds", "k4", {**hold2, "expiresAt": _iso(dt.timedelta(days=31))}), fields, None),
            (("POST", "/v1/holds/{h1}/capture", "c1", None), fields, None),
            (("POST", "/v1/holds/{h1}/capture", "c1", None), fields, None),  # replay
            (("POST", "/v1/holds/{h1}/capture", "c2", None), fields, None),  # a second capture: no-op
            (("POST", "/v1/holds/{h1}/release", "r1", None), fields, None),  # captured: refused
            (("POST", "/v1/holds", "k5", hold2), fields, "h2"),
            (("POST", "/v1/holds/{h2}/release", "r2", None), fields, None),
            (("POST", "/v1/holds/{h2}/release", "r3", None), fields, None),  # already: no-op
            (("POST", "/v1/holds/{h2}/capture", "c3", None), fields, None),  # released: refused
            (("POST", "/v1/holds/hold-nope/capture", "c4", None), fields, None),
            (("GET", "/v1/jobs/job-1/charges", None, None), ("charged", "jobId"), None),
            (("GET", "/v1/holds/{h1}", None, None), fields, None),
        ],
        real,
        twin,
        "operator",
    )
    account = real.ok("GET", "/v1/accounts/acme")
    twin_account = twin.accounts["acme"]
    assert (account["available"], account["held"]) == (twin_account.available, twin_account.held) == (20, 0)


def _active_pages(get: Any) -> list[list[tuple[str, int]]]:
    """Every page of ``GET /v1/holds?state=active&limit=2``, each as its holds' (jobId, amount)."""
    pages: list[list[tuple[str, int]]] = []
    params: dict[str, Any] = {"state": "active", "limit": 2}
    while True:
        page = get(params)
        pages.append(sorted((h["jobId"], h["amount"]) for h in page["items"]))
        assert all(h["state"] == "active" for h in page["items"])
        if page["next"] is None:
            return pages
        params = {**params, "after": page["next"]}


def test_the_payment_twin_lists_active_holds_as_payment_does(payment_real: tuple[Api, sa.Engine]) -> None:
    """What the auditor reads each pass: the holds active now, in pages that end, settled ones
    left out; a state Payment does not know is refused alike."""
    real, _ = payment_real
    real.ok("POST", "/v1/accounts", {"id": "acme"})
    real.ok("POST", "/v1/accounts/acme/top-ups", {"amount": 50})
    twin = PaymentTwin(_now)
    twin.accounts["acme"] = TwinAccount(available=50)
    expires = _iso(dt.timedelta(hours=1))
    script: list[tuple[Call, tuple[str, ...], str | None]] = [
        (
            (
                "POST",
                "/v1/holds",
                f"k{n}",
                {"account": "acme", "jobId": f"job-{n}", "amount": n, "expiresAt": expires},
            ),
            ("state",),
            f"h{n}",
        )
        for n in range(1, 6)
    ]
    script += [
        (("POST", "/v1/holds/{h2}/capture", "c2", None), ("state",), None),
        (("POST", "/v1/holds/{h4}/release", "r4", None), ("state",), None),
    ]
    _run(script, real, twin, "operator")

    def twin_get(params: dict[str, Any]) -> Any:
        reply = twin.handle("GET", "/v1/holds", None, None, {k: str(v) for k, v in params.items()}, b"")
        assert reply.status == 200
        return reply.body

    def real_get(params: dict[str, Any]) -> Any:
        response = real.http.get("/v1/holds", params=params, headers=real.headers("operator", None))
        assert response.status_code == 200, response.text
        return response.json()

    pages = _active_pages(real_get)
    # Ids order the pages (Payment's are random, the twin's counted): the same holds, each once.
    assert sorted(n for page in pages for n in page) == [("job-1", 1), ("job-3", 3), ("job-5", 5)]
    assert [len(p) for p in pages] == [len(p) for p in _active_pages(twin_get)] == [2, 1]
    assert sorted(x for p in _active_pages(twin_get) for x in p) == sorted(x for p in pages for x in p)
    bad = real.http.get("/v1/holds", params={"state": "pending"}, headers=real.headers("operator", None))
    twin_bad = twin.handle("GET", "/v1/holds", None, None, {"state": "pending"}, b"")
    assert (
        (bad.status_code, _slug(bad.json()))
        == (twin_bad.status, _slug(twin_bad.body))
        == (422, "validation-error")
    )


def _items(answer: Any) -> list[tuple[Any, ...]]:
    """What a bulk answer says of each item: key, status, replayed, and the problem's slug or
    the fields the operator reads."""
    fields = ("state", "amount", "jobId", "capturedAmount", "releasedAmount")
    return [
        (
            i["key"],
            i["status"],
            i["replayed"],
            _slug(i["body"]) if i["status"] >= 400 else tuple(i["body"].get(f) for f in fields),
        )
        for i in answer["items"]
    ]


def test_the_payment_twin_answers_bulk_calls_and_partial_captures_as_payment_does(
    payment_real: tuple[Api, sa.Engine],
) -> None:
    real, _ = payment_real
    real.ok("POST", "/v1/accounts", {"id": "acme"})
    real.ok("POST", "/v1/accounts/acme/top-ups", {"amount": 100})
    twin = PaymentTwin(_now)
    twin.accounts["acme"] = TwinAccount(available=100)
    hold = {"account": "acme", "jobId": "job-1", "amount": 30}
    fields = ("state", "amount", "jobId", "capturedAmount", "releasedAmount")
    ids: tuple[dict[str, str], dict[str, str]] = ({}, {})  # real's, twin's

    def both(method: str, path: str, key: str | None, body: Any) -> Any:
        """One call on each; their answers compared; the real one returned."""
        real_answer = real.post(
            path.format(**ids[0]), body(ids[0]) if callable(body) else body, caller="operator", key=key
        )
        twin_reply = twin.handle(
            method, path.format(**ids[1]), key, body(ids[1]) if callable(body) else body, {}, b""
        )
        got = real_answer.json()
        if path.startswith("/v1/bulk/"):
            assert real_answer.status_code == twin_reply.status == 200
            assert _items(got) == _items(twin_reply.body), f"{path} {body}"
        else:
            expect = _observable(real_answer.status_code, got, fields)
            assert _observable(twin_reply.status, twin_reply.body, fields) == expect, f"{path} key={key}"
        return got, twin_reply.body

    real_h1, twin_h1 = both("POST", "/v1/holds", "s1", hold)
    ids[0]["h1"], ids[1]["h1"] = real_h1["id"], twin_h1["id"]
    got, twin_got = both(
        "POST",
        "/v1/bulk/holds",
        None,
        {
            "items": [
                {"key": "s1", "request": hold},  # the single call's key: replayed
                {"key": "b1", "request": {**hold, "jobId": "job-2", "amount": 40}},
                {"key": "b2", "request": {**hold, "jobId": "job-3", "amount": 40}},  # 402
                {"key": "s1", "request": {**hold, "amount": 31}},  # a reused key
                {"key": "b3", "request": {**hold, "amount": 0}},  # invalid
            ]
        },
    )
    ids[0]["h2"], ids[1]["h2"] = got["items"][1]["body"]["id"], twin_got["items"][1]["body"]["id"]
    both("POST", "/v1/holds", "b1", {**hold, "jobId": "job-2", "amount": 40})  # a single call replays an item
    both("POST", "/v1/holds", "b2", {**hold, "jobId": "job-3", "amount": 40})  # and its stored refusal
    both("POST", "/v1/holds/{h2}/capture", "s2", {"amount": 12})  # a partial capture
    both(
        "POST",
        "/v1/bulk/captures",
        None,
        lambda i: {
            "items": [
                {"key": "s2", "request": {"holdId": i["h2"], "amount": 12}},  # the single call: replayed
                {"key": "c1", "request": {"holdId": i["h1"]}},  # the whole hold
                {"key": "c2", "request": {"holdId": "hold-nope"}},
                {"key": "s2", "request": {"holdId": i["h2"]}},  # reused: no body is another request
                {"key": "c3", "request": {"holdId": i["h1"], "amount": 0}},  # invalid
            ]
        },
    )
    both("POST", "/v1/holds/{h1}/capture", "c1", None)  # a single call replays an item
    both("POST", "/v1/holds/{h1}/capture", "c1", {"amount": 30})  # with a body: another request
    both("POST", "/v1/holds", "s3", {**hold, "jobId": "job-4", "amount": 10})
    for job in ("job-1", "job-2"):
        real_charges = real.ok("GET", f"/v1/jobs/{job}/charges", caller="operator")
        twin_charges = twin.handle("GET", f"/v1/jobs/{job}/charges", None, None, {}, b"").body
        assert real_charges["charged"] == twin_charges["charged"]
        assert [(e["kind"], e["amount"]) for e in real_charges["entries"]] == [
            (e["kind"], e["amount"]) for e in twin_charges["entries"]
        ]
    account = real.ok("GET", "/v1/accounts/acme")
    twin_account = twin.accounts["acme"]
    assert (account["available"], account["held"]) == (twin_account.available, twin_account.held) == (48, 10)


def test_the_storage_twin_stores_and_deletes_as_storage_does(
    pg_url: str, secrets: dict[str, str], tmp_path: Path
) -> None:
    twin = StorageTwin(_now)
    params = {"account": "acme", "jobId": "u1", "state": "committed"}
    content = {"a": images.png(), "b": images.png(color=(0, 0, 255))}
    fields = ("state", "kind", "jobId", "account")
    script: list[tuple[Call, tuple[str, ...], str | None]] = [
        (("PUT", "/v1/objects/job:u1:input", None, ("a", params)), fields, "o1"),
        (("PUT", "/v1/objects/job:u1:input", None, ("a", params)), fields, None),  # same bytes
        (("PUT", "/v1/objects/job:u1:input", None, ("b", params)), fields, None),  # other bytes: 409
        (("GET", "/v1/objects/{o1}", None, None), fields, None),
        (
            ("POST", "/v1/objects/{o1}/download-url", None, {"expiresAt": _iso(dt.timedelta(hours=1))}),
            (),
            None,
        ),
        (
            ("POST", "/v1/objects/{o1}/download-url", None, {"expiresAt": _iso(-dt.timedelta(hours=1))}),
            (),
            None,
        ),
        (("POST", "/v1/jobs/u1/objects/delete", "d1", None), ("jobId",), None),
        (("GET", "/v1/objects/{o1}", None, None), fields, None),
        (
            ("POST", "/v1/objects/{o1}/download-url", None, {"expiresAt": _iso(dt.timedelta(hours=1))}),
            (),
            None,
        ),
        (("GET", "/v1/objects/nope", None, None), fields, None),
    ]
    for api, _ in _storage(pg_url, secrets, tmp_path / "volume", max_object_bytes=2_000_000):
        _run(script, api, twin, "operator", content)
        listed = api.ok("GET", "/v1/jobs/u1/objects", caller="operator")["items"]
        twin_listed = twin.handle("GET", "/v1/jobs/u1/objects", None, None, {}, b"").body["items"]
        assert [o["state"] for o in listed] == [o["state"] for o in twin_listed] == ["deleted"]


def test_the_ai_twin_keeps_one_task_per_job_as_ai_does(pg_url: str, secrets: dict[str, str]) -> None:
    twin = AITwin(_now)
    task = {"jobId": "job-1", "account": "acme", "pipeline": "grayscale", "params": {}, "inputObjectId": "o1"}
    fields = ("state", "jobId", "cancelRequested")
    script: list[tuple[Call, tuple[str, ...], str | None]] = [
        (("POST", "/v1/tasks", "s1", task), fields, "t1"),
        (("POST", "/v1/tasks", "s1", task), fields, None),  # replay
        (("POST", "/v1/tasks", "s2", task), fields, None),  # same definition, another key
        (("POST", "/v1/tasks", "s3", {**task, "pipeline": "thumbnail"}), fields, None),  # 409
        (("GET", "/v1/tasks/{t1}", None, None), fields, None),
        (("POST", "/v1/tasks/{t1}/cancel", "x1", None), fields, None),
        (("POST", "/v1/tasks/{t1}/cancel", "x2", None), fields, None),
        (("GET", "/v1/tasks/nope", None, None), fields, None),
    ]
    for api, _ in _in_process("ai", pg_url, secrets):
        _run(script, api, twin, "operator")
        items = api.ok("POST", "/v1/tasks/query", {"jobIds": ["job-1"]}, caller="operator", key=None)["items"]
        twin_items = twin.handle("POST", "/v1/tasks/query", None, {"jobIds": ["job-1"]}, {}, b"").body[
            "items"
        ]
        assert [t["state"] for t in items] == [t["state"] for t in twin_items] == ["cancelled"]


def test_the_auth_twin_authorizes_charges_as_auth_does(pg_url: str, secrets: dict[str, str]) -> None:
    twin = AuthTwin(_now)
    twin.bindings.add(("team-a", "acme"))
    for api, _ in _in_process("auth", pg_url, secrets):
        api.ok("POST", "/v1/tenants", {"id": "acme"})
        api.ok("POST", "/v1/bindings", {"namespace": "team-a", "account": "acme"})
        _run(
            [
                (
                    ("POST", "/v1/authorize-charge", None, {"namespace": "team-a", "account": "acme"}),
                    ("allowed",),
                    None,
                ),
                (
                    ("POST", "/v1/authorize-charge", None, {"namespace": "team-b", "account": "acme"}),
                    ("allowed",),
                    None,
                ),
            ],
            api,
            twin,
            "operator",
        )
