"""The Storage service, as the kit's app factory assembles it."""

from __future__ import annotations

import secrets
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.orm import Session

from aijobs_services.kit.app import ServiceSpec
from aijobs_services.storage import bulk, objects
from aijobs_services.storage.api import router
from aijobs_services.storage.blobs import BlobStore
from aijobs_services.storage.models import IdempotencyKeys
from aijobs_services.storage.settings import StorageSettings


def _setup(app: FastAPI) -> None:
    settings: StorageSettings = app.state.settings
    app.state.blobs = BlobStore(Path(settings.storage_root))
    app.state.url_key = (settings.url_signing_key or secrets.token_hex(32)).encode()
    app.state.collector = objects.Collector(settings.blob_scan_interval_seconds)


def collect_garbage(session: Session, app: FastAPI) -> int:
    settings: StorageSettings = app.state.settings
    collector: objects.Collector = app.state.collector
    return collector.sweep(
        session, app.state.blobs, settings.staging_grace_seconds, settings.deleted_grace_seconds
    )


SPEC = ServiceSpec(
    name="storage",
    title="aijobs Storage",
    description="Content-addressed image objects: idempotent puts, staging and commit, signed links.",
    routers=[router, bulk.router],
    idempotency_table=IdempotencyKeys,
    migrations=Path(__file__).parent / "migrations",
    sweeps=[collect_garbage],
    settings_class=StorageSettings,
    setup=_setup,
)
