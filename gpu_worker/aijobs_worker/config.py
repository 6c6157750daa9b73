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
    # At most: a lease asks for about ``lease_work_seconds`` of this worker's measured work
    # (aijobs_worker.sizing). A fixed 8 was right for upscale-x2 on a CPU (a lease of 32 there:
    # R 0.79 against 0.85 at N = 10,000, bench/batch.py) and four times too few for grayscale.
    max_tasks: int = Field(
        default=64, ge=1, le=256, description="Tasks leased (and batched) at once, at most"
    )
    lease_work_seconds: float = Field(
        default=0.6,
        gt=0,
        description="A lease asks for about this much of the worker's own work (inference, encoding, "
        "spooling), measured per image: 1 to max_tasks tasks",
    )
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
