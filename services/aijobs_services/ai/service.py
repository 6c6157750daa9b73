"""The AI service, as the kit's app factory assembles it."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.orm import Session

from aijobs_services.ai import queue
from aijobs_services.ai.api import router
from aijobs_services.ai.models import IdempotencyKeys
from aijobs_services.kit.app import ServiceSpec


def settle_expired(session: Session, _: FastAPI) -> int:
    with session.begin():
        return queue.settle_expired(session)


SPEC = ServiceSpec(
    name="ai",
    title="aijobs AI",
    description="Task registry and lease queue for GPU workers: run-at scheduling, fencing, bulk status.",
    routers=[router],
    idempotency_table=IdempotencyKeys,
    migrations=Path(__file__).parent / "migrations",
    sweeps=[settle_expired],
)
