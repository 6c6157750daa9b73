"""The CRD's schema and the pydantic models describe the same resource, field for field."""

from __future__ import annotations

import types
import typing
from enum import Enum
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel

from aijobs.api import tenancy, v1alpha1
from aijobs.crds import load_crds

_CRDS = {
    crd["spec"]["names"]["kind"]: crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for crd in load_crds()
}
SCHEMA = _CRDS["AIImageJob"]

JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}


def _unwrap(annotation: Any) -> Any:
    """Strip ``X | None``."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        assert len(args) == 1, annotation
        return args[0]
    return annotation


def _json_type(annotation: Any) -> str:
    annotation = _unwrap(annotation)
    origin = get_origin(annotation) or annotation
    if isinstance(origin, type) and issubclass(origin, BaseModel):
        return "object"
    if isinstance(origin, type) and issubclass(origin, Enum):
        return "string"
    if origin is Literal:
        return "string"
    if getattr(annotation, "__name__", "") == "datetime":
        return "string"
    return JSON_TYPES[origin]


def _enum_values(annotation: Any) -> list[str] | None:
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [member.value for member in annotation]
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return None  # a plain str (pipeline): checked against PIPELINES below


def _walk(model: type[BaseModel], schema: dict[str, Any], path: str) -> list[str]:
    problems = []
    props = schema.get("properties", {})
    fields = {f.alias or name: f for name, f in model.model_fields.items()}
    for missing in sorted(set(props) - set(fields)):
        problems.append(f"{path}.{missing}: in the CRD, not in {model.__name__}")
    for extra in sorted(set(fields) - set(props)):
        problems.append(f"{path}.{extra}: in {model.__name__}, not in the CRD")
    for name in sorted(set(props) & set(fields)):
        sub, ann = props[name], _unwrap(fields[name].annotation)
        if _json_type(ann) != sub["type"]:
            problems.append(f"{path}.{name}: CRD type {sub['type']}, model type {_json_type(ann)}")
            continue
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            problems += _walk(ann, sub, f"{path}.{name}")
        elif (
            get_origin(ann) is list
            and isinstance(get_args(ann)[0], type)
            and issubclass(get_args(ann)[0], BaseModel)
        ):
            problems += _walk(get_args(ann)[0], sub["items"], f"{path}.{name}[]")
        values = _enum_values(ann)
        if "enum" in sub and values is not None and sorted(values) != sorted(sub["enum"]):
            problems.append(f"{path}.{name}: enum {sub['enum']} vs model {values}")
    return problems


@pytest.mark.parametrize(
    ("model", "part"),
    [
        pytest.param(v1alpha1.AIImageJobSpec, "spec", id="spec"),
        pytest.param(v1alpha1.AIImageJobStatus, "status", id="status"),
        pytest.param(tenancy.CreditAccountSpec, "spec", id="creditaccount-spec"),
        pytest.param(tenancy.CreditAccountStatus, "status", id="creditaccount-status"),
    ],
)
def test_crd_schema_and_pydantic_model_agree(model: type[BaseModel], part: str) -> None:
    schema = _CRDS["CreditAccount" if model.__module__ == tenancy.__name__ else "AIImageJob"]
    assert _walk(model, schema["properties"][part], part) == []


def test_crd_pipeline_enum_is_the_project_pipeline_list() -> None:
    assert SCHEMA["properties"]["spec"]["properties"]["pipeline"]["enum"] == list(v1alpha1.PIPELINES)


def _undescribed(schema: dict[str, Any], path: str) -> list[str]:
    missing = [] if "description" in schema or path.endswith("metadata") else [path]
    for name, sub in schema.get("properties", {}).items():
        missing += _undescribed(sub, f"{path}.{name}")
    if "items" in schema and schema["items"].get("type") == "object":
        missing += _undescribed(schema["items"] | {"description": "items"}, f"{path}[]")
    return missing


@pytest.mark.parametrize("kind", sorted(_CRDS))
def test_every_field_a_user_sees_in_kubectl_explain_has_a_description(kind: str) -> None:
    assert _undescribed(_CRDS[kind], kind.lower()) == []
