"""The operator's settings, from ``AIJOBS_*`` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from aijobs.api.rules import SERVICE_URLS


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIJOBS_", extra="ignore")

    identity: str = "operator"
    secret: str = ""
    auth_url: str = SERVICE_URLS["auth"]
    payment_url: str = SERVICE_URLS["payment"]
    storage_url: str = SERVICE_URLS["storage"]
    ai_url: str = SERVICE_URLS["ai"]
    main_url: str = SERVICE_URLS["main"]
    kubeconfig: str = Field(default="", description="Empty: in-cluster config, else $KUBECONFIG")
    namespaces: list[str] = Field(default_factory=list, description="Watch these; empty: the whole cluster")
    workers: int = Field(
        default=64, ge=1, description="Jobs reconciled at once (their calls at one step share requests)"
    )
    follow_interval_seconds: float = Field(
        default=1.0, gt=0, description="How often task states are read in bulk"
    )
    batch_progress_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A batch's progress reaches its status at most this often (one API write each)",
    )
    batch_page_size: int = Field(
        default=1000, ge=1, le=1000, description="Items a batch's listings read a page at a time"
    )
    call_timeout_seconds: float = Field(default=10.0, gt=0)
    default_deadline_seconds: int = Field(default=3600, ge=10)
    batch_default_deadline_seconds: int = Field(
        default=86400, ge=10, description="A batch job's deadline when its spec names none"
    )
    hold_grace_seconds: int = Field(
        default=3600, ge=0, description="A hold outlives the deadline by this much"
    )
    download_link_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    metrics_port: int = Field(default=8090, ge=0, description="0: no metrics server")
    lease_name: str = "aijobs-operator"
    lease_namespace: str = "default"
    lease_seconds: int = Field(default=15, ge=2)
    pod_name: str = Field(default="", description="This replica's identity in the Lease; empty: hostname-pid")
    account_sync_interval_seconds: float = Field(
        default=30.0, gt=0, description="How often CreditAccounts' balances are read again"
    )
    audit_interval_seconds: float = Field(default=30.0, ge=0, description="0: no auditor")
    audit_recheck_seconds: float = Field(
        default=86400.0,
        ge=0,
        description="A finished job unchanged since its audit is audited again after this long; 0: never",
    )
    default_ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="A finished job without spec.ttlSecondsAfterFinished is deleted this long after it "
        "finished; None: kept until someone deletes it",
    )
    ttl_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often finished jobs are looked over for their TTL"
    )
