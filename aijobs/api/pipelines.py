"""The pipelines' names and parameter schemas, without torch: the CRD, the AI service and Main
API validate against this, and the worker's registry (which has the torch code) is checked
against it by a test, so the three never disagree.

Types are strict, as the CRD's schema is: ``"yes"`` is not a boolean and ``"8"`` not an integer,
wherever a job enters; ``8.0`` is the integer 8, as the API server reads it. A refusal says what
``kubectl apply`` would say of the same parameters: the messages are made here, for the CRD's
generated rules (:mod:`aijobs.api.crd_rules`) and for the services alike."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from aijobs.api.fields import Int
from aijobs.api.v1alpha1 import PIPELINES

__all__ = [
    "PARAMETERS",
    "PipelineError",
    "bounds",
    "foreign_message",
    "missing_message",
    "range_message",
    "validate_parameters",
]


class _Params(BaseModel):
    # strict: no coercion ("yes" -> True, "8" -> 8); an int is still a number and 8.0 an integer
    # (:data:`aijobs.api.fields.Int`), as in JSON Schema and on the API server.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NoParams(_Params):
    pass


class ResizeParams(_Params):
    width: Int = Field(ge=1, le=8192, description="Output width in pixels")
    height: Int = Field(ge=1, le=8192, description="Output height in pixels")
    antialias: bool = Field(default=True, description="Low-pass filter before downscaling")


class DenoiseParams(_Params):
    strength: float = Field(default=0.5, gt=0, le=3.0, description="Gaussian sigma in pixels")


class SharpenParams(_Params):
    amount: float = Field(default=1.0, gt=0, le=5.0, description="Unsharp-mask gain")
    sigma: float = Field(default=1.0, gt=0, le=5.0, description="Blur sigma of the mask")


class ThumbnailParams(_Params):
    size: Int = Field(default=256, ge=16, le=1024, description="Longest side of the thumbnail")


class UserModelParams(_Params):
    model: str = Field(
        pattern=r"^[A-Za-z0-9._-]{1,128}$", description="A model file in the worker's model folder"
    )


PARAMETERS: dict[str, type[_Params]] = {
    "upscale-x2": NoParams,
    "resize": ResizeParams,
    "denoise": DenoiseParams,
    "sharpen": SharpenParams,
    "grayscale": NoParams,
    "thumbnail": ThumbnailParams,
    "user-model": UserModelParams,
}
assert tuple(PARAMETERS) == PIPELINES


class PipelineError(ValueError):
    """An unknown pipeline or bad parameters; the message says which and lists what is allowed."""


_JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}


def bounds(info: FieldInfo) -> tuple[Any, Any, bool, bool]:
    """(low, high, low is open, high is open) of a parameter's range; None where unbounded."""
    lo = hi = None
    lo_open = hi_open = False
    for meta in info.metadata:
        for attr, is_lo, is_open in (
            ("ge", True, False),
            ("gt", True, True),
            ("le", False, False),
            ("lt", False, True),
        ):
            value = getattr(meta, attr, None)
            if value is None:
                continue
            if is_lo:
                lo, lo_open = value, is_open
            else:
                hi, hi_open = value, is_open
    return lo, hi, lo_open, hi_open


def foreign_message(pipeline: str) -> str:
    takes = ", ".join(PARAMETERS[pipeline].model_fields) or "no parameters"
    return f"parameters: {pipeline} takes {takes}"


def missing_message(pipeline: str, name: str) -> str:
    return f"parameters.{name}: {pipeline} needs it"


def range_message(pipeline: str, name: str) -> str:
    lo, hi, lo_open, hi_open = bounds(PARAMETERS[pipeline].model_fields[name])
    span = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return f"parameters.{name}: for {pipeline} it must be in {span}"


def _message(pipeline: str, error: Any) -> str:
    name = ".".join(map(str, error["loc"]))
    info = PARAMETERS[pipeline].model_fields.get(name)
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{foreign_message(pipeline)} (not {name})"
    if kind == "missing":
        return missing_message(pipeline, name)
    if info is not None and kind.endswith("_type"):
        return f"parameters.{name}: must be of type {_JSON_TYPES[info.annotation]}"  # type: ignore[index]
    if info is not None and kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return range_message(pipeline, name)
    if info is not None and kind == "string_pattern_mismatch":
        pattern = next(m.pattern for m in info.metadata if getattr(m, "pattern", None))
        return f"parameters.{name}: should match '{pattern}'"
    return f"parameters.{name}: {error['msg']}"


def validate_parameters(pipeline: str, parameters: dict[str, Any]) -> dict[str, Any]:
    model = PARAMETERS.get(pipeline)
    if model is None:
        raise PipelineError(f"unknown pipeline {pipeline!r}; known pipelines: {', '.join(PIPELINES)}")
    try:
        return model.model_validate(parameters).model_dump()
    except ValidationError as exc:
        problems = "; ".join(dict.fromkeys(_message(pipeline, e) for e in exc.errors()))
        raise PipelineError(f"bad parameters for {pipeline}: {problems}") from exc
