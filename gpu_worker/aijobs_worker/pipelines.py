"""The pipeline registry: a name, its parameter schema (from :mod:`aijobs.api.pipelines`, shared
with the CRD and the AI service) and a torch function over a batch ``N x 3 x H x W`` in [0, 1] on
the worker's device. Classical pipelines are torch ops too, so they run on the GPU as well."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from aijobs.api.pipelines import PARAMETERS, validate_parameters
from aijobs_worker import espcn

BatchFn = Callable[[torch.Tensor, dict[str, Any], "Models"], torch.Tensor]


class Models:
    """Models loaded once per process and kept warm (the learned one, and users' own)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, model_dir: Path | None) -> None:
        self.device, self.dtype, self.model_dir = device, dtype, model_dir
        self._espcn: torch.nn.Module | None = None
        self._user: dict[str, torch.jit.ScriptModule] = {}

    def espcn(self) -> torch.nn.Module:
        if self._espcn is None:
            model = espcn.load(device=self.device).to(memory_format=torch.channels_last)
            self._espcn = model.to(self.dtype) if self.dtype != torch.float32 else model
        return self._espcn

    def user(self, name: str) -> torch.jit.ScriptModule:
        if name not in self._user:
            if self.model_dir is None:
                raise ValueError("this worker has no model folder mounted (--model-dir)")
            path = (self.model_dir / name).resolve()
            if path.parent != self.model_dir.resolve() or not path.is_file():
                raise ValueError(f"no model {name!r} in the worker's model folder")
            self._user[name] = torch.jit.load(str(path), map_location=self.device).eval()
        return self._user[name]


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    horizontal = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(horizontal, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def upscale_x2(x: torch.Tensor, p: dict[str, Any], models: Models) -> torch.Tensor:
    return models.espcn()(x.to(models.dtype).contiguous(memory_format=torch.channels_last)).float()


def resize(x: torch.Tensor, p: dict[str, Any], models: Models) -> torch.Tensor:
    return F.interpolate(
        x, size=(p["height"], p["width"]), mode="bilinear", antialias=p["antialias"], align_corners=False
    ).clamp(0, 1)


def thumbnail(x: torch.Tensor, p: dict[str, Any], models: Models) -> torch.Tensor:
    h, w = x.shape[-2:]
    scale = min(1.0, p["size"] / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def denoise(x: torch.Tensor, p: dict[str, Any], models: Models) -> torch.Tensor:
    return _gaussian(x, p["strength"])


def sharpen(x: torch.Tensor, p: dict[str, Any], models: Models) -> torch.Tensor:
    return (x + p["amount"] * (x - _gaussian(x, p["sigma"]))).clamp(0, 1)


def grayscale(x: torch.Tensor, p: dict[str, Any], models: Models) -> torch.Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True).expand(-1, 3, -1, -1).contiguous()


def user_model(x: torch.Tensor, p: dict[str, Any], models: Models) -> torch.Tensor:
    out = models.user(p["model"])(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[1] not in (1, 3):
        raise ValueError("a user model must map N x 3 x H x W to N x 1|3 x H' x W'")
    return out.expand(-1, 3, -1, -1).clamp(0, 1) if out.shape[1] == 1 else out.clamp(0, 1)


@dataclass(frozen=True)
class Pipeline:
    name: str
    run: BatchFn
    # Batching same-sized inputs helps convolutions; a user's model may not accept batches of more.
    batchable: bool = True


REGISTRY: dict[str, Pipeline] = {
    p.name: p
    for p in [
        Pipeline("upscale-x2", upscale_x2),
        Pipeline("resize", resize),
        Pipeline("denoise", denoise),
        Pipeline("sharpen", sharpen),
        Pipeline("grayscale", grayscale),
        Pipeline("thumbnail", thumbnail),
        Pipeline("user-model", user_model, batchable=False),
    ]
}
assert set(REGISTRY) == set(PARAMETERS), "the worker and the shared schemas must name the same pipelines"


def prepare(name: str, params: dict[str, Any]) -> tuple[Pipeline, dict[str, Any]]:
    """The pipeline and its validated parameters (defaults filled); ValueError names the problem."""
    return REGISTRY[name], validate_parameters(name, params)
