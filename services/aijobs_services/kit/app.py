"""The app factory every service uses: settings, database, migrations, problems, auth,
idempotency, health and metrics wired once, so a service only brings its routes."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from aijobs_services.kit.db import make_engine, make_sessionmaker, migrate
from aijobs_services.kit.idempotency import IdempotencyStore
from aijobs_services.kit.observability import RequestMetrics, ServiceMetrics, health_router
from aijobs_services.kit.problems import install_problem_handlers
from aijobs_services.kit.settings import ServiceSettings

__all__ = ["CamelModel", "IdemStoreDep", "ServiceSpec", "SessionDep", "create_app", "get_idempotency"]

log = logging.getLogger("aijobs.services")


@dataclass(frozen=True)
class ServiceSpec:
    """What a service brings: its name, routers, metadata (with an idempotency table) and
    migrations folder, plus optional start-up hooks given the engine."""

    name: str
    title: str
    description: str
    routers: Sequence[APIRouter]
    idempotency_table: sa.Table
    migrations: Path
    # Periodic housekeeping (expire holds, release leases...), each given a fresh session.
    sweeps: Sequence[Callable[[Session, FastAPI], int]] = ()
    settings_class: type[ServiceSettings] = ServiceSettings
    # Service-specific state on app.state (a blob store, a Kubernetes client...).
    setup: Callable[[FastAPI], None] | None = None


def create_app(spec: ServiceSpec, settings: ServiceSettings, engine: Engine | None = None) -> FastAPI:
    url = settings.sqlalchemy_url()
    if settings.migrate_on_start:
        migrate(url, spec.migrations)
    engine = engine or make_engine(url)
    app = FastAPI(title=spec.title, description=spec.description, version="0.1.0")
    metrics = ServiceMetrics(spec.name)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = make_sessionmaker(engine)
    app.state.metrics = metrics
    app.state.idempotency = IdempotencyStore(
        spec.idempotency_table, dt.timedelta(seconds=settings.idempotency_retention_seconds), metrics.replayed
    )
    install_problem_handlers(app)
    app.include_router(health_router())
    if spec.setup is not None:
        spec.setup(app)
    for router in spec.routers:
        app.include_router(router)
    app.add_middleware(RequestMetrics, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    for route in (r for router in spec.routers for r in router.routes):  # replays counted from 0
        for method in sorted(getattr(route, "methods", None) or ()):
            if method in ("POST", "PUT", "PATCH", "DELETE"):
                metrics.replays.labels(spec.name, f"{method} {getattr(route, 'path', '')}")
    store: IdempotencyStore = app.state.idempotency
    sweeps = [*spec.sweeps, lambda session, _: store.sweep(session)]
    sweeper = _Sweeper(spec.name, app, sweeps, settings.sweep_interval_seconds)
    app.router.on_startup.append(sweeper.start)
    app.router.on_shutdown.append(sweeper.stop)
    return app


class _Sweeper:
    """Runs a service's sweeps every ``interval`` seconds on a daemon thread while it serves."""

    def __init__(
        self, name: str, app: FastAPI, sweeps: list[Callable[[Session, FastAPI], int]], interval: float
    ) -> None:
        self._name, self._app, self._sweeps, self._interval = name, app, sweeps, interval
        self._sessions: sessionmaker[Session] = app.state.sessions
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._interval > 0:
            self._thread = threading.Thread(target=self._loop, name=f"{self._name}-sweeper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            for sweep in self._sweeps:
                try:
                    with self._sessions() as session:
                        sweep(session, self._app)
                except Exception:  # a failed sweep is retried at the next tick
                    log.exception("%s: sweep %s failed", self._name, getattr(sweep, "__name__", sweep))


async def _session(request: Request) -> AsyncIterator[Session]:
    # async although the session is sync: creating and closing one never blocks, and FastAPI
    # would otherwise spend a thread hop on it per request. Queries run in the sync endpoint.
    factory: sessionmaker[Session] = request.app.state.sessions
    with factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]


async def get_idempotency(request: Request) -> IdempotencyStore:
    store: IdempotencyStore = request.app.state.idempotency
    return store


IdemStoreDep = Annotated[IdempotencyStore, Depends(get_idempotency)]


class CamelModel(BaseModel):
    """Request and response bodies: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
