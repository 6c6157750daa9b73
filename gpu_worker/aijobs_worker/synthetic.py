"""Procedural training and test images: shapes, lines, gradients, textures and text, drawn
from a seed. Nothing is downloaded; a different seed gives a held-out set."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw


def image(rng: np.random.Generator, size: int) -> Image.Image:
    kind = rng.integers(0, 4)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # smooth gradient
        c0, c1 = rng.random(3), rng.random(3)
        t = (xx * rng.random() + yy * rng.random())[..., None]
        base = c0 * (1 - t / max(t.max(), 1e-6)) + c1 * (t / max(t.max(), 1e-6))
    elif kind == 1:  # sinusoidal texture
        f = rng.uniform(2, 12, size=2)
        phase = rng.random(3)[None, None, :] * 6.28
        base = 0.5 + 0.5 * np.sin(6.28 * (f[0] * xx + f[1] * yy)[..., None] + phase)
    elif kind == 2:  # checkerboard
        n = int(rng.integers(2, 10))
        check = ((np.floor(xx * n) + np.floor(yy * n)) % 2)[..., None]
        base = check * rng.random(3) + (1 - check) * rng.random(3)
    else:  # flat
        base = np.ones((size, size, 3)) * rng.random(3)
    img = Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 8))):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0, x1, y1 = sorted(rng.integers(0, size, 2)) + sorted(rng.integers(0, size, 2))
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        shape = rng.integers(0, 4)
        if shape == 0:
            draw.rectangle((x0, y0, x1, y1), fill=color)
        elif shape == 1:
            draw.ellipse((x0, y0, x1, y1), outline=color, width=int(rng.integers(1, 4)))
        elif shape == 2:
            draw.line((x0, y0, x1, y1), fill=color, width=int(rng.integers(1, 3)))
        else:
            text = "".join(chr(int(c)) for c in rng.integers(65, 91, int(rng.integers(3, 9))))
            draw.text((x0, y0), text, fill=color)
    return img


def batch(rng: np.random.Generator, n: int, size: int) -> torch.Tensor:
    """n images as an N x 3 x size x size float tensor in [0, 1]."""
    arrays = [np.asarray(image(rng, size), dtype=np.float32) / 255 for _ in range(n)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
