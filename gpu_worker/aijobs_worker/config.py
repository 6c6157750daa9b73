"""The worker's settings, from ``AIJOBS_*`` environment variables or ``aijobs worker`` flags."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from aijobs.api.rules import SERVICE_URLS


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIJOBS_", extra="ignore")

    identity: str = "worker"
    secret: str = ""
    ai_url: str = SERVICE_URLS["ai"]
    storage_url: str = SERVICE_URLS["storage"]
    worker_id: str = Field(default="", description="Empty: hostname-pid")
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:1 ...")
    # 8, not 32: a lease of 32 makes a quarter of the requests per image, yet at N = 10,000
    # (bench/batch.py, upscale-x2) the worker spent 88 CPU-ms an image end to end against 82
    # alone (R 0.79), where with 8 it spent no more than alone (R 0.85): its 64 held tasks'
    # heartbeats and the larger bodies cost more than the requests saved.
    max_tasks: int = Field(default=8, ge=1, le=256, description="Tasks leased (and batched) at once")
    max_batch: int = Field(default=32, ge=1)
    deliveries_in_flight: int = Field(
        default=2,
        ge=1,
        description="Batches' results uploaded and completed beside inference at once; at this bound "
        "(Storage slow or away) the loop waits instead of inferring more",
    )
    lease_seconds: int = Field(default=60, ge=5)
    poll_seconds: float = Field(default=0.5, gt=0, description="Wait between empty leases")
    spool_dir: str = "./aijobs-spool"
    model_dir: str = Field(default="", description="Folder of users' mounted models")
    metrics_port: int = Field(default=0, ge=0, description="0: no metrics server")
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    call_timeout_seconds: float = Field(default=30.0, gt=0)
    infer_budget_seconds: float = Field(
        default=600.0, gt=0, description="The longest one inference batch may take before /healthz fails"
    )
    stall_grace_seconds: float = Field(
        default=15.0, ge=0, description="Slack past each stage's bound before the loop counts as wedged"
    )
    # A fault for tests, never set in production: when this file appears, the loop removes it and
    # then blocks forever (as on a GPU call that never returns), so the probes can be seen to act.
    wedge_file: str = Field(default="", description="Test-only fault hook; empty: off")
