"""The upscaler against bicubic on photographs it never saw: scikit-image's sample photographs
(bundled in its wheel; never trained on), under each protocol of :mod:`.degrade`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from aijobs_worker.espcn import ESPCN, bicubic_x2

from aijobs_dev.upscaler import degrade

# Natural photographs (not textures, microscopy or drawings); camera and coins are grey.
EVALUATION = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "hubble_deep_field",
    "stereo_motorcycle",
    "rocket",
)


def photographs() -> dict[str, np.ndarray]:
    from skimage import data

    out = {}
    for name in EVALUATION:
        image = getattr(data, name)()
        if isinstance(image, tuple):
            image = image[0]
        if image.ndim == 2:
            image = np.stack([image] * 3, -1)
        out[name] = degrade.even(np.asarray(image[..., :3], dtype=np.uint8))
    return out


def upscale(model: ESPCN | None, low: np.ndarray) -> np.ndarray:
    """``model``'s x2 of ``low``, or bicubic's (Keys, a = -0.5, computed in float, rounded)."""
    x = torch.from_numpy(np.array(low, copy=True)).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        y = bicubic_x2(x) if model is None else model(x)
    return (y[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@dataclass(frozen=True)
class Row:
    protocol: str
    image: str
    bicubic: dict[str, float]
    ours: dict[str, float]

    def gain(self, metric: str) -> float:
        return self.ours[metric] - self.bicubic[metric]


def evaluate(model: ESPCN, protocols: tuple[str, ...] = tuple(degrade.PROTOCOLS)) -> list[Row]:
    rows = []
    for name, truth in photographs().items():
        for protocol in protocols:
            low = degrade.PROTOCOLS[protocol](truth)
            rows.append(
                Row(
                    protocol,
                    name,
                    degrade.scores(upscale(None, low), truth),
                    degrade.scores(upscale(model, low), truth),
                )
            )
    return rows


def mean_gain(rows: list[Row], metric: str, protocols: tuple[str, ...]) -> float:
    return float(np.mean([r.gain(metric) for r in rows if r.protocol in protocols]))
