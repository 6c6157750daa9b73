"""Classes of input that once reached a 500 or were silently coerced, checked on every route of
every service (so a route added later is held to them too), without a network or a database:

- every integer a caller sends (query or body) is bounded by what a 64-bit column holds;
- every time a caller sends is one type that refuses what UTC or the database can't hold;
- booleans and integers in bodies are strict: ``"yes"`` is no boolean, ``"8"`` is no number;
  but ``8.0`` is the integer 8 and any time of years 0001 to 9999 is a time, as JSON Schema
  (and so the OpenAPI) says.
"""

from __future__ import annotations

import datetime as dt
import types
import typing
from collections.abc import Iterator
from typing import Any

import pytest
from aijobs_services.kit.fields import MAX_ROW_ID
from aijobs_services.registry import SERVICES, spec
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError


def _routes(name: str) -> list[APIRoute]:
    return [r for router in spec(name).routers for r in router.routes if isinstance(r, APIRoute)]


def _openapi(name: str) -> dict[str, Any]:
    app = FastAPI()
    for router in spec(name).routers:
        app.include_router(router)
    return app.openapi()


def _integers(schema: dict[str, Any], components: dict[str, Any], where: str) -> Iterator[tuple[str, Any]]:
    if "$ref" in schema:
        yield from _integers(components[schema["$ref"].rsplit("/", 1)[1]], components, where)
        return
    if schema.get("type") == "integer":
        yield where, schema
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            yield from _integers(sub, components, where)
    for prop, sub in (schema.get("properties") or {}).items():
        yield from _integers(sub, components, f"{where}.{prop}")
    if isinstance(schema.get("items"), dict):
        yield from _integers(schema["items"], components, f"{where}[]")


def _every_integer_a_caller_sends() -> list[Any]:
    cases = []
    for name in SERVICES:
        doc = _openapi(name)
        components = doc.get("components", {}).get("schemas", {})
        for path, methods in doc["paths"].items():
            for method, op in methods.items():
                found = []
                for param in op.get("parameters", []):
                    found += _integers(param["schema"], components, f"{param['in']}.{param['name']}")
                for content in (op.get("requestBody") or {}).get("content", {}).values():
                    found += _integers(content["schema"], components, "body")
                cases += [pytest.param(s, id=f"{name}:{method.upper()} {path} {w}") for w, s in found]
    return cases


@pytest.mark.parametrize("schema", _every_integer_a_caller_sends())
def test_every_integer_a_caller_sends_is_bounded_by_what_the_database_holds(schema: dict[str, Any]) -> None:
    assert schema.get("maximum", schema.get("exclusiveMaximum", float("inf"))) <= MAX_ROW_ID
    assert schema.get("minimum", schema.get("exclusiveMinimum", -float("inf"))) >= -MAX_ROW_ID - 1


def _unwrap(annotation: Any) -> Any:
    """``X`` of ``X | None`` and of ``Annotated[X, ...]``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    if typing.get_origin(annotation) is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    return annotation


def _body_fields() -> Iterator[tuple[str, type[BaseModel], str, Any]]:
    seen: set[tuple[type[BaseModel], str]] = set()

    def walk(model: type[BaseModel], where: str) -> Iterator[tuple[str, type[BaseModel], str, Any]]:
        for field_name, info in model.model_fields.items():
            alias = info.alias or field_name
            kind = _unwrap(info.annotation)
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                yield from walk(kind, f"{where}.{alias}")
            elif (model, alias) not in seen:
                seen.add((model, alias))
                yield where, model, alias, kind

    for name in SERVICES:
        for route in _routes(name):
            for param in route.dependant.body_params:
                model = _unwrap(param.field_info.annotation)
                if isinstance(model, type) and issubclass(model, BaseModel):
                    yield from walk(model, f"{name}:{sorted(route.methods)[0]} {route.path}")


WRONG = {
    bool: ["yes", "true", 0, 1],
    int: ["8", True, 8.5, None],
    # A time UTC cannot hold (year 0 and year 10000 there), and a number (not Unix time).
    dt.datetime: ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", 0],
}
# What JSON Schema's data model says is the same value: the integer 8 written 8.0, any time in
# years 0001 to 9999.
SAME = {
    int: [(8.0, 8), (1e3, 1000)],
    dt.datetime: [
        ("1969-12-31T23:59:59Z", dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=dt.UTC)),
        ("0001-01-01T00:00:00Z", dt.datetime(1, 1, 1, tzinfo=dt.UTC)),
        ("9999-12-31T23:59:59+01:00", dt.datetime(9999, 12, 31, 22, 59, 59, tzinfo=dt.UTC)),
    ],
}


def _cases(table: dict[Any, list[Any]]) -> list[Any]:
    cases = []
    for where, model, alias, kind in _body_fields():
        optional = next(f for n, f in model.model_fields.items() if (f.alias or n) == alias).default is None
        for value in table.get(kind, []):
            if value is None and optional:
                continue  # null is what an optional field (a partial capture's amount) is sent as
            cases.append(pytest.param(model, alias, value, id=f"{where} {alias}={value!r}"))
    return cases


CASES = _cases(WRONG)


def test_the_walk_finds_the_fields_that_were_once_coerced() -> None:
    found = {(c.values[0].__name__, c.values[1]) for c in CASES}
    assert {("Failure", "retryable"), ("HoldCreate", "expiresAt"), ("TaskCreate", "runAt")} <= found


@pytest.mark.parametrize(("model", "alias", "value"), CASES)
def test_no_body_field_takes_a_value_of_another_type_or_an_unrepresentable_time(
    model: type[BaseModel], alias: str, value: Any
) -> None:
    with pytest.raises(ValidationError) as refused:
        model.model_validate({alias: value})
    assert any(e["loc"][:1] == (alias,) for e in refused.value.errors()), refused.value.errors()


def _field_errors(model: type[BaseModel], alias: str, value: Any) -> list[Any]:
    try:
        model.model_validate({alias: value})
    except ValidationError as refused:
        return [(e["type"], e["msg"]) for e in refused.errors() if e["loc"][:1] == (alias,)]
    return []


@pytest.mark.parametrize(("model", "alias", "pair"), _cases(SAME))
def test_a_value_written_another_way_is_read_as_the_value_it_is(
    model: type[BaseModel], alias: str, pair: tuple[Any, Any]
) -> None:
    written, value = pair
    assert _field_errors(model, alias, written) == _field_errors(model, alias, value)
    name = next(n for n, f in model.model_fields.items() if (f.alias or n) == alias)
    info = model.model_fields[name]
    field = TypeAdapter(info.rebuild_annotation())  # the field alone, its bounds too
    if not _field_errors(model, alias, value):
        assert field.validate_python(written) == value
