"""Main API's contract: what users submit and read, what the operator records, what admins see.

A job as a user sees it is read from its saga log (the AIImageJob's status) and nothing else; its
times are the Kubernetes API's strings, passed on as they are.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from aijobs.api.ai import Task
from aijobs.api.base import Answer, Request
from aijobs.api.fields import Text
from aijobs.api.payment import Charges
from aijobs.api.rules import ACCOUNT_NAME, HTTP_URL_PORTABLE, NAMESPACE_NAME, OBJECT_NAME
from aijobs.api.storage import StoredObject

__all__ = [
    "AdminJob",
    "AuthRecord",
    "CancelledJob",
    "DeliveryCreate",
    "DeliveryRecorded",
    "Disagreement",
    "JobAudit",
    "JobCondition",
    "JobPage",
    "JobStep",
    "JobSummary",
    "JobView",
    "SagaLog",
    "ServiceRecords",
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


class WebhookSet(Request):
    url: str = Field(max_length=2048, pattern=HTTP_URL_PORTABLE)
    secret: Text = Field(min_length=16, max_length=128, description="Signs each notification (HMAC-SHA256)")


class Webhook(Answer):
    account: str
    url: str
