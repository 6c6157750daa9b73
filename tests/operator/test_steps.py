"""Steps and the engine's edges against services answered by ``httpx.MockTransport``: what each
request carries, how answers are sorted, in milliseconds and without a network."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from aijobs_operator import core
from aijobs_operator.config import OperatorSettings
from aijobs_operator.engine import Reconciler
from aijobs_operator.kube import ApiException
from aijobs_operator.steps import Call, Job, Services, StepFailed, capture, charge, deliver, upload
from pydantic import BaseModel

from aijobs.api import auth, main, payment, storage
from aijobs.api.bulk import item_body
from aijobs.api.v1alpha1 import AIImageJobSpec, AIImageJobStatus, InlineImage, JobInput, StepRecord
from aijobs.wire.client import Ambiguous, Refused, ServiceClient
from aijobs.wire.tokens import TokenSigner

T0 = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
SIGNER = TokenSigner("operator", "a-test-secret-that-is-long-enough-for-hs256")


def _client(name: str, handler: Callable[[httpx.Request], httpx.Response]) -> ServiceClient:
    return ServiceClient(name, f"http://{name}", SIGNER, transport=httpx.MockTransport(handler))


def _services(handler: Callable[[httpx.Request], httpx.Response]) -> Services:
    return Services(*(_client(n, handler) for n in ("auth", "payment", "storage", "ai", "main")))


def _job(now: dt.datetime = T0, spec: dict[str, Any] | None = None, **ids: str) -> Job:
    status = AIImageJobStatus(
        deadline=T0 + dt.timedelta(hours=1),
        steps=[StepRecord(name="capture", state="Succeeded", remote_ids=ids)] if ids else [],
    )
    body = {"account": "acme", "input": {"storageRef": {"objectId": "o1"}}, "pipeline": "resize", "price": 7}
    return Job(
        "uid-1",
        "ns",
        "job",
        AIImageJobSpec.model_validate({**body, **(spec or {})}),
        status,
        core.Policy(),
        now,
    )


def _answer(model: BaseModel, status: int = 200) -> httpx.Response:
    """An answer built from the wire model the real service answers with."""
    return httpx.Response(status, json=model.model_dump(by_alias=True, mode="json"))


def _hold(**fields: Any) -> payment.Hold:
    base = {
        "id": "h1",
        "account": "acme",
        "job_id": "uid-1",
        "amount": 7,
        "state": "active",
        "expires_at": T0 + dt.timedelta(hours=2),
        "created_at": T0,
        "settled_at": None,
    }
    return payment.Hold.model_validate(base | fields)


def _object(object_id: str, **fields: Any) -> storage.StoredObject:
    base = {
        "id": object_id,
        "key": f"k-{object_id}",
        "account": "acme",
        "job_id": "uid-1",
        "kind": "result",
        "sha256": "0" * 64,
        "size": 3,
        "content_type": "image/png",
        "width": 1,
        "height": 1,
        "state": "committed",
        "created_at": T0,
    }
    return storage.StoredObject.model_validate(base | fields)


def _bulk_answer(
    request: httpx.Request, answer: Callable[[dict[str, Any]], httpx.Response]
) -> httpx.Response:
    """A bulk route's answer: each item answered as ``answer`` answers its request."""
    items = []
    for item in json.loads(request.content)["items"]:
        got = answer(item["request"])
        items.append({"key": item["key"], "status": got.status_code, "body": json.loads(got.content)})
    return httpx.Response(200, json={"items": items})


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk-route", "a-service-without-it"])
async def test_a_retried_charge_sends_the_same_hold_whatever_the_time(bulk: bool) -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/bulk/holds":
            if not bulk:
                return httpx.Response(404, json={"type": "https://aijobs.io/problems/not-found"})

            def hold(item: dict[str, Any]) -> httpx.Response:
                bodies.append(item_body(item))  # the bytes the service fingerprints the item by
                return _answer(_hold(), 201)

            return _bulk_answer(request, hold)
        if request.url.path == "/v1/holds":
            bodies.append(request.content)
            return _answer(_hold(), 201)
        return _answer(auth.ChargeAuthorized(namespace="ns", account="acme"))

    svc = _services(handler)
    first = await charge(Call(_job(T0), svc, OperatorSettings()))
    await charge(Call(_job(T0 + dt.timedelta(minutes=20)), svc, OperatorSettings()))
    assert bodies[0] == bodies[1]
    # Byte for byte what earlier releases sent (deadline + an hour's grace): a retry under a key
    # sent before an upgrade is a replay, not a reused key, by the single route or in bulk.
    assert bodies[0] == b'{"account":"acme","jobId":"uid-1","amount":7,"expiresAt":"2026-11-27T14:00:00Z"}'
    assert isinstance(first, core.Done) and first.remote_ids == {"holdId": "h1"}


@pytest.mark.parametrize("bulk", [True, False], ids=["its-item", "the-whole-answer"])
async def test_an_answer_that_breaks_the_contract_is_an_unknown_outcome_never_a_no(bulk: bool) -> None:
    """A capture answered 2xx with a body we cannot read may have charged: compensating it would
    release nothing and fail the job of a paying user, so it is retried (as the core retries an
    irreversible step for ever, in plain sight) under the same key."""

    def handler(request: httpx.Request) -> httpx.Response:
        broken = httpx.Response(200, json={"id": "h1"})  # no amount, no state...
        return _bulk_answer(request, lambda _: broken) if bulk else broken

    job = _job(T0, holdId="h1")
    with pytest.raises(Ambiguous) as unknown:
        await capture(Call(job, _services(handler), OperatorSettings()))
    assert "contract-violation" in str(unknown.value)
    assert ("for Hold" if bulk else "not a BulkAnswer") in str(unknown.value)


async def test_an_undecodable_inline_image_is_a_definite_failure() -> None:
    # The CRD admits whole base64 only; this is the step's own defence should one slip through.
    job = _job()
    broken = InlineImage.model_construct(data="QUJDRAA", content_type="image/png")
    job = dataclasses.replace(
        job, spec=job.spec.model_copy(update={"input": JobInput.model_construct(inline=broken)})
    )
    with pytest.raises(StepFailed) as failed:
        await upload(Call(job, _services(lambda r: httpx.Response(500)), OperatorSettings()))
    assert failed.value.reason == "InputUndecodable"


@pytest.mark.parametrize(
    ("late", "key", "expires"),
    [
        pytest.param(dt.timedelta(minutes=5), "aij:uid-1:deliver", "2026-12-04T12:00:00Z", id="on-time"),
        pytest.param(
            dt.timedelta(days=6, hours=23, minutes=30),
            "aij:uid-1:deliver:2",
            "2026-12-11T12:00:00Z",
            id="after-a-weeks-outage-the-link-rolls-forward",
        ),
    ],
)
async def test_delivery_links_stay_valid_and_requests_stay_stable(
    late: dt.timedelta, key: str, expires: str
) -> None:
    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/download-url"):
            seen["expires"] = json.loads(request.content)["expiresAt"]
            return _answer(storage.DownloadLink(url="http://x/r", expires_at=core.parse(seen["expires"])))
        if request.url.path == "/v1/deliveries":
            seen["key"] = request.headers["idempotency-key"]
            return _answer(main.DeliveryRecorded(id="uid-1", state="pending"), 201)
        return _answer(_object("r1"))

    job = _job(T0 + late, resultObjectId="r1", capturedAt="2026-11-27T12:00:00Z")
    outcome = await deliver(Call(job, _services(handler), OperatorSettings()))
    assert outcome.result is not None and seen == {"expires": expires, "key": key}


@pytest.mark.parametrize("kept", [True, False], ids=["kept-by-process", "a-log-from-an-earlier-release"])
async def test_delivery_tells_the_results_digest_asking_storage_only_when_the_log_lacks_it(
    kept: bool,
) -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(f"{request.method} {request.url.path}")
        if request.url.path.endswith("/download-url"):
            return _answer(storage.DownloadLink(url="http://x/r", expires_at=T0 + dt.timedelta(days=1)))
        if request.url.path == "/v1/deliveries":
            return _answer(main.DeliveryRecorded(id="uid-1", state="pending"), 201)
        return _answer(_object("r1", sha256="a" * 64, size=1234))

    ids = {"resultObjectId": "r1", "capturedAt": "2026-11-27T12:00:00Z"}
    if kept:
        ids |= {"resultSha256": "a" * 64, "resultSize": "1234"}
    outcome = await deliver(Call(_job(T0, **ids), _services(handler), OperatorSettings()))
    assert outcome.result is not None and (outcome.result.sha256, outcome.result.size) == ("a" * 64, 1234)
    assert ("GET /v1/objects/r1" in paths) is not kept


@pytest.mark.parametrize(
    ("status", "body", "headers", "error"),
    [
        pytest.param(
            409,
            {"type": "https://aijobs.io/problems/idempotency-key-in-progress"},
            {"Retry-After": "1"},
            Ambiguous,
            id="key-in-progress-is-ambiguous",
        ),
        pytest.param(
            409, {"type": "https://aijobs.io/problems/hold-settled"}, {}, Refused, id="hold-settled-is-a-no"
        ),
        pytest.param(503, {}, {}, Ambiguous, id="503-is-ambiguous"),
        pytest.param(429, {}, {"Retry-After": "7"}, Ambiguous, id="429-is-ambiguous"),
        pytest.param(
            507, {"type": "https://aijobs.io/problems/insufficient-storage"}, {}, Refused, id="507-is-a-no"
        ),
    ],
)
async def test_the_client_sorts_answers(status: int, body: Any, headers: dict[str, str], error: type) -> None:
    client = _client("payment", lambda r: httpx.Response(status, json=body, headers=headers))
    with pytest.raises(error) as raised:
        await client.fetch(payment.Hold, "POST", "/v1/holds/h1/capture", key="k")
    if "Retry-After" in headers:
        assert isinstance(raised.value, Ambiguous) and raised.value.retry_after == float(
            headers["Retry-After"]
        )


def test_a_late_watch_event_of_a_deleted_job_is_ignored() -> None:
    reconciler = Reconciler(OperatorSettings(), _services(lambda r: httpx.Response(500)), None)  # type: ignore[arg-type]
    body = {"metadata": {"namespace": "ns", "name": "job", "uid": "u1", "resourceVersion": "5"}}
    reconciler.observe("DELETED", {**body, "metadata": {**body["metadata"], "resourceVersion": "7"}})
    reconciler.observe("MODIFIED", body)
    assert reconciler.cache == {}


def test_a_deletion_that_a_passs_own_write_brings_back_gets_a_pass_of_its_own() -> None:
    """A person deletes a job while a pass over it runs (here, the pass that finishes it). The
    pass's status write, made with no precondition after the first, is answered with the job as
    the API server holds it, deleted; the watch then brings the deletion, older than that answer,
    and it is dropped as old. The job must still get a pass, which lets its finalizer go: without
    one it stayed forever, Delivered and deleted (a 2,000-job chaos campaign left one so)."""
    reconciler = Reconciler(OperatorSettings(), _services(lambda r: httpx.Response(500)), None)  # type: ignore[arg-type]
    meta = {"namespace": "ns", "name": "job", "uid": "u1", "generation": 1, "finalizers": ["aijobs.io/saga"]}
    reconciler.observe(
        "ADDED", {"metadata": {**meta, "resourceVersion": "5"}, "status": {"phase": "Processed"}}
    )
    assert reconciler.drain() == [("ns", "job")]
    deleted = {**meta, "deletionTimestamp": "2026-12-07T03:25:00Z", "generation": 2}
    written = {"metadata": {**deleted, "resourceVersion": "7"}, "status": {"phase": "Delivered"}}
    reconciler.remember(written)  # the pass's write, answered after the deletion (resourceVersion 6)
    reconciler.observe(
        "MODIFIED", {"metadata": {**deleted, "resourceVersion": "6"}, "status": {"phase": "Processed"}}
    )
    reconciler.observe("MODIFIED", written)  # the write's own event
    assert reconciler.cache[("ns", "job")]["metadata"]["resourceVersion"] == "7"
    assert reconciler.drain() == [("ns", "job")]
    # A write that changes only the status (the usual case) asks for no pass.
    reconciler.remember({"metadata": {**deleted, "resourceVersion": "8"}, "status": {"phase": "Delivered"}})
    assert reconciler.drain() == []


SCHEMA_REFUSAL = json.dumps({"reason": "Invalid", "details": {"causes": [{"field": "metadata.finalizers"}]}})
TEST_OP_FAILED = json.dumps({"reason": "Invalid", "details": {}})  # what kube-apiserver names: nothing


@pytest.mark.parametrize(
    ("status", "body", "raced"),
    [
        pytest.param(404, None, True, id="deleted"),
        pytest.param(422, TEST_OP_FAILED, True, id="changed-test-op-failed"),
        pytest.param(409, None, True, id="conflict"),
        pytest.param(422, SCHEMA_REFUSAL, False, id="refused-by-its-schema"),
        pytest.param(500, None, False, id="server-error"),
    ],
)
async def test_a_job_gone_or_changed_before_its_finalizer_is_passed_again_without_an_error(
    status: int, body: str | None, raced: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A job deleted (or edited) between the watch's news and its first pass: adding the
    finalizer is refused. Nothing is called, nothing is logged as an error, and the job is
    passed again (the watch brings its news; a timer, in case it does not). Any other refusal
    (the object refused by its schema, a server error) is raised, for the engine to log."""

    class Kube:
        async def add_finalizer(self, body_: dict[str, Any], finalizer: str) -> dict[str, Any]:
            exc = ApiException(status=status, reason="refused")
            exc.body = body
            raise exc

    calls: list[httpx.Request] = []
    reconciler = Reconciler(
        OperatorSettings(),
        _services(lambda r: calls.append(r) or httpx.Response(500)),
        Kube(),  # type: ignore[arg-type]
        monotonic=lambda: 100.0,
    )
    meta = {"namespace": "ns", "name": "job", "uid": "u1", "resourceVersion": "1"}
    reconciler.observe("ADDED", {"metadata": meta, "spec": {"account": "acme", "pipeline": "resize"}})
    assert reconciler.drain() == [("ns", "job")]
    with caplog.at_level(logging.INFO, logger="aijobs.operator"):
        if raced:
            await reconciler.reconcile(("ns", "job"))
        else:
            with pytest.raises(ApiException):
                await reconciler.reconcile(("ns", "job"))
    assert calls == []
    if not raced:
        return
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("changed before its finalizer" in r.getMessage() for r in caplog.records)
    reconciler.monotonic = lambda: 105.5
    assert reconciler.wake_due() is None and reconciler.drain() == [("ns", "job")]


async def test_a_spec_the_operator_cannot_read_fails_before_any_charge() -> None:
    class Kube:
        def __init__(self) -> None:
            self.patches: list[dict[str, Any]] = []
            self.events: list[str] = []

        async def add_finalizer(self, body: dict[str, Any], finalizer: str) -> dict[str, Any]:
            return {**body, "metadata": {**body["metadata"], "finalizers": [finalizer]}}

        async def patch_status(
            self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
        ) -> dict[str, Any]:
            self.patches.append(status)
            return {**body, "status": status}

        async def event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
            self.events.append(reason)

    calls: list[httpx.Request] = []
    kube = Kube()
    reconciler = Reconciler(
        OperatorSettings(), _services(lambda r: calls.append(r) or httpx.Response(500)), kube
    )  # type: ignore[arg-type]
    meta = {
        "namespace": "ns",
        "name": "job",
        "uid": "u1",
        "resourceVersion": "1",
        "creationTimestamp": "2026-11-27T12:00:00Z",
    }
    body = {"metadata": meta, "spec": {"account": "acme", "pipeline": "resize", "price": "ten", "input": {}}}
    reconciler.observe("ADDED", body)
    await reconciler.reconcile(("ns", "job"))
    assert kube.patches[-1]["phase"] == "Failed" and kube.events == ["InvalidSpec"]
    assert calls == []  # no service was called: nothing charged, nothing stored


def test_the_cache_keeps_jobs_without_managed_fields_or_a_second_copy_of_the_spec() -> None:
    """Every job in flight sits in the operator's cache: what it never reads is not kept there
    (managedFields were more than half of a delivered job's size)."""
    from aijobs_operator.engine import LAST_APPLIED, slim

    watched = {
        "metadata": {
            "namespace": "ns",
            "name": "job",
            "uid": "u1",
            "resourceVersion": "5",
            "managedFields": [{"manager": "aijobs-operator", "fieldsV1": {"f:status": {}}}],
            "annotations": {LAST_APPLIED: '{"spec": "..."}', "team": "a"},
        },
        "spec": {"pipeline": "resize"},
    }
    reconciler = Reconciler(OperatorSettings(), _services(lambda r: httpx.Response(500)), None)  # type: ignore[arg-type]
    reconciler.observe("ADDED", slim(watched))
    cached = reconciler.cache[("ns", "job")]
    assert "managedFields" not in cached["metadata"]
    assert cached["metadata"]["annotations"] == {"team": "a"}
    assert cached["spec"] == watched["spec"] and cached["spec"] is not watched["spec"]
    assert "managedFields" in watched["metadata"]  # the watched object itself is left alone
    written = {**watched, "metadata": {**watched["metadata"], "resourceVersion": "6"}}
    reconciler.remember(written)  # a write's answer carries managedFields again
    assert "managedFields" not in reconciler.cache[("ns", "job")]["metadata"]


@pytest.mark.parametrize("uploaded", [True, False], ids=["once-storage-holds-it", "before"])
def test_the_cache_drops_an_inline_image_only_once_storage_holds_it(uploaded: bool) -> None:
    from aijobs_operator.engine import STORED_INLINE, slim

    image = "iVBORw0K" * 1000
    steps = [{"name": "upload", "state": "Succeeded" if uploaded else "Running"}]
    watched = {
        "metadata": {"namespace": "ns", "name": "job", "uid": "u1", "resourceVersion": "5"},
        "spec": {"input": {"inline": {"data": image, "contentType": "image/png"}}, "pipeline": "resize"},
        "status": {"phase": "Uploaded" if uploaded else "Charged", "steps": steps},
    }
    reconciler = Reconciler(OperatorSettings(), _services(lambda r: httpx.Response(500)), None)  # type: ignore[arg-type]
    reconciler.observe("MODIFIED", slim(watched))
    cached = reconciler.cache[("ns", "job")]["spec"]["input"]["inline"]
    assert cached == {"data": STORED_INLINE if uploaded else image, "contentType": "image/png"}
    assert watched["spec"]["input"]["inline"]["data"] == image  # the watched object is left alone
    written = {**watched, "metadata": {**watched["metadata"], "resourceVersion": "6"}}
    reconciler.remember(copy.deepcopy(written))  # a write's answer: the whole image again
    cached = reconciler.cache[("ns", "job")]["spec"]["input"]["inline"]
    assert cached["data"] == (STORED_INLINE if uploaded else image)
