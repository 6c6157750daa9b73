"""Main API's HTTP API: users submit and read jobs (one image, or a batch of images they uploaded
into a set); admins see every service's story of a job."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, File, Form, Header, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from kubernetes import client as k8s
from pydantic import BaseModel, Field, StringConstraints
from pydantic.json_schema import SkipJsonSchema
from sqlalchemy.orm import Session

from aijobs.api.auth import Bindings, Principal
from aijobs.api.imagelist import LIST_TYPE
from aijobs.api.main import (
    IMAGE_NAME,
    MAX_DELAY_SECONDS,
    SET_NAME,
    AdminJob,
    BatchCreate,
    BatchResults,
    CancelledJob,
    DeliveryCreate,
    DeliveryRecorded,
    ImageListView,
    JobPage,
    JobView,
    UploadedImage,
    UploadPage,
    Webhook,
    WebhookSet,
)
from aijobs.api.rules import HTTP_URL_PORTABLE, NAMESPACE_NAME, OBJECT_NAME, TERMINAL_PHASES
from aijobs.api.v1alpha1 import PIPELINES, AIImageJobStatus
from aijobs.consistency import fetch_records, findings
from aijobs.wire.client import Ambiguous, Refused, ServiceClient
from aijobs_services.kit import outbound
from aijobs_services.kit.app import BODY_SCHEMA, IdemStoreDep, SessionDep
from aijobs_services.kit.callers import Caller, allow
from aijobs_services.kit.db import utcnow
from aijobs_services.kit.idempotency import MAX_KEY_LENGTH, IdempotentRequestDep, read_idempotent_request
from aijobs_services.kit.problems import Forbidden, NotFound, Unauthenticated, documented
from aijobs_services.main import batches, jobs, submission
from aijobs_services.main.models import Delivery
from aijobs_services.main.models import Webhook as WebhookRow
from aijobs_services.main.settings import MainSettings
from aijobs_services.main.submission import RateLimited, Unavailable, read_job

Admin = Annotated[Caller, Depends(allow("admin"))]
Operator = Annotated[Caller, Depends(allow("operator", "admin"))]
# A name Kubernetes could not hold is the caller's mistake (422), not the API server's trouble.
JobName = Annotated[str, Path(max_length=253, pattern=OBJECT_NAME, description="The job's name (its id)")]
Namespace = Annotated[str, Path(max_length=63, pattern=NAMESPACE_NAME)]
SetName = Annotated[str, Path(alias="set", pattern=SET_NAME, description="A set of your uploads")]
ImageName = Annotated[str, Path(pattern=IMAGE_NAME, description="The image's name in its set")]
ListName = Annotated[str, Path(pattern=SET_NAME, description="The image list's name")]
IMAGES = ("image/png", "image/jpeg", "image/webp")
M = TypeVar("M", bound=BaseModel)


class UnknownJob(NotFound):
    slug, title = "unknown-job", "Unknown job"


class NoNamespace(Forbidden):
    slug, title = "no-namespace", "No namespace bound"


# What a user's request may answer before it reaches its route: a token that is not a user's, an
# account with nowhere to run jobs, a service it needs that did not answer.
AS_A_USER = (
    (401, "unauthenticated", "no API token, or one that is not valid"),
    (403, "forbidden", "a token that is not a user's"),
    NoNamespace,
    Unavailable,
)
# What PUT /v1/webhook, which reads its Idempotency-Key itself, may answer for that key (the
# kit documents it on the routes that take the key through its dependency).
IDEMPOTENT = (
    (400, "idempotency-key-missing", "no Idempotency-Key header"),
    (400, "idempotency-key-invalid", "an Idempotency-Key too long or not printable ASCII"),
    (409, "idempotency-key-in-progress", "the first request with this key is still running"),
    (422, "idempotency-key-reused", "the key was first used for another request"),
)


@dataclass(frozen=True)
class User:
    id: str
    tenant: str


def _clients(request: Request) -> dict[str, ServiceClient]:
    clients: dict[str, ServiceClient] = request.app.state.clients
    return clients


async def _fetch(client: ServiceClient, into: type[M], method: str, path: str, **kw: Any) -> M:
    try:
        return await client.fetch(into, method, path, **kw)
    except Ambiguous as exc:
        raise Unavailable(
            f"{exc}; retry with the same Idempotency-Key", headers={"Retry-After": "2"}
        ) from exc


async def current_user(request: Request, authorization: Annotated[str, Header()] = "") -> User:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("send your API token: Authorization: Bearer aij_...")
    auth = _clients(request)["auth"]
    try:
        principal = await _fetch(auth, Principal, "POST", "/v1/tokens/verify", json={"token": token})
    except Refused as exc:
        raise Unauthenticated("the API token is not valid (unknown, malformed or revoked)") from exc
    if principal.kind != "user" or not principal.tenant:
        raise Forbidden("this endpoint is for users' tokens")
    return User(principal.subject, principal.tenant)


UserDep = Annotated[User, Depends(current_user)]


def _settings(request: Request) -> MainSettings:
    settings: MainSettings = request.app.state.settings
    return settings


def _custom(request: Request) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(request.app.state.kube)


async def _namespace_of(request: Request, tenant: str) -> str:
    auth = _clients(request)["auth"]
    bound = await _fetch(auth, Bindings, "GET", "/v1/bindings", params={"account": tenant})
    if not bound.items:
        raise NoNamespace(f"account {tenant!r} has no namespace to run jobs in; ask an admin to bind one")
    return bound.items[0].namespace


async def _own_job(request: Request, user: User, job_id: str) -> dict[str, Any]:
    namespace = await _namespace_of(request, user.tenant)
    job = await read_job(_custom(request), namespace, job_id)
    if job is None or not jobs.owned_by(job, user.tenant):
        raise UnknownJob(f"no job {job_id!r} in your account")
    return job


def _edges(request: Request) -> submission.Edges:
    return submission.Edges(
        _settings(request),
        _clients(request)["storage"],
        _custom(request),
        request.app.state.limiter,
        request.app.state.sessions,
    )


def _view(view: JobView) -> dict[str, Any]:
    """A job's view on the wire: its records with the fields the saga log holds, no more."""
    return view.model_dump(by_alias=True, mode="json", exclude_unset=True)


router = APIRouter(prefix="/v1", tags=["jobs"])


@router.post(
    "/jobs",
    status_code=201,
    summary="Submit a job: an image (file or URL), a pipeline, a time",
    response_model=JobView,
    response_model_exclude_unset=True,
    # Exactly one image, and a time as one of runAt and delaySeconds at most, said in the schema
    # too, so that a request that fits it has them.
    openapi_extra={
        BODY_SCHEMA: {
            "oneOf": [{"required": ["file"]}, {"required": ["url"]}],
            "not": {"required": ["runAt", "delaySeconds"]},
        }
    },
    responses={
        200: {"model": JobView, "description": "An earlier request with this Idempotency-Key made the job"},
        **documented(
            *AS_A_USER,
            (413, "object-too-large", "the upload is over Storage's limit (or `image-too-large`)"),
            (415, "unsupported-image", "the upload is not a PNG, JPEG or WebP image"),
            (422, "bad-pipeline", "an unknown pipeline, or parameters it does not take (a JSON object)"),
            (422, "bad-run-at", "runAt is in the past, or further ahead than credits can be held"),
            (422, "idempotency-key-reused", "the key was first used for another job request"),
            (422, "destination-refused", "the URL names a place jobs may not fetch from"),
            (422, "invalid-job", "the Kubernetes API refused the job"),
            RateLimited,
            (507, "insufficient-storage", "Storage is full"),
        ),
    },
)
async def submit_job(
    request: Request,
    user: UserDep,
    idempotency_key: Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=200)],
    pipeline: Annotated[str, Form(json_schema_extra={"enum": list(PIPELINES)})],
    parameters: Annotated[str, Form(description="The pipeline's parameters, a JSON object")] = "{}",
    run_at: Annotated[
        str | SkipJsonSchema[None],
        Form(
            alias="runAt",
            description="When to run it (RFC 3339, within 30 days); now if absent",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
    delay_seconds: Annotated[
        Annotated[int, Field(ge=0, le=MAX_DELAY_SECONDS)] | SkipJsonSchema[None],
        Form(
            alias="delaySeconds",
            description="Run this many seconds after the request is first accepted (a replay keeps "
            "that time); not with runAt",
        ),
    ] = None,
    url: Annotated[
        Annotated[str, StringConstraints(max_length=2048, pattern=HTTP_URL_PORTABLE)] | SkipJsonSchema[None],
        Form(description="The image's http(s) URL, or give a file"),
    ] = None,
    file: Annotated[UploadFile | SkipJsonSchema[None], File(description="The image, or give a url")] = None,
) -> JSONResponse:
    order = submission.parse(
        pipeline=pipeline,
        parameters=parameters,
        run_at=run_at,
        url=url,
        has_file=file is not None,
        delay_seconds=delay_seconds,
    )
    content = await file.read() if file is not None else None
    namespace = await _namespace_of(request, user.tenant)
    status, view = await submission.submit(
        submission.Submission(user.id, user.tenant, namespace, idempotency_key, order, content),
        _edges(request),
    )
    headers = {"Idempotent-Replayed": "true"} if status == 200 else None
    return JSONResponse(_view(view), status, headers=headers)


@router.put(
    "/uploads/{set}/{name}",
    status_code=201,
    summary="Upload an image into one of your sets, for a batch (idempotent by set and name)",
    response_model=UploadedImage,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in IMAGES},
        }
    },
    responses={
        200: {"model": UploadedImage, "description": "The set held these very bytes under this name already"},
        **documented(
            *AS_A_USER[:2],
            Unavailable,
            (409, "key-taken", "the set holds other bytes under this name"),
            (413, "object-too-large", "the upload is over Storage's limit (or `image-too-large`)"),
            (415, "unsupported-image", "the upload is not a PNG, JPEG or WebP image"),
            (422, "reserved-name", "a name Storage keeps for itself (content, commit, delete, download-url)"),
            (507, "insufficient-storage", "Storage is full (or the account's quota is spent)"),
        ),
    },
)
async def upload_image(request: Request, set_name: SetName, name: ImageName, user: UserDep) -> JSONResponse:
    """Stored as one of your account's inputs under ``{account}/{set}/{name}``. A batch submitted
    with this set (``POST /v1/batches``) takes every image uploaded into it before the batch."""
    content = await request.body()
    status, image = await batches.put_image(
        _clients(request)["storage"], user.tenant, set_name, name, content
    )
    return JSONResponse(image.model_dump(by_alias=True, mode="json"), status)


@router.put(
    "/lists/{name}",
    status_code=201,
    summary="Upload an image list: a batch's images named one per line, by object id or URL",
    response_model=ImageListView,
    openapi_extra={"requestBody": {"required": True, "content": {LIST_TYPE: {"schema": {"type": "string"}}}}},
    responses={
        200: {"model": ImageListView, "description": "You held this very list under this name already"},
        **documented(
            *AS_A_USER[:2],
            Unavailable,
            (409, "key-taken", "you hold another list under this name"),
            (413, "object-too-large", "the list is over Storage's limit"),
            (422, "bad-image-list", "a line is neither one of your images' object ids nor an http(s) URL"),
            (507, "insufficient-storage", "Storage is full (or the account's quota is spent)"),
        ),
    },
)
async def upload_list(request: Request, name: ListName, user: UserDep) -> JSONResponse:
    """One image per line (blank lines and lines starting with ``#`` are skipped): an object id
    of one of your images (an upload, or a result) or an http(s) URL, which Storage fetches once
    a batch naming the list is paid for. Submit it with ``POST /v1/batches`` (``list``), or name
    its ``objectId`` in a job's ``spec.input.batch.imageList``. Every line is checked now: a bad
    one is refused naming its line, and nothing is stored."""
    content = await request.body()
    status, view = await batches.put_list(_clients(request)["storage"], user.tenant, name, content)
    return JSONResponse(view.model_dump(by_alias=True, mode="json"), status)


@router.get(
    "/uploads/{set}",
    summary="The images of one of your sets, by name (paginated)",
    response_model=UploadPage,
    responses=documented(*AS_A_USER[:2], Unavailable),
)
async def list_uploads(
    request: Request,
    set_name: SetName,
    user: UserDep,
    after: Annotated[str | None, Query(pattern=IMAGE_NAME, description="A page's next")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> UploadPage:
    return await batches.list_set(_clients(request)["storage"], user.tenant, set_name, after, limit)


@router.post(
    "/batches",
    status_code=201,
    summary="Submit a batch: every image uploaded into a set, or an image list's, one pipeline",
    response_model=JobView,
    response_model_exclude_unset=True,
    responses={
        200: {"model": JobView, "description": "An earlier request with this Idempotency-Key made the job"},
        **documented(
            *AS_A_USER,
            (422, "bad-pipeline", "an unknown pipeline, or parameters it does not take"),
            (422, "bad-run-at", "runAt is in the past, or further ahead than credits can be held"),
            (422, "empty-set", "no image was uploaded into the set"),
            (422, "unknown-list", "you have no image list of that name (PUT /v1/lists/{name})"),
            (422, "idempotency-key-reused", "the key was first used for another job request"),
            (422, "invalid-job", "the Kubernetes API refused the job"),
            RateLimited,
        ),
    },
)
async def submit_batch(
    request: Request,
    body: BatchCreate,
    user: UserDep,
    idempotency_key: Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=200)],
) -> JSONResponse:
    """One job for the set's images as they stand now (images uploaded later are not in it), or
    for those your image list names (``list``, in its order), charged the pipeline's price for
    each image delivered, none for one that failed. Follow it with ``GET /v1/jobs/{id}`` (its
    ``batch`` counts) and read it with ``GET /v1/jobs/{id}/results``."""
    order, batch = submission.parse_batch(body, user.tenant)
    namespace = await _namespace_of(request, user.tenant)
    status, view = await submission.submit(
        submission.Submission(user.id, user.tenant, namespace, idempotency_key, order, None, batch),
        _edges(request),
    )
    headers = {"Idempotent-Replayed": "true"} if status == 200 else None
    return JSONResponse(_view(view), status, headers=headers)


@router.get(
    "/jobs",
    summary="Your account's jobs, newest first (paginated)",
    response_model=JobPage,
    response_model_exclude_unset=True,
    responses=documented(
        *AS_A_USER, (422, "bad-continue", "`continue` is not a token this listing gave, or it expired")
    ),
)
async def list_jobs(
    request: Request,
    user: UserDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    continue_: Annotated[str | None, Query(alias="continue")] = None,
) -> JobPage:
    namespace = await _namespace_of(request, user.tenant)
    return await submission.list_jobs(_custom(request), namespace, user.tenant, limit, continue_)


@router.get(
    "/jobs/{job_id}",
    summary="One of your jobs, as its saga log tells it",
    response_model=JobView,
    response_model_exclude_unset=True,
    responses=documented(*AS_A_USER, UnknownJob),
)
async def get_job(request: Request, job_id: JobName, user: UserDep) -> JobView:
    return jobs.view(await _own_job(request, user, job_id))


@router.get(
    "/jobs/{job_id}/results",
    summary="A delivered batch's results, one line per image by item (paginated)",
    response_model=BatchResults,
    response_model_exclude_unset=True,
    responses=documented(*AS_A_USER, UnknownJob, batches.NotDelivered),
)
async def batch_results(
    request: Request,
    job_id: JobName,
    user: UserDep,
    after: Annotated[int, Query(ge=-1, le=2**31 - 1, description="Only items past this one")] = -1,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> BatchResults:
    """The result manifest's lines (its input, its state, its result's sha256 and size, or why it
    failed), each succeeded one with a signed link to its result."""
    job = await _own_job(request, user, job_id)
    cache: batches.ManifestCache = request.app.state.manifests
    return await batches.read_results(
        _clients(request)["storage"], cache, job.get("status") or {}, after, limit
    )


@router.post(
    "/jobs/{job_id}/cancel",
    status_code=202,
    summary="Cancel one of your jobs (idempotent)",
    response_model=CancelledJob,
    response_model_exclude_unset=True,
    responses=documented(*AS_A_USER, UnknownJob),
)
async def cancel_job(request: Request, job_id: JobName, user: UserDep) -> CancelledJob:
    """Deletes the job: the operator then undoes what was done and returns the held credits. A job
    whose capture has begun is delivered and charged instead (the money promise: charged for a
    result received, or not at all); one already ended stays as it is."""
    job = await _own_job(request, user, job_id)
    view = jobs.view(job)
    if view.phase in TERMINAL_PHASES:
        return CancelledJob.model_validate({**_view(view), "cancel": "already-ended"})
    await submission.delete_job(_custom(request), job)
    return CancelledJob.model_validate({**_view(view), "cancel": "requested"})


@router.get(
    "/admin/jobs/{namespace}/{name}",
    summary="A job's saga log beside every service's records",
    response_model=AdminJob,
    response_model_exclude_unset=True,
    responses=documented(UnknownJob, Unavailable),
)
async def admin_job(request: Request, namespace: Namespace, name: JobName, _: Admin) -> AdminJob:
    job = await read_job(_custom(request), namespace, name)
    if job is None:
        raise UnknownJob(f"no job {namespace}/{name}")
    uid, spec, status = job["metadata"]["uid"], job["spec"], job.get("status") or {}
    clients = _clients(request)
    try:
        records = await fetch_records(clients["payment"], clients["storage"], clients["ai"], uid)
    except Ambiguous as exc:
        raise Unavailable(f"{exc}; try again", headers={"Retry-After": "2"}) from exc
    binding = await _fetch(
        clients["auth"],
        Bindings,
        "GET",
        "/v1/bindings",
        params={"namespace": namespace, "account": spec["account"]},
    )
    found = findings(AIImageJobStatus.model_validate(status), spec["price"], records)
    return AdminJob.model_validate(
        {
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
                "auth": {"bound": bool(binding.items)},
            },
            "disagreements": [asdict(f) for f in found],
        }
    )


@router.post(
    "/deliveries",
    status_code=201,
    summary="Record a delivered job and notify its account (operator)",
    response_model=DeliveryRecorded,
)
def record_delivery(
    body: DeliveryCreate, _: Operator, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    def act(s: Session) -> tuple[int, DeliveryRecorded]:
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
        return 201, DeliveryRecorded(id=delivery.id, state=delivery.state)

    return store.run(session, idem, act)


@router.put(
    "/webhook",
    summary="Where to notify your account of deliveries",
    response_model=Webhook,
    responses=documented(
        *AS_A_USER[:2], (422, "destination-refused", "the URL names a place Main may not call"), *IDEMPOTENT
    ),
)
async def set_webhook(
    request: Request,
    body: WebhookSet,
    user: UserDep,
    store: IdemStoreDep,
    _key: Annotated[
        str, Header(alias="Idempotency-Key", max_length=MAX_KEY_LENGTH, pattern="^[ -~]*[!-~][ -~]*$")
    ],
) -> JSONResponse:
    # Keyed by the user, not by a service caller: the kit's dependency can't read it, so it is
    # read here; the header is declared above so that the OpenAPI says it is needed.
    idem = await read_idempotent_request(request, f"user:{user.id}")
    allow = outbound.networks(_settings(request).outbound_allow_cidrs)
    await run_in_threadpool(outbound.check, body.url, allow, "url")  # 422 before anything is stored

    def act(s: Session) -> tuple[int, Webhook]:
        hook = s.get(WebhookRow, user.tenant)
        if hook is None:
            s.add(WebhookRow(account=user.tenant, url=body.url, secret=body.secret, created_at=utcnow()))
        else:
            hook.url, hook.secret = body.url, body.secret
        return 200, Webhook(account=user.tenant, url=body.url)

    def run() -> JSONResponse:
        with request.app.state.sessions() as session:
            return store.run(session, idem, act)

    return await run_in_threadpool(run)
