"""The pipelines' names and parameter schemas, without torch: the CRD, the AI service and Main
API validate against this, and the worker's registry (which has the torch code) is checked
against it by a test, so the three never disagree."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aijobs.api.v1alpha1 import PIPELINES

__all__ = ["PARAMETERS", "PipelineError", "validate_parameters"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(_Params):
    pass


class ResizeParams(_Params):
    width: int = Field(ge=1, le=8192, description="Output width in pixels")
    height: int = Field(ge=1, le=8192, description="Output height in pixels")
    antialias: bool = Field(default=True, description="Low-pass filter before downscaling")


class DenoiseParams(_Params):
    strength: float = Field(default=0.5, gt=0, le=3.0, description="Gaussian sigma in pixels")


class SharpenParams(_Params):
    amount: float = Field(default=1.0, gt=0, le=5.0, description="Unsharp-mask gain")
    sigma: float = Field(default=1.0, gt=0, le=5.0, description="Blur sigma of the mask")


class ThumbnailParams(_Params):
    size: int = Field(default=256, ge=16, le=1024, description="Longest side of the thumbnail")


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


def validate_parameters(pipeline: str, parameters: dict[str, Any]) -> dict[str, Any]:
    model = PARAMETERS.get(pipeline)
    if model is None:
        raise PipelineError(f"unknown pipeline {pipeline!r}; known pipelines: {', '.join(PIPELINES)}")
    try:
        return model.model_validate(parameters).model_dump()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'parameters'}: {e['msg']}" for e in exc.errors()
        )
        allowed = ", ".join(model.model_fields) or "none"
        raise PipelineError(f"bad parameters for {pipeline}: {problems} (allowed: {allowed})") from exc
