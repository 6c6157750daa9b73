"""The local spool: a finished result is on disk (fsynced) before anything else happens to it, so
Storage being down costs a delay, never the work. One ``<task>.<lease>.png`` plus a
``<task>.<lease>.json`` describing the task (``<lease>``: a digest of the lease token the run
was under, so two runs of one task, the same task leased to this worker again after its first
lease ran out, are two entries and removing one leaves the other); written to temporary names
and renamed, so a crash leaves whole entries only. An entry an older worker spooled as
``<task>.png`` is still read and removed. On start the worker uploads what its spool holds
before it leases anything new."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Entry:
    task_id: str
    job_id: str
    account: str
    lease_token: str
    meta: dict[str, Any]
    item: int | None = None  # the image's index in a batch job (an entry spooled before: None)
    # The result's digest, taken from the encoder's bytes in memory before they were spooled:
    # Storage refuses bytes that hash otherwise (a spool file damaged on this disk), and need not
    # decode a result so vouched for (an entry spooled before: None).
    sha256: str | None = None


def _durable_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _stem(self, entry: Entry) -> Path:
        lease = hashlib.sha256(entry.lease_token.encode()).hexdigest()[:16]
        return self.root / f"{entry.task_id}.{lease}"

    def _files(self, entry: Entry) -> tuple[Path, Path]:
        """The entry's .png and .json: under its lease's name, or as an older worker named them."""
        stem = self._stem(entry)
        png = stem.with_name(stem.name + ".png")
        if png.exists() or not (self.root / f"{entry.task_id}.png").exists():
            return png, stem.with_name(stem.name + ".json")
        return self.root / f"{entry.task_id}.png", self.root / f"{entry.task_id}.json"

    def put(self, entry: Entry, content: bytes) -> None:
        stem = self._stem(entry)
        _durable_write(stem.with_name(stem.name + ".png"), content)
        _durable_write(stem.with_name(stem.name + ".json"), json.dumps(asdict(entry)).encode())  # commits
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> list[Entry]:
        found = []
        for meta in sorted(self.root.glob("*.json")):
            if (self.root / f"{meta.stem}.png").exists():
                found.append(Entry(**json.loads(meta.read_text())))
        return found

    def content(self, entry: Entry) -> bytes:
        return self._files(entry)[0].read_bytes()

    def remove(self, entry: Entry) -> None:
        png, meta = self._files(entry)
        meta.unlink(missing_ok=True)
        png.unlink(missing_ok=True)
