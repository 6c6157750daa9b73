"""Main API, as the kit's app factory assembles it."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from aijobs.kube import api_client
from aijobs.wire.client import ServiceClient
from aijobs.wire.tokens import TokenSigner
from aijobs_services.kit.app import ServiceSpec
from aijobs_services.main.api import router
from aijobs_services.main.batches import ManifestCache
from aijobs_services.main.limits import SubmissionLimiter
from aijobs_services.main.models import IdempotencyKeys
from aijobs_services.main.notify import send_due
from aijobs_services.main.settings import MainSettings


def _setup(app: FastAPI) -> None:
    settings: MainSettings = app.state.settings
    signer = TokenSigner(settings.identity or "main-api", settings.secret)
    app.state.clients = {
        name: ServiceClient(name, url, signer)
        for name, url in [
            ("auth", settings.auth_url),
            ("storage", settings.storage_url),
            ("payment", settings.payment_url),
            ("ai", settings.ai_url),
        ]
    }
    app.state.kube = api_client(settings.kubeconfig or None)
    app.state.limiter = SubmissionLimiter(settings.submissions_per_minute, settings.submission_burst)
    app.state.manifests = ManifestCache()


SPEC = ServiceSpec(
    name="main",
    title="aijobs Main API",
    description="Submit AI image jobs, read them from their saga log, and audit every service's view.",
    routers=[router],
    idempotency_table=IdempotencyKeys,
    migrations=Path(__file__).parent / "migrations",
    sweeps=[send_due],
    settings_class=MainSettings,
    setup=_setup,
)
