"""Is it a manifest we accept? A batch's results, one JSON line per input, written by the operator
and read by the user: stored as text, so it must be UTF-8 (checked over the received file in
pieces, never held whole in memory). It is never sniffed as an image and has no pixels."""

from __future__ import annotations

import codecs
from pathlib import Path

from aijobs.api.storage import MANIFEST_TYPE
from aijobs_services.kit.problems import Problem
from aijobs_services.storage.images import ImageInfo

PIECE = 1024 * 1024


class UnsupportedManifest(Problem):
    status, slug, title = 415, "unsupported-manifest", "Not a UTF-8 manifest"


def inspect_manifest(path: Path) -> ImageInfo:
    """The manifest's description (its type, no pixels), or :class:`UnsupportedManifest` naming
    the first byte that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    read = start = 0  # bytes read; where the decoder's input (held bytes, then a piece) starts
    with path.open("rb") as content:
        try:
            while piece := content.read(PIECE):
                start = read - len(decoder.getstate()[0])
                decoder.decode(piece)
                read += len(piece)
            start = read - len(decoder.getstate()[0])
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise UnsupportedManifest(
                f"a manifest is UTF-8 text (JSON lines); byte {start + exc.start} is not UTF-8",
                byte=start + exc.start,
            ) from exc
    return ImageInfo(MANIFEST_TYPE, 0, 0)
