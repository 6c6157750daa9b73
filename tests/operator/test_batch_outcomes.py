"""A batch's finishing pass against services answered by ``httpx.MockTransport``: the process
step reads what every image came to once, and the deliver step writes its manifest from that read,
so the manifest lists what capture charged for; a restarted operator reads it again."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from typing import Any

import httpx
from aijobs_operator import batch
from aijobs_operator.config import OperatorSettings
from aijobs_operator.core import Done, Policy
from aijobs_operator.steps import ENDED_LINES, Call, Ended, Job, Services

from aijobs.api import ai, main, storage
from aijobs.api.v1alpha1 import AIImageJobSpec, AIImageJobStatus, ManifestLine, StepRecord
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
            items = [_object(r, "result", f"result:{UID}:{r}") for r in ("r0", "r2", "r9")]
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

    def listings(self) -> int:
        """How many times what the images came to was read: the tasks, inputs and results listed."""
        routes = (
            "ai GET /v1/jobs/uid-b/tasks",
            "storage GET /v1/objects",
            "storage GET /v1/jobs/uid-b/objects",
        )
        return sum(self.asked[route] for route in routes)


def _job(**ids: str) -> Job:
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
    return Job(UID, "ns", "set", AIImageJobSpec.model_validate(spec), status, Policy(), T0, created=T0)


def _manifest(content: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in content.decode().splitlines()]


async def test_delivery_writes_the_manifest_process_counted_without_reading_the_batch_again() -> None:
    services = Services3()
    svc = services.services()
    processed = await batch.process(Call(_job(), svc, OperatorSettings()))
    assert isinstance(processed, Done) and processed.remote_ids == {
        "succeeded": "2",
        "failed": "1",
        "cancelled": "0",
    }
    assert services.listings() == 3  # the tasks, the inputs, the results: once each

    logged = {"succeeded": "2", "capturedAt": "2026-12-07T12:00:05Z"}
    delivered = await batch.deliver(Call(_job(**logged), svc, OperatorSettings()))

    assert services.listings() == 3  # nothing read again
    assert isinstance(delivered, Done) and delivered.batch is not None
    assert (delivered.batch.succeeded, delivered.batch.failed) == (2, 1)
    lines = _manifest(services.manifests[0])
    assert [(line["item"], line["state"], line.get("result")) for line in lines] == [
        (0, "succeeded", "r0"),
        (1, "failed", None),
        (2, "succeeded", "r2"),
    ]
    assert lines[0]["key"] == "acme/set/0.jpg" and lines[1]["reason"] == "not an image"
    assert services.deleted == ["r9"]  # the result no line names is not the user's
    assert UID not in svc.ended  # delivered: nothing of the batch is kept


async def test_a_restarted_operator_reads_the_batch_again_and_writes_the_same_manifest() -> None:
    logged = {"succeeded": "2", "capturedAt": "2026-12-07T12:00:05Z"}
    kept, restarted = Services3(), Services3()
    for services, restart in ((kept, False), (restarted, True)):
        svc = services.services()
        await batch.process(Call(_job(), svc, OperatorSettings()))
        if restart:  # a new process between the two steps: it remembers nothing
            svc = services.services()
        await batch.deliver(Call(_job(**logged), svc, OperatorSettings()))

    assert (kept.listings(), restarted.listings()) == (3, 6)
    assert restarted.manifests == kept.manifests and len(kept.manifests) == 1
    assert restarted.deleted == kept.deleted == ["r9"]


def _ended(lines: int) -> Ended:
    line = ManifestLine(item=0, input="in0", state="failed", reason="x")
    return Ended([line] * lines, [])


def test_the_outcomes_kept_are_bounded_the_oldest_forgotten_first() -> None:
    svc = Services3().services()
    svc.remember("a", _ended(ENDED_LINES // 2))
    svc.remember("b", _ended(ENDED_LINES // 2))
    assert list(svc.ended) == ["a", "b"]
    svc.remember("c", _ended(1))
    assert list(svc.ended) == ["b", "c"]
    svc.remember("d", _ended(ENDED_LINES + 1))  # past the bound alone: kept, the only one
    assert list(svc.ended) == ["d"]
