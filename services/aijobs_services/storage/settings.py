"""Storage's settings, beyond the kit's."""

from __future__ import annotations

from pydantic import Field

from aijobs_services.kit.settings import ServiceSettings


class StorageSettings(ServiceSettings):
    max_body_bytes: int = Field(default=40 * 1024 * 1024, ge=1024)
    storage_root: str = Field(default="./aijobs-storage", description="The volume: blobs and temp files")
    capacity_bytes: int = Field(
        default=0, ge=0, description="Refuse writes past this many stored bytes; 0: none"
    )
    account_quota_bytes: int = Field(default=0, ge=0, description="Per-account limit; 0: none")
    max_object_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    # A batch's result manifest: one line per image, up to 100,000 images with 255-character
    # keys and a failure's reason each (aijobs.api.rules.MAX_MANIFEST_BYTES bounds what the
    # operator writes; this must hold it).
    max_manifest_bytes: int = Field(default=128 * 1024 * 1024, ge=1)
    max_pixels: int = Field(default=40_000_000, ge=1, description="Width x height; larger images are refused")
    max_side: int = Field(default=12_000, ge=1)
    staging_grace_seconds: int = Field(
        default=24 * 3600, ge=0, description="Uncommitted uploads live this long"
    )
    deleted_grace_seconds: int = Field(default=600, ge=0, description="Unreferenced blobs live this long")
    blob_scan_interval_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="How often the collector scans the whole volume for blobs no record names (a put "
        "that died after keeping its blob); between scans it looks only at the blobs of objects deleted",
    )
    url_signing_key: str = Field(default="", description="HMAC key for download links; empty: a random one")
    public_url: str = Field(
        default="",
        pattern=r"^(https?://\S+)?$",
        description="Base URL of download links, as users reach this service (required to sign links)",
    )
    ingest_allow_cidrs: list[str] = Field(default_factory=list, description="Private ranges ingest may reach")
    ingest_timeout_seconds: float = Field(default=10.0, gt=0)
