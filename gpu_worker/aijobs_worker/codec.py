"""Image decoding and encoding, on CPU threads off the GPU's critical path. A bad image fails its
own task with a clear, non-retryable reason; it never reaches a batch."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 40_000_000


class BadImage(ValueError):
    """The input can't be processed: retrying won't help."""


def decode(data: bytes) -> torch.Tensor:
    """Bytes -> 3 x H x W uint8 tensor (RGB; alpha dropped, grayscale expanded)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise BadImage(f"{im.width}x{im.height} is over {MAX_PIXELS} pixels")
            rgb = im.convert("RGB")
            rgb.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, BadImage):
            raise
        raise BadImage(f"corrupt or unreadable image: {exc}") from exc
    array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def encode(image: torch.Tensor) -> bytes:
    """3 x H x W float in [0, 1] (CPU) -> PNG bytes."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(array, "RGB").save(buf, "PNG", compress_level=1)
    return buf.getvalue()
