"""The local spool: a finished result is on disk (fsynced) before anything else happens to it, so
Storage being down costs a delay, never the work. One ``<task>.png`` plus a ``<task>.json``
describing the task; written to temporary names and renamed, so a crash leaves whole entries
only. On start the worker uploads what its spool holds before it leases anything new."""

from __future__ import annotations

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

    def put(self, entry: Entry, content: bytes) -> None:
        _durable_write(self.root / f"{entry.task_id}.png", content)
        _durable_write(
            self.root / f"{entry.task_id}.json", json.dumps(asdict(entry)).encode()
        )  # last: commits
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
        return (self.root / f"{entry.task_id}.png").read_bytes()

    def remove(self, entry: Entry) -> None:
        (self.root / f"{entry.task_id}.json").unlink(missing_ok=True)
        (self.root / f"{entry.task_id}.png").unlink(missing_ok=True)
