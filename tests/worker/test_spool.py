"""The worker's spool keeps each run of a task apart: the same task leased to this worker again
(its first lease ran out while it inferred) and run twice is two entries, and removing the one
AI refused leaves the other's result on disk. An entry an older worker spooled by task id alone
is still read and removed."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from aijobs_worker.spool import Entry, Spool


def _entry(token: str) -> Entry:
    return Entry("task-1", "job-1", "acme", token, {"pipeline": "grayscale"}, 3)


def test_two_runs_of_one_task_are_two_entries_and_removing_one_keeps_the_other(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first, second = _entry("lease-a"), _entry("lease-b")
    spool.put(first, b"first run")
    spool.put(second, b"second run")
    assert sorted(e.lease_token for e in spool.entries()) == ["lease-a", "lease-b"]
    assert (spool.content(first), spool.content(second)) == (b"first run", b"second run")
    spool.remove(first)  # AI refused the first run's completion: its lease was lost
    assert spool.entries() == [second] and spool.content(second) == b"second run"
    spool.remove(second)
    assert spool.entries() == [] and list(tmp_path.iterdir()) == []


def test_an_entry_spooled_by_an_older_worker_is_read_and_removed(tmp_path: Path) -> None:
    old = _entry("lease-a")
    (tmp_path / "task-1.png").write_bytes(b"spooled before the upgrade")
    (tmp_path / "task-1.json").write_text(json.dumps(asdict(old)))
    spool = Spool(tmp_path)
    assert spool.entries() == [old] and spool.content(old) == b"spooled before the upgrade"
    spool.remove(old)
    assert list(tmp_path.iterdir()) == []
