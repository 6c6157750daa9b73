"""The batcher (aijobs.wire.bulk): many jobs' calls to one bulk route share requests, and each
caller gets the answer its own item was given, as the single route would have given it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from aijobs.api.payment import Hold
from aijobs.wire.client import Ambiguous, Refused, ServiceClient
from aijobs.wire.tokens import TokenSigner

SIGNER = TokenSigner("operator", "a-test-secret-that-is-long-enough-for-hs256")
PROBLEM = "https://aijobs.io/problems/"


def _hold(key: str, request: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"h-{key}",
        "account": request["account"],
        "jobId": request["jobId"],
        "amount": request["amount"],
        "state": "active",
        "createdAt": "2026-12-06T00:00:00Z",
        "expiresAt": "2026-12-07T00:00:00Z",
        "settledAt": None,
    }


class Payment:
    """A bulk-holds route answered by hand: each item by what its account says."""

    def __init__(self, *, bulk: bool = True) -> None:
        self.bulk = bulk
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        if request.url.path == "/v1/holds":
            return httpx.Response(201, json=_hold(request.headers["idempotency-key"], body))
        if not self.bulk:
            return httpx.Response(404, json={"type": PROBLEM + "not-found", "detail": "no such route"})
        answers = []
        for item in body["items"]:
            account = item["request"]["account"]
            if account == "poor":
                answers.append(
                    {
                        "key": item["key"],
                        "status": 402,
                        "body": {
                            "type": PROBLEM + "insufficient-credits",
                            "detail": "3 available, 10 needed",
                        },
                    }
                )
            elif account == "busy":
                answers.append(
                    {
                        "key": item["key"],
                        "status": 409,
                        "body": {"type": PROBLEM + "idempotency-key-in-progress", "detail": "retry"},
                    }
                )
            elif account == "broken":
                answers.append({"key": item["key"], "status": 500, "body": {"type": PROBLEM + "internal"}})
            else:
                answers.append(
                    {"key": item["key"], "status": 201, "body": _hold(item["key"], item["request"])}
                )
        return httpx.Response(200, json={"items": answers})


def _client(handler: Any) -> ServiceClient:
    return ServiceClient("payment", "http://payment", SIGNER, transport=httpx.MockTransport(handler))


def _hold_request(job: int, account: str = "acme") -> dict[str, Any]:
    return {"account": account, "jobId": f"job-{job}", "amount": 10, "expiresAt": "2026-12-07T00:00:00Z"}


async def _charge_all(client: ServiceClient, accounts: list[str]) -> list[Hold | BaseException]:
    batcher = client.bulk("/v1/bulk/holds", Hold)

    async def one(i: int, account: str) -> Hold:
        request = _hold_request(i, account)

        async def single() -> Hold:
            return await client.fetch(Hold, "POST", "/v1/holds", key=f"k{i}", json=request)

        return await batcher.call(f"k{i}", request, single)

    return await asyncio.gather(*(one(i, a) for i, a in enumerate(accounts)), return_exceptions=True)


def test_jobs_charging_at_once_share_one_request_and_each_gets_its_own_hold() -> None:
    payment = Payment()
    holds = asyncio.run(_charge_all(_client(payment), ["acme"] * 50))
    assert len(payment.requests) == 1
    assert [h.id for h in holds if isinstance(h, Hold)] == [f"h-k{i}" for i in range(50)]
    sent = json.loads(payment.requests[0].content)["items"]
    assert [item["key"] for item in sent] == [f"k{i}" for i in range(50)]
    assert sent[7]["request"] == _hold_request(7)  # the single route's body, as it is


def test_one_items_refusal_is_that_jobs_alone_and_unknown_outcomes_stay_unknown() -> None:
    holds = asyncio.run(_charge_all(_client(Payment()), ["acme", "poor", "busy", "broken", "acme"]))
    assert isinstance(holds[0], Hold) and isinstance(holds[4], Hold)
    assert isinstance(holds[1], Refused) and (holds[1].status, holds[1].kind) == (402, "insufficient-credits")
    assert isinstance(holds[2], Ambiguous)  # a key in progress is not a no
    assert isinstance(holds[3], Ambiguous)  # nor is a 500


def test_a_lost_answer_is_every_items_unknown_outcome() -> None:
    def lost(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("the answer never came", request=request)

    holds = asyncio.run(_charge_all(_client(lost), ["acme"] * 3))
    assert all(isinstance(h, Ambiguous) for h in holds)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param({"items": []}, id="items-missing"),
        pytest.param(
            {"items": [{"key": "k1", "status": 201, "body": {}}, {"key": "k0", "status": 201, "body": {}}]},
            id="out-of-order",
        ),
        pytest.param(
            {
                "items": [
                    {"key": "k0", "status": 201, "body": {"id": 1}},
                    {"key": "k1", "status": 201, "body": {"id": 2}},
                ]
            },
            id="bodies-unreadable",
        ),
    ],
)
def test_an_answer_that_breaks_the_contract_is_unknown_never_a_no(answer: dict[str, Any]) -> None:
    holds = asyncio.run(_charge_all(_client(lambda _: httpx.Response(200, json=answer)), ["acme"] * 2))
    assert all(isinstance(h, Ambiguous) for h in holds)


def test_a_service_without_the_bulk_route_is_called_item_by_item() -> None:
    payment = Payment(bulk=False)
    client = _client(payment)
    holds = asyncio.run(_charge_all(client, ["acme"] * 3))
    assert [h.id for h in holds if isinstance(h, Hold)] == ["h-k0", "h-k1", "h-k2"]
    assert [r.url.path for r in payment.requests] == ["/v1/bulk/holds"] + ["/v1/holds"] * 3
    asyncio.run(_charge_all(client, ["acme"]))  # and it is not asked for the bulk route again
    assert [r.url.path for r in payment.requests][-1] == "/v1/holds"


def test_calls_arriving_while_a_request_is_in_flight_go_in_the_next_one() -> None:
    payment = Payment()

    async def scenario() -> list[int]:
        sizes: list[int] = []
        release, flying = asyncio.Event(), [asyncio.Event(), asyncio.Event()]

        async def slow(request: httpx.Request) -> httpx.Response:
            sizes.append(len(json.loads(request.content)["items"]))
            if len(sizes) <= 2:
                flying[len(sizes) - 1].set()
            if len(sizes) <= 2:
                await release.wait()
            return payment(request)

        client = ServiceClient("payment", "http://payment", SIGNER, transport=httpx.MockTransport(slow))
        first = asyncio.create_task(_charge_all(client, ["acme"]))  # one request in flight
        await flying[0].wait()
        second = asyncio.create_task(_charge_all(client, ["acme"]))  # a second (two may fly)
        await flying[1].wait()
        rest = asyncio.create_task(_charge_all(client, ["acme"] * 30))  # all wait for a free slot
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(sizes) == 2
        release.set()
        await asyncio.gather(first, second, rest)
        return sizes

    assert asyncio.run(scenario()) == [1, 1, 30]


def test_a_process_dying_mid_request_dies_in_every_caller_not_an_unknown_outcome() -> None:
    """The simulator's crash (a BaseException, as SIGKILL can't be caught) must reach each pass
    whose item was in the request, as the single call would have raised it."""

    class Died(BaseException):
        pass

    def dies(request: httpx.Request) -> httpx.Response:
        raise Died("killed after the service committed")

    holds = asyncio.run(_charge_all(_client(dies), ["acme"] * 3))
    assert all(isinstance(h, Died) for h in holds)
