"""Main API's contract: what users submit and read, what the operator records, what admins see.

A job as a user sees it is read from its saga log (the AIImageJob's status) and nothing else; its
times are the Kubernetes API's strings, passed on as they are.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

from aijobs.api.ai import Task
from aijobs.api.base import Answer, Request
from aijobs.api.fields import Int, Text
from aijobs.api.payment import Charges
from aijobs.api.rules import (
    ACCOUNT_NAME,
    HTTP_URL_PORTABLE,
    MAX_BATCH_IMAGES,
    NAMESPACE_NAME,
    OBJECT_NAME,
    RUN_AHEAD,
)
from aijobs.api.storage import StoredObject
from aijobs.api.v1alpha1 import PIPELINES, ManifestLine

__all__ = [
    "IMAGE_NAME",
    "SET_NAME",
    "AdminJob",
    "AuthRecord",
    "BatchCreate",
    "BatchFailureView",
    "BatchResultLine",
    "BatchResults",
    "BatchView",
    "CancelledJob",
    "DeliveryCreate",
    "DeliveryRecorded",
    "Disagreement",
    "ImageListView",
    "JobAudit",
    "JobCondition",
    "JobPage",
    "JobStep",
    "JobSummary",
    "JobView",
    "SagaLog",
    "ServiceRecords",
    "UploadPage",
    "UploadedImage",
    "Webhook",
    "WebhookSet",
]


class JobCondition(Answer):
    type: str
    status: str = Field(description="True, False or Unknown")
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = None
    observed_generation: int | None = None


class JobStep(Answer):
    """One saga step (or compensation) as the log records it."""

    name: str
    key: str | None = None
    state: str | None = Field(default=None, description="Pending, Running, Succeeded or Failed")
    remote_ids: dict[str, str] = Field(default_factory=dict)
    attempts: int = 0
    last_error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    next_attempt_at: str | None = None


class JobAudit(Answer):
    verdict: str | None = Field(default=None, description="consistent, repaired or needs-attention")
    findings: list[str] = Field(default_factory=list)
    checked_at: str | None = None


# A set of uploads and an image in it, as parts of the Storage key ``{account}/{set}/{name}``:
# Storage's key characters but ``/`` (a set is never inside another: its prefix is its own) and a
# leading dot, short enough that the key fits Storage's 255 characters (63 + 1 + 64 + 1 + 120).
SET_NAME = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"
IMAGE_NAME = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,119}$"
# RFC 3339 as the CRD's ``format: date-time`` reads it: separators, a zone, nothing else.
RFC3339_TIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$"


class BatchFailureView(Answer):
    item: int
    input: str = Field(description="The input's Storage key")
    reason: str


class BatchView(Answer):
    """A batch's counts, as the saga log keeps them (each image's fate is in its results)."""

    total: int
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    pending: int = 0
    progress: str | None = None
    failures: list[BatchFailureView] = Field(default_factory=list, description="A sample, 10 at most")


class JobView(Answer):
    """A job as its owner sees it. ``id`` is its name, which the Idempotency-Key decides."""

    id: str
    namespace: str
    uid: str | None
    created_at: str | None
    pipeline: str
    parameters: dict[str, Any]
    price: int
    run_at: str | None
    deadline: str | None
    phase: str = Field(description="Pending until the operator has seen it, then the saga's phase")
    message: str | None
    result_url: str | None = Field(description="A signed link to the result, once Delivered")
    conditions: list[JobCondition]
    steps: list[JobStep]
    compensations: list[JobStep]
    audit: JobAudit | None
    batch: BatchView | None = Field(default=None, description="A batch's counts (absent for one image)")


class CancelledJob(JobView):
    """A job a cancel was asked for: deleted (``requested``), or left as it ended."""

    cancel: Literal["requested", "already-ended"]


class JobPage(Answer):
    """Jobs, newest first; ``continue`` fetches the next page (null on the last)."""

    items: list[JobView]
    continue_: str | None = Field(alias="continue")


class SagaLog(Answer):
    """The AIImageJob's status, as stored: the fields read here typed, every other one kept."""

    model_config = ConfigDict(extra="allow")

    phase: str | None = None
    message: str | None = None
    steps: list[JobStep] = Field(default_factory=list)
    compensations: list[JobStep] = Field(default_factory=list)
    audit: JobAudit | None = None


class JobSummary(Answer):
    namespace: str
    name: str
    uid: str
    phase: str | None
    price: int
    saga_log: SagaLog


class AuthRecord(Answer):
    bound: bool = Field(description="Whether the job's namespace may charge its account")


class ServiceRecords(Answer):
    payment: Charges
    storage: list[StoredObject]
    ai: Task | None
    auth: AuthRecord


class Disagreement(Answer):
    """Where a service's record disagrees with the saga log, and its safe repair if any."""

    kind: str
    service: str
    detail: str
    repair: str | None


class AdminJob(Answer):
    """A job's saga log beside every service's records of it."""

    job: JobSummary
    services: ServiceRecords
    disagreements: list[Disagreement]


class DeliveryCreate(Request):
    """A delivered job, recorded by the operator so that its account's webhook is notified."""

    job_uid: str = Field(min_length=1, max_length=160, pattern=r"^[A-Za-z0-9._:-]+$")
    namespace: str = Field(min_length=1, max_length=63, pattern=NAMESPACE_NAME)
    name: str = Field(min_length=1, max_length=253, pattern=OBJECT_NAME)
    account: str = Field(min_length=2, max_length=63, pattern=ACCOUNT_NAME)
    result_url: str = Field(min_length=1, max_length=4096, pattern=HTTP_URL_PORTABLE)


class DeliveryRecorded(Answer):
    id: str
    state: str = Field(description="pending, sent or failed")


class UploadedImage(Answer):
    """An image uploaded into one of your sets, as Storage keeps it."""

    set: str
    name: str
    key: str = Field(description="Its Storage key: {account}/{set}/{name}")
    sha256: str
    size: int
    content_type: str
    width: int
    height: int
    created_at: str


class ImageListView(Answer):
    """An image list of yours (``PUT /v1/lists/{name}``), as Storage keeps it: name it in a batch
    (``POST /v1/batches`` with ``list``, or a job's ``spec.input.batch.imageList: objectId``)."""

    name: str
    object_id: str = Field(description="Its Storage object id: what spec.input.batch.imageList names")
    images: int = Field(description="The images it names (its lines that are not blank or comments)")
    urls: int = Field(description="Of which URLs, fetched once a batch naming the list is paid for")
    sha256: str
    size: int
    created_at: str


class UploadPage(Answer):
    """A set's images in name order; ``next`` is the ``after`` of the next page (null on the last)."""

    items: list[UploadedImage]
    next: str | None


# Bounds said as JSON Schema says them (pydantic writes an optional Int's as ``ge``/``le``).
MaxFailedImages = Annotated[
    Int | None,
    Field(ge=0, le=MAX_BATCH_IMAGES),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_BATCH_IMAGES}, {"type": "null"}],
            "description": "Past this many failed images the rest is cancelled (default: never)",
        }
    ),
]


# A delay instead of a time: the job runs this long after Main API first accepts the request, and
# a replay of it (the same Idempotency-Key and body, sent again after a lost answer) is the same
# job at the same time. A client that turned "+2h" into a time itself would send another body on
# each try, and be refused as a reused key or, under a new key, charged twice.
MAX_DELAY_SECONDS = int(RUN_AHEAD.total_seconds())
DelaySeconds = Annotated[
    Int | None,
    Field(ge=0, le=MAX_DELAY_SECONDS),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": MAX_DELAY_SECONDS},
                {"type": "null"},
            ],
            "description": "Run this many seconds after the request is first accepted (not with runAt)",
        }
    ),
]


class BatchCreate(Request):
    """One job over every image uploaded into ``set`` before it is created, or over the images
    an image list of yours names (``list``, uploaded with ``PUT /v1/lists/{name}``): exactly one
    of the two. Charged per image delivered."""

    # Exactly one, said in the schema too, so that a request that fits it names one.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": [name], "properties": {name: {"type": "string"}}} for name in ("set", "list")
            ],
            "not": {"required": ["runAt", "delaySeconds"]},
        }
    )

    set: str | None = Field(default=None, pattern=SET_NAME)
    image_list: str | None = Field(
        default=None, alias="list", pattern=SET_NAME, description="An image list's name"
    )
    pipeline: str = Field(json_schema_extra={"enum": list(PIPELINES)})
    parameters: dict[str, Any] = Field(default_factory=dict)
    run_at: str | None = Field(
        default=None,
        max_length=64,
        pattern=RFC3339_TIME,
        description="When to run it (RFC 3339, within 30 days); now if absent",
        json_schema_extra={"format": "date-time"},
    )
    delay_seconds: DelaySeconds = None
    max_failed_images: MaxFailedImages = None

    @model_validator(mode="after")
    def _one_source(self) -> BatchCreate:
        if (self.set is None) == (self.image_list is None):
            raise ValueError("give exactly one of set or list")
        if self.run_at is not None and self.delay_seconds is not None:
            raise ValueError("give at most one of runAt and delaySeconds")
        return self


class BatchResultLine(ManifestLine):
    """One image of a delivered batch, as its result manifest says (the operator's
    :class:`~aijobs.api.v1alpha1.ManifestLine`, one definition for both), with ``url`` to
    download a result. Read as an answer: a field a later operator adds is kept, not refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    url: str | None = Field(default=None, description="A signed link to the result (succeeded only)")


class BatchResults(Answer):
    """A page of a delivered batch's lines by item; ``next`` is the ``after`` of the next page."""

    items: list[BatchResultLine]
    next: int | None


class WebhookSet(Request):
    url: str = Field(max_length=2048, pattern=HTTP_URL_PORTABLE)
    secret: Text = Field(min_length=16, max_length=128, description="Signs each notification (HMAC-SHA256)")


class Webhook(Answer):
    account: str
    url: str
