"""The app factory every service uses: settings, database, migrations, problems, auth,
idempotency, health and metrics wired once, so a service only brings its routes."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from aijobs_services.kit.callers import Allow, VerifiedTokens, authenticated_caller
from aijobs_services.kit.db import make_engine, make_sessionmaker, migrate
from aijobs_services.kit.idempotency import MAX_KEY_LENGTH, Clock, IdempotencyStore, idempotent_request
from aijobs_services.kit.observability import RequestMetrics, ServiceMetrics, health_router
from aijobs_services.kit.problems import (
    PROBLEM_JSON,
    PROBLEM_SCHEMA,
    BadRequest,
    Conflict,
    Forbidden,
    Problem,
    Unauthenticated,
    Unprocessable,
    documented,
    install_problem_handlers,
)
from aijobs_services.kit.settings import ServiceSettings

__all__ = [
    "CamelModel",
    "IdemStoreDep",
    "ServiceSpec",
    "SessionDep",
    "create_app",
    "get_idempotency",
    "utc_now",
]

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


def utc_now() -> dt.datetime:
    """The wall clock, for a service in production; tests and the simulator give their own."""
    return dt.datetime.now(dt.UTC)


def create_app(
    spec: ServiceSpec, settings: ServiceSettings, engine: Engine | None = None, clock: Clock = utc_now
) -> FastAPI:
    """The service ``spec`` describes. Its time comes from ``clock`` (``app.state.clock``)."""
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
    app.state.clock = clock
    app.state.verified_tokens = VerifiedTokens()
    app.state.idempotency = IdempotencyStore(
        spec.idempotency_table,
        dt.timedelta(seconds=settings.idempotency_retention_seconds),
        metrics.replayed,
        clock,
    )
    install_problem_handlers(app)
    health = health_router()
    _complete_openapi(app, [health, *spec.routers], settings.max_body_bytes)
    app.include_router(health)
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


# What the kit itself may answer on a route, whatever the route says: documented on every
# operation so that a client (and Schemathesis) finds each status it can meet, as problem+json.
_UNAUTHENTICATED = (401, Unauthenticated.slug, "no, expired or unknown credentials")
_FORBIDDEN = (403, Forbidden.slug, "a caller this route does not admit")
_INVALID = (422, "validation-error", "a parameter or body member is missing or invalid")
_OUT_OF_RANGE = (422, "time-out-of-range", "a date-time that UTC cannot hold (past year 9999 there)")
_UNSTORABLE = (
    422,
    "unstorable-value",
    "a value the database cannot hold (a NUL in a text, a number too large)",
)
_MALFORMED = (400, "malformed-json", "the body is not JSON")
_TOO_LARGE = (413, "payload-too-large", "the body is larger than the service accepts")
_IDEMPOTENCY = (
    (BadRequest.status, "idempotency-key-missing", "no Idempotency-Key header"),
    (BadRequest.status, "idempotency-key-invalid", "an Idempotency-Key too long or not printable ASCII"),
    (Unprocessable.status, "idempotency-key-reused", "the key was first used for another request"),
    (Conflict.status, "idempotency-key-in-progress", "a request with this key is still running"),
)
_INTERNAL = (500, Problem.slug, "an unexpected failure; a change's outcome is unknown: retry it with its key")
_SECURITY_SCHEME = "serviceToken"
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "Unique per logical operation; resend the same key when retrying",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_KEY_LENGTH,
        "pattern": "^[ -~]*[!-~][ -~]*$",
    },
}


def _complete_openapi(app: FastAPI, routers: Sequence[APIRouter], max_body_bytes: int) -> None:
    """Replace ``app.openapi`` by FastAPI's schema completed once with what the kit answers:
    its problems on every route (FastAPI's own 422 ``HTTPValidationError`` under
    ``application/json`` removed, errors are never that), the service-token security scheme and
    ``x-callers``, the identities a route admits."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for route in (r for router in routers for r in router.routes):
                if isinstance(route, APIRoute) and route.include_in_schema:
                    for method in route.methods or ():
                        operation = schema["paths"][route.path_format][method.lower()]
                        _complete_operation(operation, route, max_body_bytes)
                        _amend_body_schema(operation, schemas)
            schemas["ProblemDetails"] = PROBLEM_SCHEMA
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            schema["components"]["securitySchemes"] = {
                _SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A service token: HS256, issuer the caller, audience this service",
                }
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _is_problem_schema(schema: dict[str, Any]) -> bool:
    """``documented()``'s inline ProblemDetails (as FastAPI re-encoded it): one shared ``$ref``."""
    properties: dict[str, Any] = schema.get("properties", {})
    return schema.get("title") == PROBLEM_SCHEMA["title"] and set(properties) == set(
        PROBLEM_SCHEMA["properties"]
    )


def _calls(dependant: Dependant) -> list[Any]:
    """Every dependency a route runs, its own and theirs."""
    return [call for dep in dependant.dependencies for call in (dep.call, *_calls(dep))]


# A route's ``openapi_extra`` key for what its body's schema says beyond its fields (``oneOf``
# over a form's fields): FastAPI generates a form's schema from its parameters, one by one.
BODY_SCHEMA = "x-body-schema"


def _amend_body_schema(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    extra = operation.pop(BODY_SCHEMA, None)
    if extra is None:
        return
    for content in operation["requestBody"]["content"].values():
        ref: str = content["schema"]["$ref"]
        schemas[ref.rsplit("/", 1)[1]].update(extra)


def _complete_operation(operation: dict[str, Any], route: APIRoute, max_body_bytes: int) -> None:
    calls = _calls(route.dependant)
    answers: list[tuple[int, str, str]] = [_INTERNAL]
    admitted = [name for call in calls if isinstance(call, Allow) for name in call.names]
    if authenticated_caller in calls:
        operation["security"] = [{_SECURITY_SCHEME: []}]
        operation["x-callers"] = admitted or ["*"]
        answers.append(_UNAUTHENTICATED)
        if admitted:
            answers.append(_FORBIDDEN)
    body = operation.get("requestBody", {}).get("content", {})  # also one a route reads itself
    if route.body_field is not None or operation.get("parameters"):
        answers.extend((_INVALID, _OUT_OF_RANGE, _UNSTORABLE))
    if "application/json" in body:
        answers.append(_MALFORMED)
    if body:
        too_large, slug, when = _TOO_LARGE
        answers.append((too_large, slug, f"{when} ({max_body_bytes} bytes)"))
    if idempotent_request in calls:
        # Read by the kit from the raw headers (so a missing key is its own 400, not a 422):
        # declared here so clients and the fuzzer send it.
        operation.setdefault("parameters", []).append(_IDEMPOTENCY_KEY)
        answers.extend(_IDEMPOTENCY)
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for one in answers:
        ((status, answer),) = documented(one).items()
        given = responses.get(str(status))
        if given is None or PROBLEM_JSON not in given.get("content", {}):
            responses[str(status)] = answer  # absent, or FastAPI's application/json 422
        elif f"`{one[1]}`" not in given["description"]:  # the route did not name this kind
            given["description"] = f"{given['description']}; {answer['description']}"
    for response in responses.values():
        problem = response.get("content", {}).get(PROBLEM_JSON)
        if problem is not None and _is_problem_schema(problem.get("schema", {})):
            problem["schema"] = {"$ref": "#/components/schemas/ProblemDetails"}
    operation["responses"] = dict(sorted(responses.items()))
