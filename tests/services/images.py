"""Test images made on the fly (nothing binary is checked in)."""

from __future__ import annotations

import io

from PIL import Image


def png(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def jpeg(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").resize((width, height)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def gif() -> bytes:
    buf = io.BytesIO()
    Image.new("P", (8, 8)).save(buf, "GIF")
    return buf.getvalue()


def bomb(side: int = 30_000) -> bytes:
    """A small file that decodes to side x side pixels (900 megapixels by default)."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG", optimize=True)
    return buf.getvalue()
