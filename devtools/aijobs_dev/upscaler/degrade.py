"""How a low-resolution picture is made from a photograph (the protocols), and how a x2
reconstruction is scored against the photograph. Pictures are H x W x 3 uint8 arrays."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

Picture = np.ndarray  # H x W x 3, uint8
SHAVE = 2  # border pixels left out of the scores (the scale), as the field does


def _tensor(p: Picture) -> torch.Tensor:
    return torch.from_numpy(np.array(p, copy=True)).permute(2, 0, 1)[None].float() / 255


def _picture(t: torch.Tensor) -> Picture:
    return (t[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _halve(p: Picture, mode: str) -> Picture:
    h, w = p.shape[:2]
    kw = {"antialias": True} if mode in ("bicubic", "bilinear") else {}
    return _picture(F.interpolate(_tensor(p), size=(h // 2, w // 2), mode=mode, **kw))


def bicubic(p: Picture) -> Picture:
    """The super-resolution papers' protocol: bicubic with antialiasing (MATLAB's imresize)."""
    return _halve(p, "bicubic")


def bilinear(p: Picture) -> Picture:
    return _halve(p, "bilinear")


def area(p: Picture) -> Picture:
    return _halve(p, "area")


def blur(p: Picture, sigma: float = 0.8) -> Picture:
    blurred = np.asarray(Image.fromarray(p).filter(ImageFilter.GaussianBlur(sigma)))
    return bicubic(blurred)


def jpeg(p: Picture, quality: int = 75) -> Picture:
    buf = io.BytesIO()
    Image.fromarray(bicubic(p)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


PROTOCOLS: dict[str, Callable[[Picture], Picture]] = {
    "bicubic": bicubic,
    "bilinear": bilinear,
    "area": area,
    "blur0.8+bicubic": blur,
    "bicubic+jpeg75": jpeg,
}


def even(p: Picture) -> Picture:
    h, w = p.shape[:2]
    return p[: h - h % 2, : w - w % 2]


# -- scores -------------------------------------------------------------------------------------
def ycbcr(p: Picture) -> np.ndarray:
    """BT.601 full-range Y, Cb, Cr in [0, 255] (float)."""
    rgb = p.astype(np.float64)
    y = rgb @ np.array([0.299, 0.587, 0.114])
    cb = (rgb[..., 2] - y) * 0.564 + 128
    cr = (rgb[..., 0] - y) * 0.713 + 128
    return np.stack([y, cb, cr], -1)


def _shaved(p: np.ndarray) -> np.ndarray:
    return p[SHAVE:-SHAVE, SHAVE:-SHAVE]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((_shaved(a).astype(np.float64) - _shaved(b).astype(np.float64)) ** 2))
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def scores(ours: Picture, truth: Picture) -> dict[str, float]:
    from skimage.metrics import structural_similarity

    y_ours, y_truth = ycbcr(ours), ycbcr(truth)
    chroma = float(np.mean((_shaved(y_ours[..., 1:]) - _shaved(y_truth[..., 1:])) ** 2))
    return {
        "psnr_y": psnr(y_ours[..., 0], y_truth[..., 0]),
        "psnr_rgb": psnr(ours, truth),
        "ssim_y": float(
            structural_similarity(  # type: ignore[no-untyped-call]
                _shaved(y_ours[..., 0]), _shaved(y_truth[..., 0]), data_range=255.0
            )
        ),
        "chroma_mse": chroma,
    }
