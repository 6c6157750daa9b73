"""Health, readiness, Prometheus metrics, body-size limits and structured logs for a service.

Metrics live in a registry per app (not the process-global one), so several services can run in
one process (tests, the demo) without colliding.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aijobs_services.kit.problems import Problem, documented

__all__ = ["Alive", "Ready", "RequestMetrics", "ServiceMetrics", "configure_logging", "health_router"]


class ServiceMetrics:
    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "aijobs_http_requests_total",
            "HTTP requests by route and status",
            ["service", "method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "aijobs_http_request_duration_seconds",
            "HTTP request latency by route",
            ["service", "method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.replays = Counter(
            "aijobs_idempotent_replays_total",
            "Requests answered from a stored Idempotency-Key response",
            ["service", "route"],
            registry=self.registry,
        )

    def replayed(self, route: str) -> None:
        self.replays.labels(self.service, route).inc()


class RequestMetrics:
    """Pure ASGI middleware: counts and times requests by route template, and refuses bodies
    over the limit with 413 before the app reads them."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await self._too_large(scope, send)
            self._observe(scope, 413, started)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge
            return message

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, recording_send)
        except _BodyTooLarge:
            status = 413
            await self._too_large(scope, send)
        finally:
            self._observe(scope, status, started)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        problem = Problem(
            f"the request body is larger than this service accepts ({self.max_body_bytes} bytes)",
            status=413,
            slug="payload-too-large",
            title="Request body too large",
        )
        await problem.response(scope.get("path"))(scope, _no_body, send)

    def _observe(self, scope: Scope, status: int, started: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope.get("method", "")
        self.metrics.requests.labels(self.metrics.service, method, route, str(status)).inc()
        self.metrics.latency.labels(self.metrics.service, method, route).observe(
            time.perf_counter() - started
        )


class _BodyTooLarge(BaseException):
    """A BaseException so that no ``except Exception`` on the way (FastAPI turns any error while
    reading a body into a 400) can hide it from this middleware, which answers 413."""


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class Alive(BaseModel):
    status: Literal["ok"] = "ok"
    service: str = Field(description="Which service answered (a reused port answers with another name)")


class Ready(BaseModel):
    status: Literal["ready"] = "ready"


def health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="Liveness: the process answers")
    def healthz(request: Request) -> Alive:
        return Alive(service=request.app.state.metrics.service)

    @router.get(
        "/readyz",
        summary="Readiness: the database answers",
        response_model=Ready,
        responses=documented((503, "not-ready", "the database does not answer")),
    )
    def readyz(request: Request) -> JSONResponse | Ready:
        try:
            with request.app.state.engine.connect() as conn:
                conn.execute(sa.text("select 1"))
        except Exception as exc:  # any failure means "not ready"; the reason goes to the caller
            problem = Problem(
                f"database unreachable: {type(exc).__name__}",
                status=503,
                slug="not-ready",
                title="Service not ready",
            )
            return problem.response("/readyz")
        return Ready()

    @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
