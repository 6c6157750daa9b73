"""Main API's HTTP API: users submit and read jobs; admins see every service's story of a job."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Header, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from aijobs.api.rules import HTTP_URL, NAMESPACE_NAME, OBJECT_NAME, TERMINAL_PHASES
from aijobs.api.v1alpha1 import GROUP, PLURAL, VERSION
from aijobs.consistency import fetch_records, findings
from aijobs.wire.client import Ambiguous, Refused, ServiceClient
from aijobs_services.kit import outbound
from aijobs_services.kit.app import CamelModel, IdemStoreDep, SessionDep
from aijobs_services.kit.callers import Caller, allow
from aijobs_services.kit.db import utcnow
from aijobs_services.kit.idempotency import IdempotentRequestDep, read_idempotent_request
from aijobs_services.kit.problems import Forbidden, NotFound, Unauthenticated, Unprocessable
from aijobs_services.main import jobs, submission
from aijobs_services.main.models import Delivery, Webhook
from aijobs_services.main.settings import MainSettings
from aijobs_services.main.submission import Unavailable, read_job

Admin = Annotated[Caller, Depends(allow("admin"))]
Operator = Annotated[Caller, Depends(allow("operator", "admin"))]
# A name Kubernetes could not hold is the caller's mistake (422), not the API server's trouble.
JobName = Annotated[str, Path(max_length=253, pattern=OBJECT_NAME, description="The job's name (its id)")]
Namespace = Annotated[str, Path(max_length=63, pattern=NAMESPACE_NAME)]


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
    order = submission.parse(
        pipeline=pipeline, parameters=parameters, run_at=run_at, url=url, has_file=file is not None
    )
    content = await file.read() if file is not None else None
    namespace = await _namespace_of(request, user.tenant)
    status, view = await submission.submit(
        submission.Submission(user.id, user.tenant, namespace, idempotency_key, order, content),
        submission.Edges(
            _settings(request),
            _clients(request)["storage"],
            _custom(request),
            request.app.state.limiter,
            request.app.state.sessions,
        ),
    )
    headers = {"Idempotent-Replayed": "true"} if status == 200 else None
    return JSONResponse(view, status, headers=headers)


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
    try:
        page: Any = await run_in_threadpool(
            _custom(request).list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, **kw
        )
    except ApiException as exc:
        if exc.status in (400, 410, 422) and continue_:
            raise Unprocessable(
                "continue: not a token this listing gave (or it expired); list again without it",
                slug="validation-error",
            ) from exc
        raise Unavailable(f"the Kubernetes API answered {exc.status}") from exc
    return {
        "items": [jobs.view(j) for j in page["items"]],
        "continue": page["metadata"].get("continue") or None,
    }


@router.get("/jobs/{job_id}", summary="One of your jobs, as its saga log tells it")
async def get_job(request: Request, job_id: JobName, user: UserDep) -> dict[str, Any]:
    namespace = await _namespace_of(request, user.tenant)
    job = await read_job(_custom(request), namespace, job_id)
    if job is None or job["metadata"].get("labels", {}).get(jobs.LABEL_ACCOUNT) != user.tenant:
        raise NotFound(f"no job {job_id!r} in your account", slug="unknown-job", title="Unknown job")
    return jobs.view(job)


@router.post("/jobs/{job_id}/cancel", status_code=202, summary="Cancel one of your jobs (idempotent)")
async def cancel_job(request: Request, job_id: JobName, user: UserDep) -> dict[str, Any]:
    """Deletes the job: the operator then undoes what was done and returns the held credits. A job
    whose capture has begun is delivered and charged instead (the money promise: charged for a
    result received, or not at all); one already ended stays as it is."""
    namespace = await _namespace_of(request, user.tenant)
    job = await read_job(_custom(request), namespace, job_id)
    if job is None or job["metadata"].get("labels", {}).get(jobs.LABEL_ACCOUNT) != user.tenant:
        raise NotFound(f"no job {job_id!r} in your account", slug="unknown-job", title="Unknown job")
    view = jobs.view(job)
    if view["phase"] in TERMINAL_PHASES:
        return {**view, "cancel": "already-ended"}
    try:
        await run_in_threadpool(
            _custom(request).delete_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            job_id,
            body=k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=job["metadata"]["uid"])),
        )
    except ApiException as exc:
        if exc.status not in (404, 409):  # gone already, or a newer job of that name: not ours to delete
            raise Unavailable(f"the Kubernetes API answered {exc.status}") from exc
    return {**view, "cancel": "requested"}


@router.get("/admin/jobs/{namespace}/{name}", summary="A job's saga log beside every service's records")
async def admin_job(request: Request, namespace: Namespace, name: JobName, _: Admin) -> dict[str, Any]:
    job = await read_job(_custom(request), namespace, name)
    if job is None:
        raise NotFound(f"no job {namespace}/{name}", slug="unknown-job", title="Unknown job")
    uid, spec, status = job["metadata"]["uid"], job["spec"], job.get("status") or {}
    clients = _clients(request)
    try:
        records = await fetch_records(clients["payment"], clients["storage"], clients["ai"], uid)
    except Ambiguous as exc:
        raise Unavailable(f"{exc}; try again", headers={"Retry-After": "2"}) from exc
    binding = await _call(
        clients["auth"], "GET", "/v1/bindings", params={"namespace": namespace, "account": spec["account"]}
    )
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
            "payment": records.charges,
            "storage": records.objects,
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
    url: str = Field(max_length=2048, pattern=HTTP_URL)
    secret: str = Field(min_length=16, max_length=128, description="Signs each notification (HMAC-SHA256)")


@router.put("/webhook", summary="Where to notify your account of deliveries")
async def set_webhook(
    request: Request, body: WebhookBody, user: UserDep, store: IdemStoreDep
) -> JSONResponse:
    idem = await read_idempotent_request(request, f"user:{user.id}")
    allow = outbound.networks(_settings(request).outbound_allow_cidrs)
    await run_in_threadpool(outbound.check, body.url, allow, "url")  # 422 before anything is stored

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
