"""Image decoding and encoding, on CPU threads off the GPU's critical path. A bad image fails its
own task with a clear, non-retryable reason; it never reaches a batch."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 40_000_000
THREADS = 4  # the worker's codec pool (PIL lets go of the GIL while it decodes and encodes)

_T = TypeVar("_T")


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


def decode_each(blobs: Sequence[bytes]) -> list[torch.Tensor | BadImage]:
    """:func:`decode` of each blob, a bad one's refusal in its place: many images on one thread
    of the pool, not a thread hop each."""
    decoded: list[torch.Tensor | BadImage] = []
    for blob in blobs:
        try:
            decoded.append(decode(blob))
        except BadImage as exc:
            decoded.append(exc)
    return decoded


def encode_each(images: Sequence[torch.Tensor]) -> list[tuple[bytes, str]]:
    """:func:`encode` of each image, with the sha256 of its bytes (taken here, from the encoder's
    bytes in memory, before they are written anywhere)."""
    return [(png, hashlib.sha256(png).hexdigest()) for png in map(encode, images)]


def runs(values: Sequence[_T], threads: int = THREADS) -> list[Sequence[_T]]:
    """``values`` cut into at most ``threads`` runs of neighbours whose lengths differ by one at
    most (13 on 4 threads: 4, 3, 3, 3): what each thread of the pool takes in one hop
    (:func:`decode_each`, :func:`encode_each`)."""
    count = min(threads, len(values))
    if count == 0:
        return []
    size, longer = divmod(len(values), count)
    cut, start = [], 0
    for n in range(count):
        end = start + size + (1 if n < longer else 0)
        cut.append(values[start:end])
        start = end
    return cut
