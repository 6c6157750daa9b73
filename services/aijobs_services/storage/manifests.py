"""Is it a manifest we accept? A batch's results, one JSON line per input, written by the operator
and read by the user; or an image list, a batch's inputs one per line, written by the user
(:mod:`aijobs.api.imagelist`). Both are stored as text, so each must be UTF-8 (checked over the
received file in pieces, never held whole in memory); neither is sniffed as an image nor has
pixels. What a list's lines say is checked by Main API when it is uploaded and by the operator
when a batch names it, not here: Storage keeps bytes."""

from __future__ import annotations

import codecs
from pathlib import Path

from aijobs.api.imagelist import LIST_TYPE
from aijobs.api.storage import MANIFEST_TYPE
from aijobs_services.kit.problems import Problem
from aijobs_services.storage.images import ImageInfo

PIECE = 1024 * 1024


class UnsupportedManifest(Problem):
    status, slug, title = 415, "unsupported-manifest", "Not a UTF-8 manifest"


def inspect_manifest(path: Path, kind: str = "manifest") -> ImageInfo:
    """The manifest's (or the image list's) description (its type, no pixels), or
    :class:`UnsupportedManifest` naming the first byte that is not UTF-8."""
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
            what = "an image list is UTF-8 text" if kind == "list" else "a manifest is UTF-8 text"
            raise UnsupportedManifest(
                f"{what}; byte {start + exc.start} is not UTF-8", byte=start + exc.start
            ) from exc
    return ImageInfo(LIST_TYPE if kind == "list" else MANIFEST_TYPE, 0, 0)
