"""Main API's settings, beyond the kit's."""

from __future__ import annotations

from pydantic import Field

from aijobs.api.rules import SERVICE_URLS
from aijobs_services.kit.settings import ServiceSettings

DEFAULT_PRICES = {
    "upscale-x2": 10,
    "resize": 3,
    "denoise": 4,
    "sharpen": 3,
    "grayscale": 1,
    "thumbnail": 2,
    "user-model": 20,
}


class MainSettings(ServiceSettings):
    max_body_bytes: int = Field(default=40 * 1024 * 1024, ge=1024)
    auth_url: str = SERVICE_URLS["auth"]
    storage_url: str = SERVICE_URLS["storage"]
    payment_url: str = SERVICE_URLS["payment"]
    ai_url: str = SERVICE_URLS["ai"]
    kubeconfig: str = Field(default="", description="Empty: in-cluster config, else $KUBECONFIG")
    prices: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    job_deadline_seconds: int = Field(default=3600, ge=60, description="From runAt (or now) to the deadline")
    webhook_max_attempts: int = Field(default=12, ge=1)
    submissions_per_minute: float = Field(default=120, gt=0, description="Per account and replica")
    submission_burst: int = Field(default=30, ge=1)
    max_jobs_in_flight: int = Field(default=200, ge=1, description="Per account: jobs not yet ended")
    # Longer than a submission takes (its upload may take 60 s): a slot older than this was left
    # by a replica that died mid-submission, and stops counting.
    submission_slot_seconds: int = Field(
        default=300, ge=90, description="How long a submission's reserved slot counts before its job exists"
    )
    outbound_allow_cidrs: list[str] = Field(
        default_factory=list, description="Private ranges webhooks may reach (default: none)"
    )
