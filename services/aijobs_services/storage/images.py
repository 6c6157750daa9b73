"""Is it an image we accept? Sniffed from the bytes (never the name), with size and pixel limits
checked from the header *before* decoding, so a decompression bomb is refused cheaply."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from aijobs_services.kit.problems import Problem

ACCEPTED = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


class UnsupportedImage(Problem):
    status, slug, title = 415, "unsupported-image", "Not an accepted image"


class ImageTooLarge(Problem):
    status, slug, title = 413, "image-too-large", "Image too large"


@dataclass(frozen=True)
class ImageInfo:
    content_type: str
    width: int
    height: int


def inspect_image(path: Path, *, max_pixels: int, max_side: int, decode: bool = True) -> ImageInfo:
    """The image's type and size, or why it is refused. ``decode=False`` reads its header only:
    for bytes whose soundness is vouched for otherwise (a worker's result, checked against the
    digest its encoder computed), where a full decode would only repeat the encoder's work."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt = im.format or "unknown"
                width, height = im.size
                if fmt not in ACCEPTED:
                    raise UnsupportedImage(f"{fmt} images are not accepted (accepted: PNG, JPEG, WebP)")
                if width * height > max_pixels or max(width, height) > max_side:
                    raise ImageTooLarge(
                        f"{width}x{height} is over the limit ({max_pixels} pixels, {max_side} per side)",
                        width=width,
                        height=height,
                    )
                if decode:
                    im.load()  # a full decode: a truncated or corrupt file fails here
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise UnsupportedImage("the content is not a recognisable image") from exc
        raise ImageTooLarge(f"the image is a decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnsupportedImage(f"the image is corrupt or truncated: {exc}") from exc
    return ImageInfo(ACCEPTED[fmt], width, height)
