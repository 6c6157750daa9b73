"""Main API's HTTP API: users submit and read jobs; admins see every service's story of a job."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from aijobs.api.pipelines import PipelineError, validate_parameters
from aijobs.api.v1alpha1 import GROUP, PLURAL, VERSION
from aijobs.consistency import JobRecords, findings
from aijobs_services.kit.app import CamelModel, IdemStoreDep, SessionDep
from aijobs_services.kit.callers import Caller, allow
from aijobs_services.kit.client import Ambiguous, Refused, ServiceClient
from aijobs_services.kit.db import utcnow
from aijobs_services.kit.idempotency import IdempotentRequestDep, read_idempotent_request
from aijobs_services.kit.problems import Forbidden, NotFound, Problem, Unauthenticated, Unprocessable
from aijobs_services.main import jobs
from aijobs_services.main.models import Delivery, Webhook
from aijobs_services.main.settings import MainSettings

Admin = Annotated[Caller, Depends(allow("admin"))]
Operator = Annotated[Caller, Depends(allow("operator", "admin"))]


class Unavailable(Problem):
    status, slug, title = 503, "dependency-unavailable", "A service this request needs is unavailable"


@dataclass(frozen=True)
class User:
    id: str
    tenant: str


def _clients(request: Request) -> dict[str, ServiceClient]:
    clients: dict[str, ServiceClient] = request.app.state.clients
    return clients


async def _call(client: ServiceClient, method: str, path: str, **kw: Any) -> Any:
    try:
        return await client.json(method, path, **kw)
    except Ambiguous as exc:
        raise Unavailable(
            f"{exc}; retry with the same Idempotency-Key", headers={"Retry-After": "2"}
        ) from exc


async def current_user(request: Request, authorization: Annotated[str, Header()] = "") -> User:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("send your API token: Authorization: Bearer aij_...")
    try:
        principal = await _call(_clients(request)["auth"], "POST", "/v1/tokens/verify", json={"token": token})
    except Refused as exc:
        raise Unauthenticated("the API token is not valid (unknown, malformed or revoked)") from exc
    if principal["kind"] != "user" or not principal["tenant"]:
        raise Forbidden("this endpoint is for users' tokens")
    return User(principal["subject"], principal["tenant"])


UserDep = Annotated[User, Depends(current_user)]


def _settings(request: Request) -> MainSettings:
    settings: MainSettings = request.app.state.settings
    return settings


def _custom(request: Request) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(request.app.state.kube)


async def _namespace_of(request: Request, tenant: str) -> str:
    bound = await _call(_clients(request)["auth"], "GET", "/v1/bindings", params={"account": tenant})
    if not bound["items"]:
        raise Forbidden(
            f"account {tenant!r} has no namespace to run jobs in; ask an admin to bind one",
            slug="no-namespace",
            title="No namespace bound",
        )
    namespace: str = bound["items"][0]["namespace"]
    return namespace


async def _read_job(request: Request, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        job = await run_in_threadpool(
            _custom(request).get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
        )
        return cast(dict[str, Any], job)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise Unavailable(f"the Kubernetes API answered {exc.status}") from exc


def _same_request_or_refuse(job: dict[str, Any], digest: str, key: str) -> None:
    if job["metadata"].get("annotations", {}).get(jobs.ANNOTATION_REQUEST) != digest:
        raise Unprocessable(
            f"Idempotency-Key {key!r} was first used for a different job request",
            slug="idempotency-key-reused",
            title="Idempotency-Key reused with a different request",
        )


router = APIRouter(prefix="/v1", tags=["jobs"])


@router.post("/jobs", status_code=201, summary="Submit a job: an image (file or URL), a pipeline, a time")
async def submit_job(
    request: Request,
    user: UserDep,
    idempotency_key: Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=200)],
    pipeline: Annotated[str, Form()],
    parameters: Annotated[str, Form(description="JSON object")] = "{}",
    run_at: Annotated[str | None, Form(alias="runAt")] = None,
    url: Annotated[str | None, Form(max_length=2048)] = None,
    file: Annotated[UploadFile | None, File()] = None,
) -> JSONResponse:
    settings = _settings(request)
    try:
        params = json.loads(parameters)
        assert isinstance(params, dict)
    except (ValueError, AssertionError) as exc:
        raise Unprocessable("parameters: must be a JSON object", slug="validation-error") from exc
    try:
        params = validate_parameters(pipeline, params)
    except PipelineError as exc:
        raise Unprocessable(str(exc), slug="bad-pipeline", title="Invalid pipeline or parameters") from exc
    start = None
    if run_at:
        try:
            start = dt.datetime.fromisoformat(run_at.replace("Z", "+00:00"))
            if start.tzinfo is None:
                raise ValueError("no time zone")
        except ValueError as exc:
            raise Unprocessable(
                f"runAt: {run_at!r} is not an RFC 3339 time with a zone (e.g. 2030-01-01T02:00:00Z)",
                slug="validation-error",
            ) from exc
    if (file is None) == (url is None):
        raise Unprocessable("give exactly one of file (an upload) or url", slug="validation-error")
    if url is not None and not url.startswith(("http://", "https://")):
        raise Unprocessable("url: must be an http(s) URL", slug="validation-error")
    content = await file.read() if file is not None else b""

    namespace = await _namespace_of(request, user.tenant)
    name = jobs.job_name(user.id, idempotency_key)
    digest = jobs.request_digest(
        {
            "pipeline": pipeline,
            "parameters": params,
            "runAt": run_at,
            "url": url,
            "file": hashlib.sha256(content).hexdigest() if file is not None else None,
        }
    )
    existing = await _read_job(request, namespace, name)
    if existing is not None:
        _same_request_or_refuse(existing, digest, idempotency_key)
        return JSONResponse(jobs.view(existing), 200, headers={"Idempotent-Replayed": "true"})

    if file is not None:
        try:
            stored = await _clients(request)["storage"].json(
                "PUT",
                f"/v1/objects/upload:{user.tenant}:{name}",
                params={"account": user.tenant},
                content=content,
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
        job_input: dict[str, Any] = {"storageRef": {"objectId": stored["id"]}}
    else:
        job_input = {"url": url}
    deadline = (start or utcnow()) + dt.timedelta(seconds=settings.job_deadline_seconds)
    body = jobs.manifest(
        name=name,
        account=user.tenant,
        user=user.id,
        pipeline=pipeline,
        parameters=params,
        price=settings.prices[pipeline],
        job_input=job_input,
        run_at=start,
        deadline=deadline,
        digest=digest,
    )
    try:
        created: Any = await run_in_threadpool(
            _custom(request).create_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, body
        )
    except ApiException as exc:
        if exc.status == 409:  # a concurrent retry created it first
            raced = await _read_job(request, namespace, name)
            assert raced is not None
            _same_request_or_refuse(raced, digest, idempotency_key)
            return JSONResponse(jobs.view(raced), 200, headers={"Idempotent-Replayed": "true"})
        if exc.status == 422:
            raise Unprocessable(
                json.loads(exc.body or "{}").get("message", "invalid job"), slug="invalid-job"
            ) from exc
        raise Unavailable(f"the Kubernetes API answered {exc.status}") from exc
    return JSONResponse(jobs.view(created), 201)


@router.get("/jobs", summary="Your account's jobs, newest first (paginated)")
async def list_jobs(
    request: Request,
    user: UserDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    continue_: Annotated[str | None, Query(alias="continue")] = None,
) -> dict[str, Any]:
    namespace = await _namespace_of(request, user.tenant)
    kw: dict[str, Any] = {"label_selector": f"{jobs.LABEL_ACCOUNT}={user.tenant}", "limit": limit}
    if continue_:
        kw["_continue"] = continue_
    page: Any = await run_in_threadpool(
        _custom(request).list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, **kw
    )
    return {
        "items": [jobs.view(j) for j in page["items"]],
        "continue": page["metadata"].get("continue") or None,
    }


@router.get("/jobs/{job_id}", summary="One of your jobs, as its saga log tells it")
async def get_job(request: Request, job_id: str, user: UserDep) -> dict[str, Any]:
    namespace = await _namespace_of(request, user.tenant)
    job = await _read_job(request, namespace, job_id)
    if job is None or job["metadata"].get("labels", {}).get(jobs.LABEL_ACCOUNT) != user.tenant:
        raise NotFound(f"no job {job_id!r} in your account", slug="unknown-job", title="Unknown job")
    return jobs.view(job)


@router.get("/admin/jobs/{namespace}/{name}", summary="A job's saga log beside every service's records")
async def admin_job(request: Request, namespace: str, name: str, _: Admin) -> dict[str, Any]:
    job = await _read_job(request, namespace, name)
    if job is None:
        raise NotFound(f"no job {namespace}/{name}", slug="unknown-job", title="Unknown job")
    uid, spec, status = job["metadata"]["uid"], job["spec"], job.get("status") or {}
    clients = _clients(request)
    charges = await _call(clients["payment"], "GET", f"/v1/jobs/{uid}/charges")
    stored = await _call(clients["storage"], "GET", f"/v1/jobs/{uid}/objects")
    tasks = await _call(clients["ai"], "POST", "/v1/tasks/query", json={"jobIds": [uid]})
    binding = await _call(
        clients["auth"], "GET", "/v1/bindings", params={"namespace": namespace, "account": spec["account"]}
    )
    records = JobRecords(charges["holds"], stored["items"], (tasks["items"] or [None])[0])
    return {
        "job": {
            "namespace": namespace,
            "name": name,
            "uid": uid,
            "phase": status.get("phase"),
            "price": spec["price"],
            "sagaLog": status,
        },
        "services": {
            "payment": charges,
            "storage": stored["items"],
            "ai": records.task,
            "auth": {"bound": bool(binding["items"])},
        },
        "disagreements": [asdict(f) for f in findings(status, spec["price"], records)],
    }


class DeliveryCreate(CamelModel):
    job_uid: str = Field(min_length=1, max_length=160)
    namespace: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=253)
    account: str = Field(min_length=2, max_length=63)
    result_url: str = Field(min_length=1, max_length=4096)


@router.post(
    "/deliveries", status_code=201, summary="Record a delivered job and notify its account (operator)"
)
def record_delivery(
    body: DeliveryCreate, _: Operator, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    def act(s: Session) -> tuple[int, Any]:
        delivery = s.get(Delivery, body.job_uid)
        if delivery is None:
            now = utcnow()
            delivery = Delivery(
                id=body.job_uid,
                namespace=body.namespace,
                name=body.name,
                account=body.account,
                result_url=body.result_url,
                state="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
            s.add(delivery)
            s.flush()
        return 201, {"id": delivery.id, "state": delivery.state}

    return store.run(session, idem, act)


class WebhookBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=2048, pattern=r"^https?://\S+$")
    secret: str = Field(min_length=16, max_length=128, description="Signs each notification (HMAC-SHA256)")


@router.put("/webhook", summary="Where to notify your account of deliveries")
async def set_webhook(
    request: Request, body: WebhookBody, user: UserDep, store: IdemStoreDep
) -> JSONResponse:
    idem = await read_idempotent_request(request, f"user:{user.id}")

    def act(s: Session) -> tuple[int, Any]:
        hook = s.get(Webhook, user.tenant)
        if hook is None:
            s.add(Webhook(account=user.tenant, url=body.url, secret=body.secret, created_at=utcnow()))
        else:
            hook.url, hook.secret = body.url, body.secret
        return 200, {"account": user.tenant, "url": body.url}

    def run() -> JSONResponse:
        with request.app.state.sessions() as session:
            return store.run(session, idem, act)

    return await run_in_threadpool(run)
