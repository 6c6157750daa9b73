"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error kind has a stable ``type`` URI (``https://aijobs.io/problems/<slug>``) that clients
branch on; ``title`` is fixed per kind and ``detail`` says what happened this time.

    Problem                      base: status, slug, title, detail, extra members
    ├── BadRequest (400)         a request that cannot be understood
    ├── Unauthenticated (401)    no or bad credentials
    ├── Forbidden (403)          a known caller that may not do this
    ├── NotFound (404)
    ├── Conflict (409)           the state forbids it (captured hold, other content under a key)
    ├── Unprocessable (422)      well-formed but invalid (validation, key reused with another body)
    └── ...                      services add their own kinds by subclassing or with ``Problem(...)``
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from aijobs.api.fields import OUT_OF_RANGE
from aijobs.api.problem import PROBLEM_JSON, ProblemDetails, problem_type

__all__ = [
    "PROBLEM_JSON",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "NotFound",
    "Problem",
    "Unauthenticated",
    "Unprocessable",
    "documented",
    "install_problem_handlers",
    "invalid",
    "problem_type",
    "read_item",
]

M = TypeVar("M", bound=BaseModel)


class Problem(Exception):
    status = 500
    slug = "internal-error"
    title = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        slug: str | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if slug is not None:
            self.slug = slug
        if title is not None:
            self.title = title
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": problem_type(self.slug),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            doc["instance"] = instance
        doc.update(self.extra)
        return doc

    def response(self, instance: str | None = None) -> JSONResponse:
        return JSONResponse(self.body(instance), self.status, self.headers, media_type=PROBLEM_JSON)


class BadRequest(Problem):
    status, slug, title = 400, "bad-request", "Bad request"


class Unauthenticated(Problem):
    status, slug, title = 401, "unauthenticated", "Authentication required"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"}, **extra)


class Forbidden(Problem):
    status, slug, title = 403, "forbidden", "Not allowed"


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(Problem):
    status, slug, title = 409, "conflict", "Conflict with the current state"


class Unprocessable(Problem):
    status, slug, title = 422, "unprocessable", "Invalid request"


class InvalidRequest(Unprocessable):
    """A request its route's models admit but a rule across its fields does not (one field of
    two, a time's exact form): refused as the models' own refusals are, same type and title."""

    slug, title = "validation-error", "Request validation failed"


PROBLEM_SCHEMA = ProblemDetails.model_json_schema()


def documented(*answers: type[Problem] | tuple[int, str, str]) -> dict[int | str, dict[str, Any]]:
    """A route's error answers for its OpenAPI ``responses``: each status with its
    ``application/problem+json`` body and the problem types it may carry. An answer is a
    :class:`Problem` kind or ``(status, slug, when)`` for a kind raised as ``Problem(...)``.

        @router.post("/holds", responses=documented(InsufficientCredits, NotFound))
    """
    by_status: dict[int, list[tuple[str, str]]] = {}
    for answer in answers:
        if isinstance(answer, tuple):
            status, slug, when = answer
        else:
            status, slug, when = answer.status, answer.slug, answer.title
        by_status.setdefault(status, []).append((slug, when))
    out: dict[int | str, dict[str, Any]] = {}
    for status, kinds in sorted(by_status.items()):
        out[status] = {
            "description": "; ".join(f"`{slug}`: {when}" for slug, when in kinds),
            "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}},
        }
    return out


def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def invalid(found: Sequence[Any]) -> Problem:
    """The refusal of a request its route's models do not admit, naming each field: pydantic's
    errors as FastAPI reports them (``loc`` from ``body``, ``query`` ...)."""
    errors = [{"field": _field(e["loc"]), "message": e["msg"], "kind": e["type"]} for e in found]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    slug, title = InvalidRequest.slug, InvalidRequest.title
    if any(e["kind"] == "json_invalid" for e in errors):
        slug, title = "malformed-json", "Malformed JSON body"
    elif errors and all(e["kind"] == OUT_OF_RANGE for e in errors):
        # A date-time the schema admits but UTC cannot hold: the calendar's rule, not a
        # request that does not fit the schema.
        slug, title = "time-out-of-range", "Time out of range"
    problem = Unprocessable(detail, slug=slug, title=title, errors=errors)
    if slug == "malformed-json":
        problem.status = 400
    return problem


def read_item(model: type[M], request: dict[str, Any]) -> M | Problem:
    """A bulk item's body (:mod:`aijobs.api.bulk`) read with its single route's model, or the
    422 that route would answer, naming the fields as it does (under ``body``)."""
    try:
        return model.model_validate(request)
    except ValidationError as error:
        found = error.errors(include_url=False, include_context=False, include_input=False)
        return invalid([{**e, "loc": ("body", *e["loc"])} for e in found])


def _methods_at(app: FastAPI, path: str) -> list[str]:
    """The methods the app documents at ``path``, read from its OpenAPI paths: a concrete path
    (``/tasks/query``) before the templates it also matches (``/tasks/{task_id}``), as OpenAPI
    matches them."""
    matching = [
        (template, operations)
        for template, operations in app.openapi()["paths"].items()
        if compile_path(template)[0].match(path)
    ]
    concrete = [(template, operations) for template, operations in matching if "{" not in template]
    return sorted({method.upper() for _, operations in concrete or matching for method in operations})


def install_problem_handlers(app: FastAPI) -> None:
    """Render every error the app can raise as problem+json, validation errors naming fields."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return exc.response(request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid(exc.errors()).response(request.url.path)

    @app.exception_handler(DataError)
    async def _unstorable(request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the request brought (a NUL in a text, a number past its
        # column's range): the client's to change, and a retry as is would fail the same way.
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else "refused by the database"
        problem = Unprocessable(
            f"a value in the request cannot be stored: {reason}",
            slug="unstorable-value",
            title="Value cannot be stored",
        )
        return problem.response(request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slugs = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large"}
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the methods of the first route matching the path; a path
            # served by several routes (GET and POST /accounts) answers all of them.
            headers["Allow"] = ", ".join(_methods_at(app, request.url.path))
        problem = Problem(
            str(exc.detail),
            status=exc.status_code,
            slug=slugs.get(exc.status_code, f"http-{exc.status_code}"),
            title=str(exc.detail),
            headers=headers,
        )
        return problem.response(request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The details go to the log, not to the caller; a 500 is "unknown outcome" for clients.
        import logging

        logging.getLogger("aijobs.services").exception("unhandled error on %s", request.url.path)
        return Problem("the service failed unexpectedly; retry with the same Idempotency-Key").response(
            request.url.path
        )
