"""A batch's finishing pass against services answered by ``httpx.MockTransport``: the process
step reads what every image came to, and the deliver step writes its manifest from that read
(which capture charged for), listing only the job's results again; an operator that restarted
between the two reads everything again."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections import Counter
from typing import Any

import httpx
import pytest
from aijobs_operator import batch
from aijobs_operator.config import OperatorSettings
from aijobs_operator.core import Done, Ended, Policy, idempotency_key
from aijobs_operator.engine import ENDED_IMAGES, keep_ended
from aijobs_operator.steps import Call, Job, Services

from aijobs.api import ai, main, storage
from aijobs.api.v1alpha1 import AIImageJobSpec, AIImageJobStatus, BatchStatus, StepRecord
from aijobs.wire.client import ServiceClient
from aijobs.wire.tokens import TokenSigner

T0 = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
SIGNER = TokenSigner("operator", "a-test-secret-that-is-long-enough-for-hs256")
UID = "uid-b"


def _object(object_id: str, kind: storage.ObjectKind, key: str) -> dict[str, Any]:
    return storage.StoredObject(
        id=object_id,
        key=key,
        account="acme",
        job_id=UID if kind != "input" else None,
        kind=kind,
        sha256=object_id[-1] * 64,
        size=10,
        content_type="image/png",
        width=1,
        height=1,
        state="committed",
        created_at=T0,
    ).model_dump(by_alias=True, mode="json")


def _task(
    item: int, state: ai.tasks.State, result: str | None = None, error: str | None = None
) -> dict[str, Any]:
    return {
        "id": f"t{item}",
        "jobId": UID,
        "account": "acme",
        "pipeline": "grayscale",
        "params": {},
        "inputObjectId": f"in{item}",
        "runAt": "2026-12-07T12:00:00Z",
        "state": state,
        "attempts": 1,
        "maxAttempts": 3,
        "reruns": 0,
        "cancelRequested": False,
        "resultObjectId": result,
        "result": None,
        "error": error,
        "updatedAt": "2026-12-07T12:00:00Z",
        "item": item,
    }


class Services3:
    """Storage, AI and Main API for one finished batch of three images: image 0 and 2 delivered
    (results r0, r2), image 1 failed, and r9, a result no task names (a cancelled image's late
    one). What each was asked, by route."""

    def __init__(self) -> None:
        self.results = ["r0", "r2", "r9"]  # the job's results Storage holds
        self.asked: Counter[str] = Counter()
        self.manifests: list[bytes] = []
        self.deleted: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.asked[f"{request.url.host} {method} {path}"] += 1
        if path == "/v1/objects" and method == "GET":  # the frozen set, under the prefix
            items = [_object(f"in{n}", "input", f"acme/set/{n}.jpg") for n in range(3)]
            return httpx.Response(200, json={"items": items, "next": None})
        if path == f"/v1/jobs/{UID}/objects":
            items = [_object(r, "result", f"result:{UID}:{r}") for r in self.results]
            return httpx.Response(200, json={"jobId": UID, "items": items, "next": None})
        if path == f"/v1/jobs/{UID}/tasks":
            tasks = [
                _task(0, "succeeded", "r0"),
                _task(1, "failed", error="not an image"),
                _task(2, "succeeded", "r2"),
            ]
            return httpx.Response(200, json={"jobId": UID, "items": tasks, "next": None})
        if path == "/v1/tasks/counts":
            counts = ai.JobTaskCounts.of(UID, {"succeeded": 2, "failed": 1}, T0)
            return httpx.Response(200, json={"items": [counts.model_dump(by_alias=True, mode="json")]})
        if path == f"/v1/objects/manifest:{UID}" and method == "PUT":
            self.manifests.append(request.content)
            return httpx.Response(201, json=_object("m1", "manifest", f"manifest:{UID}"))
        if path.endswith("/delete"):
            self.deleted.append(path.split("/")[3])
            return httpx.Response(200, json=_object(path.split("/")[3], "result", "gone"))
        if path.endswith("/download-url"):
            link = storage.DownloadLink(url="http://storage/d/m1", expires_at=T0 + dt.timedelta(days=7))
            return httpx.Response(200, json=link.model_dump(by_alias=True, mode="json"))
        if path == "/v1/deliveries":
            recorded = main.DeliveryRecorded(id=UID, state="pending")
            return httpx.Response(201, json=recorded.model_dump(by_alias=True, mode="json"))
        return httpx.Response(404, json={"type": "https://aijobs.io/problems/not-found", "status": 404})

    def services(self) -> Services:
        def client(name: str) -> ServiceClient:
            return ServiceClient(name, f"http://{name}", SIGNER, transport=httpx.MockTransport(self))

        return Services(*(client(n) for n in ("auth", "payment", "storage", "ai", "main")))

    def listed(self) -> tuple[int, int, int]:
        """How many times the job's tasks, the batch's inputs and the job's objects were listed."""
        return (
            self.asked[f"ai GET /v1/jobs/{UID}/tasks"],
            self.asked["storage GET /v1/objects"],
            self.asked[f"storage GET /v1/jobs/{UID}/objects"],
        )


def _job(ended: Ended | None = None, **ids: str) -> Job:
    spec = {
        "account": "acme",
        "input": {"batch": {"prefix": "acme/set/"}},
        "pipeline": "grayscale",
        "price": 1,
    }
    logged = {"holdId": "h1", "images": "3", "digest": "d"} | ids
    status = AIImageJobStatus(
        deadline=T0 + dt.timedelta(hours=1),
        steps=[StepRecord(name="charge", state="Succeeded", remote_ids=logged)],
    )
    spec_ = AIImageJobSpec.model_validate(spec)
    return Job(UID, "ns", "set", spec_, status, Policy(), T0, created=T0, ended=ended)


CAPTURED = {"succeeded": "2", "capturedAt": "2026-12-07T12:00:05Z"}  # the log once capture is done


def _lines(content: bytes) -> list[tuple[int, str, str | None]]:
    return [
        (line["item"], line["state"], line.get("result")) for line in map(json.loads, content.splitlines())
    ]


async def _process(services: Services3) -> Done:
    processed = await batch.process(Call(_job(), services.services(), OperatorSettings()))
    assert isinstance(processed, Done) and processed.ended is not None
    return processed


async def test_the_delivery_writes_what_process_counted_and_lists_only_the_results_again() -> None:
    services = Services3()
    processed = await _process(services)
    assert processed.remote_ids == {"succeeded": "2", "failed": "1", "cancelled": "0"}
    assert services.listed() == (1, 1, 1)

    services.results.append("r10")  # a cancelled image's worker stores its result late
    call = Call(_job(processed.ended, **CAPTURED), services.services(), OperatorSettings())
    delivered = await batch.deliver(call)

    assert services.listed() == (1, 1, 2)  # only the job's objects again, for strays
    assert isinstance(delivered, Done) and delivered.batch is not None
    assert (delivered.batch.succeeded, delivered.batch.failed, delivered.batch.progress) == (2, 1, "2/3")
    assert _lines(services.manifests[0]) == [
        (0, "succeeded", "r0"),
        (1, "failed", None),
        (2, "succeeded", "r2"),
    ]
    first, failed = map(json.loads, services.manifests[0].splitlines()[:2])
    assert first["key"] == "acme/set/0.jpg" and failed["reason"] == "not an image"
    assert services.deleted == ["r9", "r10"]  # results no line names are not the user's


async def test_an_operator_restarted_between_the_steps_reads_again_and_writes_the_same_manifest() -> None:
    kept, restarted = Services3(), Services3()
    processed = await _process(kept)
    await batch.deliver(Call(_job(processed.ended, **CAPTURED), kept.services(), OperatorSettings()))
    await _process(restarted)
    await batch.deliver(Call(_job(None, **CAPTURED), restarted.services(), OperatorSettings()))

    assert restarted.listed() == (2, 2, 2)
    assert restarted.manifests == kept.manifests and restarted.deleted == kept.deleted == ["r9"]


async def test_a_kept_read_that_disagrees_with_the_log_is_not_used() -> None:
    """What process read is used only when it counts what capture charged for: a read kept from
    another pass that does not (here: one image fewer) is read again."""
    services = Services3()
    processed = await _process(services)
    assert processed.ended is not None
    stale = dataclasses.replace(
        processed.ended, final=processed.ended.final.model_copy(update={"succeeded": 1})
    )
    await batch.deliver(Call(_job(stale, **CAPTURED), services.services(), OperatorSettings()))

    assert services.listed() == (2, 2, 2)
    assert _lines(services.manifests[0])[2] == (2, "succeeded", "r2")


def _ended(images: int) -> Ended:
    final = BatchStatus(total=images, succeeded=images, pending=0, progress=f"{images}/{images}")
    return Ended(b"", final, frozenset())


def test_what_is_kept_for_deliveries_is_bounded_the_oldest_forgotten_first() -> None:
    kept: dict[str, Ended] = {}
    keep_ended(kept, "a", _ended(ENDED_IMAGES // 2))
    keep_ended(kept, "b", _ended(ENDED_IMAGES // 2))
    assert list(kept) == ["a", "b"]
    keep_ended(kept, "c", _ended(1))  # past the bound: the oldest goes
    assert list(kept) == ["b", "c"]
    keep_ended(kept, "d", _ended(ENDED_IMAGES + 1))  # past it alone: kept, the only one
    assert list(kept) == ["d"]


async def test_the_first_tasks_are_created_alone_so_a_worker_starts_while_the_rest_are() -> None:
    """The schedule step creates a lease's worth of tasks first, in a request of its own, and
    only then the rest, a thousand a request: a worker can lease the first ones while AI is
    still creating the others (a request of 1,000 took AI about half a second of CPU)."""
    inputs = [_object(f"in{n:04d}", "input", f"acme/set/{n:04d}.jpg") for n in range(2500)]
    frozen = [storage.StoredObject.model_validate(o) for o in inputs]
    sent: list[list[int]] = []
    keys: dict[int, str] = {}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/objects":
            return httpx.Response(200, json={"items": inputs, "next": None})
        assert request.url.path == "/v1/bulk/tasks", request.url.path
        items = json.loads(request.content)["items"]
        sent.append([item["request"]["item"] for item in items])
        keys.update((item["request"]["item"], item["key"]) for item in items)
        answers = [
            {"key": item["key"], "status": 201, "body": _task(item["request"]["item"], "scheduled")}
            for item in items
        ]
        return httpx.Response(200, json={"items": answers})

    def client(name: str) -> ServiceClient:
        return ServiceClient(name, f"http://{name}", SIGNER, transport=httpx.MockTransport(answer))

    services = Services(*(client(n) for n in ("auth", "payment", "storage", "ai", "main")))
    job = _job(images=str(len(inputs)), digest=batch.digest(frozen))
    scheduled = await batch.schedule(Call(job, services, OperatorSettings()))

    assert isinstance(scheduled, Done) and scheduled.remote_ids == {"tasks": "2500"}
    assert sent[0] == list(range(batch.FIRST))  # alone, awaited before any other was sent
    assert [len(items) for items in sent[1:]] == [1000, 1000, 436]
    assert sorted(n for items in sent for n in items) == list(range(2500))  # each image once
    assert keys == {n: idempotency_key(UID, f"schedule:{n}") for n in range(2500)}  # as a retry's


@pytest.mark.parametrize(
    ("images", "ranges"),
    [
        (0, []),
        (1, [(0, 1)]),
        (63, [(0, 63)]),
        (64, [(0, 64)]),
        (65, [(0, 64), (64, 65)]),
        (5064, [(0, 64), (64, 5064)]),
        (5065, [(0, 64), (64, 5064), (5064, 5065)]),
    ],
)
def test_the_schedule_gathers_the_first_tasks_then_the_rest_in_order(
    images: int, ranges: list[tuple[int, int]]
) -> None:
    assert (batch.FIRST, batch.GATHER) == (64, 5000)
    assert batch.gathers(images) == ranges
