"""The AIImageJob resource (``aijobs.io/v1alpha1``) as pydantic models.

The CRD in ``crds/aijobs.io_aiimagejobs.yaml`` is what the API server enforces; these models are
what Python code reads and writes. ``tests/foundation/test_crd_models.py`` fails whenever the two
disagree on a field name, a type, or an enum, so neither can drift from the other.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from aijobs.api.rules import ACCOUNT_NAME, DEFAULT_BACKOFF, HTTP_URL

GROUP = "aijobs.io"
VERSION = "v1alpha1"
KIND = "AIImageJob"
PLURAL = "aiimagejobs"
API_VERSION = f"{GROUP}/{VERSION}"

# The pipelines a job may name. The CRD's enum, the AI service and the worker's registry all
# check against this list (a test keeps the CRD's enum equal to it).
PIPELINES: tuple[str, ...] = (
    "upscale-x2",
    "resize",
    "denoise",
    "sharpen",
    "grayscale",
    "thumbnail",
    "user-model",
)


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Phase(StrEnum):
    PENDING = "Pending"
    CHARGED = "Charged"
    UPLOADED = "Uploaded"
    SCHEDULED = "Scheduled"
    PROCESSED = "Processed"
    DELIVERED = "Delivered"
    COMPENSATING = "Compensating"
    FAILED = "Failed"


# ---------------------------------------------------------------------------------------- spec
class StorageRef(_Model):
    object_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")


class InlineImage(_Model):
    data: str = Field(
        min_length=4,
        max_length=699052,
        pattern=r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
        description="base64",
    )
    content_type: Literal["image/png", "image/jpeg", "image/webp"]


class JobInput(_Model):
    storage_ref: StorageRef | None = None
    url: str | None = Field(default=None, max_length=2048, pattern=HTTP_URL)
    inline: InlineImage | None = None


class RetryPolicy(_Model):
    max_attempts: int = Field(default=DEFAULT_BACKOFF[0], ge=1, le=100)
    initial_backoff_seconds: int = Field(default=DEFAULT_BACKOFF[1], ge=1, le=3600)
    max_backoff_seconds: int = Field(default=DEFAULT_BACKOFF[2], ge=1, le=3600)


class AIImageJobSpec(_Model):
    account: str = Field(min_length=2, max_length=63, pattern=ACCOUNT_NAME)
    input: JobInput
    pipeline: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    run_at: dt.datetime | None = None
    price: int = Field(ge=1, le=1_000_000)
    deadline: dt.datetime | None = None
    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy)


# -------------------------------------------------------------------------------------- status
class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: dt.datetime | None = None
    observed_generation: int | None = None


class StepRecord(_Model):
    name: str
    key: str | None = None
    state: Literal["Pending", "Running", "Succeeded", "Failed"] | None = None
    remote_ids: dict[str, str] = Field(default_factory=dict)
    attempts: int = 0
    last_error: str | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    next_attempt_at: dt.datetime | None = None


class JobResult(_Model):
    object_id: str | None = None
    sha256: str | None = None
    size: int | None = None
    url: str | None = None
    url_expires_at: dt.datetime | None = None


class Audit(_Model):
    verdict: Literal["consistent", "repaired", "needs-attention"] | None = None
    findings: list[str] = Field(default_factory=list)
    checked_at: dt.datetime | None = None


class AIImageJobStatus(_Model):
    phase: Phase | None = None
    observed_generation: int | None = None
    message: str | None = None
    deadline: dt.datetime | None = None
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    reruns: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    steps: list[StepRecord] = Field(default_factory=list)
    compensations: list[StepRecord] = Field(default_factory=list)
    result: JobResult | None = None
    audit: Audit | None = None
    kopf: dict[str, Any] | None = None
