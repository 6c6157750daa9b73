"""The worker's spool keeps a batch's results in one file, and each run of a task apart: the
same task leased to this worker again (its first lease ran out while it inferred) and run twice
is two entries, and removing the one AI refused leaves the other's result on disk. An entry an
older worker spooled by task id alone is still read and removed."""

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


def _run(task: str) -> Entry:
    return Entry(task, "job-1", "acme", "lease-a", {"pipeline": "grayscale"}, int(task[-1]), "0" * 64)


def test_a_batch_is_one_file_and_what_is_left_of_it_survives_a_restart(tmp_path: Path) -> None:
    """A batch's results are spooled as one file; an entry removed (delivered) stays removed
    for the next start, and the file goes with the batch's last entry."""
    spool = Spool(tmp_path)
    runs = [_run(f"task-{n}") for n in range(3)]
    spool.put_many([(run, f"result {n}".encode()) for n, run in enumerate(runs)])
    assert [p.suffix for p in tmp_path.iterdir()] == [".batch"]
    spool.remove(runs[1])  # delivered
    restarted = Spool(tmp_path)  # the worker starts again
    assert restarted.entries() == [runs[0], runs[2]]
    assert [restarted.content(run) for run in (runs[0], runs[2])] == [b"result 0", b"result 2"]
    restarted.remove(runs[0])
    restarted.remove(runs[2])
    assert restarted.entries() == [] and list(tmp_path.iterdir()) == []


def test_a_spool_write_cut_short_by_a_crash_is_no_entry(tmp_path: Path) -> None:
    (tmp_path / "0123.tmp").write_bytes(b'[{"entry": {"task_id": "task-1"')  # died mid-write
    spool = Spool(tmp_path)
    assert spool.entries() == [] and list(tmp_path.iterdir()) == []


def test_entries_of_two_batches_are_read_and_removed_together(tmp_path: Path) -> None:
    """A delivery reads and removes several entries at once, across segments and an older
    worker's entry: each gets its own bytes; a segment all of whose entries went is gone, the
    other keeps what is left of it across a restart."""
    spool = Spool(tmp_path)
    first = [_run(f"task-{n}") for n in range(3)]
    second = [_run(f"task-{n}") for n in range(4, 6)]
    spool.put_many([(run, f"result {run.item}".encode()) for run in first])
    spool.put_many([(run, f"result {run.item}".encode()) for run in second])
    old = _entry("lease-z")
    (tmp_path / "task-1.png").write_bytes(b"older")
    (tmp_path / "task-1.json").write_text(json.dumps(asdict(old)))
    mixed = [second[1], first[2], old, first[0], second[0]]
    assert spool.contents(mixed) == [b"result 5", b"result 2", b"older", b"result 0", b"result 4"]
    spool.remove_many(mixed)
    assert spool.entries() == [first[1]]
    assert len(list(tmp_path.glob("*.batch"))) == 1 and not list(tmp_path.glob("task-1.*"))
    restarted = Spool(tmp_path)
    assert restarted.entries() == [first[1]] and restarted.contents([first[1]]) == [b"result 1"]
    restarted.remove_many([first[1]])
    assert list(tmp_path.iterdir()) == []
