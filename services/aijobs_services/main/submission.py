"""Submitting a job through Main API, as a use case apart from HTTP: check the order, store the
upload, create the AIImageJob. A retry with the same Idempotency-Key finds the job it made (the
job's name derives from the user and the key); a refusal leaves nothing behind.

``parse`` is pure; ``submit`` takes its edges (Storage, the Kubernetes API, the settings, Main's
database) as arguments, so the route function only translates HTTP to a :class:`Submission` and
back. A new job holds a slot among its account's jobs in flight from admission until it exists or
is refused (:mod:`aijobs_services.main.limits`).

A batch (``POST /v1/batches``) is the same use case with another input: the images the user
uploaded into a set (:mod:`aijobs_services.main.batches`), priced, limited, named and replayed as
one job is, the price being per image (the operator holds count x price, and captures only what
it delivered).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, cast

import anyio
from fastapi.concurrency import run_in_threadpool
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from aijobs.api.main import RFC3339_TIME, BatchCreate, JobPage, JobView
from aijobs.api.pipelines import PipelineError, validate_parameters
from aijobs.api.rules import MAX_HOLD, RUN_AHEAD
from aijobs.api.storage import ObjectPage, StoredObject
from aijobs.api.v1alpha1 import GROUP, PLURAL, VERSION
from aijobs.wire.client import Ambiguous, Refused, ServiceClient, ServiceError
from aijobs_services.kit import outbound
from aijobs_services.kit.db import utcnow
from aijobs_services.kit.problems import InvalidRequest, Problem, Unprocessable
from aijobs_services.main import jobs
from aijobs_services.main.limits import AtLimit, Slot, SubmissionLimiter, SubmissionSlots
from aijobs_services.main.settings import MainSettings

__all__ = [
    "Batch",
    "Edges",
    "Order",
    "Submission",
    "Unavailable",
    "delete_job",
    "list_jobs",
    "parse",
    "parse_batch",
    "read_job",
    "submit",
]

# A runAt the schema admits (a date-time) that no job may have: past, or beyond a hold's life.
BAD_RUN_AT, BAD_RUN_AT_TITLE = "bad-run-at", "Invalid run time"
RFC3339 = re.compile(RFC3339_TIME)


class Unavailable(Problem):
    status, slug, title = 503, "dependency-unavailable", "A service this request needs is unavailable"


@dataclass(frozen=True)
class Order:
    """What the user asked for, checked."""

    pipeline: str
    parameters: dict[str, Any]
    run_at: dt.datetime | None
    run_at_text: str | None
    url: str | None
    delay_seconds: int | None = None  # asked as a delay: run_at is when it was first accepted + it


@dataclass(frozen=True)
class Batch:
    """A batch's input: the account's images under ``prefix`` (its set), or those the image list
    named ``image_list`` names; and its failure policy."""

    set: str | None
    prefix: str | None
    max_failed_images: int | None
    image_list: str | None = None


@dataclass(frozen=True)
class Submission:
    user: str
    account: str
    namespace: str
    key: str
    order: Order
    content: bytes | None  # an upload, or None for a URL or a batch
    batch: Batch | None = None


@dataclass(frozen=True)
class Edges:
    settings: MainSettings
    storage: ServiceClient
    kube: k8s.CustomObjectsApi
    limiter: SubmissionLimiter | None = None  # None: no rate limit (tests of the use case alone)
    sessions: sessionmaker[Session] | None = None  # Main's database; None: no limit on jobs in flight


class RateLimited(Problem):
    status, slug, title = 429, "rate-limited", "Too many submissions"


def _slots(edges: Edges) -> SubmissionSlots | None:
    if edges.sessions is None:
        return None
    return SubmissionSlots(edges.sessions, dt.timedelta(seconds=edges.settings.submission_slot_seconds))


async def admit(sub: Submission, name: str, edges: Edges, slots: SubmissionSlots | None) -> Slot | None:
    """An account's rate, then a slot among its jobs in flight for the job ``name``, which the
    caller releases. Checked only for a new job: a retry of one that exists is answered first."""
    if edges.limiter is not None:
        wait = edges.limiter.take(sub.account)
        if wait is not None:
            raise RateLimited(
                f"account {sub.account!r} submits faster than {edges.settings.submissions_per_minute:g} "
                f"jobs a minute; retry in {math.ceil(wait)}s",
                headers={"Retry-After": str(math.ceil(wait))},
            )
    if slots is None:
        return None

    def listing() -> dict[str, str | None]:
        # Without a resourceVersion: a quorum read, showing every job created before it.
        found: Any = edges.kube.list_namespaced_custom_object(
            GROUP,
            VERSION,
            sub.namespace,
            PLURAL,
            label_selector=f"{jobs.LABEL_ACCOUNT}={sub.account}",
            _request_timeout=30,  # the account's admissions wait on this one meanwhile
        )
        return {j["metadata"]["name"]: (j.get("status") or {}).get("phase") for j in found["items"]}

    try:
        return await run_in_threadpool(
            slots.reserve, sub.account, name, edges.settings.max_jobs_in_flight, listing, utcnow()
        )
    except ApiException as exc:
        raise Unavailable(f"the Kubernetes API answered {exc.status}") from exc
    except AtLimit as full:
        raise RateLimited(
            f"account {sub.account!r} has {full.in_flight} jobs in flight, the most it may have; "
            "submit again when some have ended",
            headers={"Retry-After": "10"},
        ) from None


async def _release(slots: SubmissionSlots | None, slot: Slot | None) -> None:
    """Give the slot back, even when the request is cancelled. Best effort: a slot left behind
    stops counting once its job is listed, or once it is older than its bound."""
    if slots is None or slot is None:
        return
    with anyio.CancelScope(shield=True), contextlib.suppress(SQLAlchemyError):
        await run_in_threadpool(slots.release, slot)


def parse_run_at(text: str, now: dt.datetime) -> dt.datetime:
    """runAt as the CRD accepts it, in the future, and within what a hold can cover."""
    if not RFC3339.fullmatch(text):
        raise InvalidRequest(
            f"runAt: {text!r} is not an RFC 3339 time with a zone (e.g. 2030-01-01T02:00:00Z)"
        )
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        # RFC 3339's shape, but no day of the calendar Python keeps (year 0 in UTC, a 30 February)
        raise Unprocessable(
            f"runAt: {text!r} is not a valid time: {exc}", slug=BAD_RUN_AT, title=BAD_RUN_AT_TITLE
        ) from exc
    if when < now - dt.timedelta(minutes=1):
        raise Unprocessable(f"runAt: {text} is in the past", slug=BAD_RUN_AT, title=BAD_RUN_AT_TITLE)
    if when > now + RUN_AHEAD:
        raise Unprocessable(
            f"runAt: {text} is too far ahead: credits can be held for {MAX_HOLD.days} days at most",
            slug=BAD_RUN_AT,
            title=BAD_RUN_AT_TITLE,
        )
    return when


def _pipeline_parameters(pipeline: str, params: object) -> dict[str, Any]:
    """The parameters ``pipeline`` takes, with its defaults, or a refusal naming the one it doesn't."""
    if not isinstance(params, dict):
        raise Unprocessable(
            "parameters: must be a JSON object", slug="bad-pipeline", title="Invalid pipeline or parameters"
        )
    try:
        return validate_parameters(pipeline, params)
    except PipelineError as exc:
        raise Unprocessable(str(exc), slug="bad-pipeline", title="Invalid pipeline or parameters") from exc


def start_of(run_at: str | None, delay_seconds: int | None) -> dt.datetime | None:
    """When a job is to run: at ``run_at``, ``delay_seconds`` from now, or now (None)."""
    if run_at is not None and delay_seconds is not None:
        raise InvalidRequest("give at most one of runAt and delaySeconds")
    if delay_seconds is not None:
        return utcnow().replace(microsecond=0) + dt.timedelta(seconds=delay_seconds)
    return parse_run_at(run_at, utcnow()) if run_at else None


def parse(
    *,
    pipeline: str,
    parameters: str,
    run_at: str | None,
    url: str | None,
    has_file: bool,
    delay_seconds: int | None = None,
) -> Order:
    try:
        decoded = json.loads(parameters)
    except (ValueError, RecursionError) as exc:
        raise Unprocessable(
            "parameters: must be a JSON object", slug="bad-pipeline", title="Invalid pipeline or parameters"
        ) from exc
    params = _pipeline_parameters(pipeline, decoded)
    if has_file == (url is not None):
        # The schema says it too (``oneOf``): a request that fits it never meets this.
        raise InvalidRequest("give exactly one of file (an upload) or url")
    if url is not None:
        outbound.parse(url, "url")  # well formed, or refused before anything is stored
    start = start_of(run_at, delay_seconds)
    return Order(pipeline, params, start, run_at, url, delay_seconds)


def set_prefix(account: str, set_name: str) -> str:
    """Where a set's images are in Storage: the account's own keys, so no other account's."""
    return f"{account}/{set_name}/"


def parse_batch(body: BatchCreate, account: str) -> tuple[Order, Batch]:
    """A batch order, checked as a single one is (pipeline, parameters, time)."""
    params = _pipeline_parameters(body.pipeline, body.parameters)
    start = start_of(body.run_at, body.delay_seconds)
    order = Order(body.pipeline, params, start, body.run_at, None, body.delay_seconds)
    if body.set is None:
        return order, Batch(None, None, body.max_failed_images, image_list=body.image_list)
    return order, Batch(body.set, set_prefix(account, body.set), body.max_failed_images)


class UnknownList(Unprocessable):
    slug, title = "unknown-list", "Unknown image list"


def list_key(account: str, name: str) -> str:
    """Where an image list of the account's is in Storage: apart from its sets' images."""
    return f"list:{account}/{name}"


async def read_job(kube: k8s.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        job = await run_in_threadpool(
            kube.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
        )
        return cast(dict[str, Any], job)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise Unavailable(f"the Kubernetes API answered {exc.status}") from exc


async def list_jobs(
    kube: k8s.CustomObjectsApi, namespace: str, account: str, limit: int, continue_: str | None
) -> JobPage:
    """One page of ``account``'s jobs; ``continue_`` is the token the previous page gave."""
    kw: dict[str, Any] = {"label_selector": f"{jobs.LABEL_ACCOUNT}={account}", "limit": limit}
    if continue_:
        kw["_continue"] = continue_
    try:
        page: Any = await run_in_threadpool(
            kube.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, **kw
        )
    except ApiException as exc:
        if exc.status in (400, 410, 422) and continue_:
            raise Unprocessable(
                "continue: not a token this listing gave (or it expired); list again without it",
                slug="bad-continue",
                title="Unknown continue token",
            ) from exc
        raise Unavailable(f"the Kubernetes API answered {exc.status}") from exc
    items = [jobs.view(j) for j in page["items"]]
    return JobPage.model_validate({"items": items, "continue": page["metadata"].get("continue") or None})


async def delete_job(kube: k8s.CustomObjectsApi, job: dict[str, Any]) -> None:
    """Delete ``job`` itself, not a newer job that took its name since it was read."""
    meta = job["metadata"]
    try:
        await run_in_threadpool(
            kube.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            meta["namespace"],
            PLURAL,
            meta["name"],
            body=k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=meta["uid"])),
        )
    except ApiException as exc:
        if exc.status not in (404, 409):  # gone already, or a newer job of that name: not ours to delete
            raise Unavailable(f"the Kubernetes API answered {exc.status}") from exc


def _same_request_or_refuse(job: dict[str, Any], digest: str, key: str) -> None:
    if job["metadata"].get("annotations", {}).get(jobs.ANNOTATION_REQUEST) != digest:
        raise Unprocessable(
            f"Idempotency-Key {key!r} was first used for a different job request",
            slug="idempotency-key-reused",
            title="Idempotency-Key reused with a different request",
        )


async def _discard(edges: Edges, object_id: str | None) -> None:
    """Delete a staged upload whose job was refused (best effort: Storage's collector removes
    staging objects past their grace anyway)."""
    if object_id is None:
        return
    with contextlib.suppress(ServiceError):
        await edges.storage.fetch(
            StoredObject, "POST", f"/v1/objects/{object_id}/delete", key=f"discard:{object_id}"
        )


async def submit(sub: Submission, edges: Edges) -> tuple[int, JobView]:
    """Returns (201, the new job's view) or (200, the job an earlier try with this key made)."""
    order = sub.order
    name = jobs.job_name(sub.user, sub.key)
    fields: dict[str, Any] = {
        "pipeline": order.pipeline,
        "parameters": order.parameters,
        "runAt": order.run_at_text,
        "url": order.url,
        "file": hashlib.sha256(sub.content).hexdigest() if sub.content is not None else None,
    }
    if order.delay_seconds is not None:  # only then: a runAt's digest stays what it always was
        fields["delaySeconds"] = order.delay_seconds
    if sub.batch is not None:  # only then: a single job's digest stays what it always was
        fields["batch"] = {"set": sub.batch.set, "maxFailedImages": sub.batch.max_failed_images}
        if sub.batch.image_list is not None:  # and a set's stays what it was
            fields["batch"]["list"] = sub.batch.image_list
    digest = jobs.request_digest(fields)
    existing = await read_job(edges.kube, sub.namespace, name)
    if existing is not None:
        _same_request_or_refuse(existing, digest, sub.key)
        return 200, jobs.view(existing)

    slots = _slots(edges)
    slot = await admit(sub, name, edges, slots)
    try:
        return await _stage_and_create(sub, name, digest, edges)
    finally:
        await _release(slots, slot)  # the job exists (the listing counts it), or was refused


async def _batch_input(sub: Submission, batch: Batch, edges: Edges) -> dict[str, Any]:
    if batch.prefix is not None:
        await _refuse_an_empty_set(sub, batch, edges)
        return {"batch": {"prefix": batch.prefix}}
    assert batch.image_list is not None
    return {"batch": {"imageList": await _list_id(sub.account, batch.image_list, edges)}}


async def _list_id(account: str, name: str, edges: Edges) -> str:
    """The object id of the account's image list ``name``, or a 422 saying to upload it."""
    try:
        found = await edges.storage.fetch(StoredObject, "GET", f"/v1/by-key/{list_key(account, name)}")
    except Ambiguous as exc:
        raise Unavailable(
            f"{exc}; retry with the same Idempotency-Key", headers={"Retry-After": "2"}
        ) from exc
    except Refused as exc:
        if exc.status != 404:  # Storage refused the read itself: its problem, passed on
            raise Problem(exc.detail, status=exc.status, slug=exc.kind, title="Storage refused") from exc
        found = None
    if found is None or found.state != "committed" or found.kind != "list":
        raise UnknownList(f"you have no image list {name!r}: upload it first (PUT /v1/lists/{name})")
    return found.id


async def _refuse_an_empty_set(sub: Submission, batch: Batch, edges: Edges) -> None:
    """A batch of nothing would be refused by the operator after the user has left; say it now."""
    try:
        found = await edges.storage.fetch(
            ObjectPage,
            "GET",
            "/v1/objects",
            params={"account": sub.account, "prefix": batch.prefix, "limit": 1},
        )
    except Ambiguous as exc:
        raise Unavailable(
            f"{exc}; retry with the same Idempotency-Key", headers={"Retry-After": "2"}
        ) from exc
    if not found.items:
        raise Unprocessable(
            f"set {batch.set!r} has no images: upload them first (PUT /v1/uploads/{batch.set}/NAME)",
            slug="empty-set",
            title="Empty set",
        )


async def _stage_and_create(sub: Submission, name: str, digest: str, edges: Edges) -> tuple[int, JobView]:
    order = sub.order
    staged: str | None = None
    if sub.content is not None:
        try:
            stored = await edges.storage.fetch(
                StoredObject,
                "PUT",
                f"/v1/objects/upload:{sub.account}:{name}",
                params={"account": sub.account},
                content=sub.content,
                timeout=60,
            )
        except Ambiguous as exc:
            raise Unavailable(
                f"{exc}; retry with the same Idempotency-Key", headers={"Retry-After": "2"}
            ) from exc
        except Refused as exc:
            raise Problem(
                exc.detail, status=exc.status, slug=exc.kind, title="The image was refused"
            ) from exc
        staged = stored.id
        job_input: dict[str, Any] = {"storageRef": {"objectId": stored.id}}
    elif sub.batch is not None:
        job_input = await _batch_input(sub, sub.batch, edges)
    else:
        job_input = {"url": order.url}
    deadline = (order.run_at or utcnow()) + dt.timedelta(seconds=edges.settings.job_deadline_seconds)
    body = jobs.manifest(
        name=name,
        account=sub.account,
        user=sub.user,
        pipeline=order.pipeline,
        parameters=order.parameters,
        price=edges.settings.prices[order.pipeline],
        job_input=job_input,
        run_at=order.run_at,
        deadline=deadline,
        digest=digest,
        max_failed_images=sub.batch.max_failed_images if sub.batch is not None else None,
    )
    try:
        created: Any = await run_in_threadpool(
            edges.kube.create_namespaced_custom_object, GROUP, VERSION, sub.namespace, PLURAL, body
        )
    except ApiException as exc:
        if exc.status == 409:  # a concurrent retry created it first
            raced = await read_job(edges.kube, sub.namespace, name)
            assert raced is not None
            _same_request_or_refuse(raced, digest, sub.key)
            return 200, jobs.view(raced)
        await _discard(edges, staged)  # refused: nothing is left behind
        if exc.status == 422:
            raise Unprocessable(
                json.loads(exc.body or "{}").get("message", "invalid job"), slug="invalid-job"
            ) from exc
        raise Unavailable(f"the Kubernetes API answered {exc.status}") from exc
    return 201, jobs.view(created)
