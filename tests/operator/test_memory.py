"""The operator's allocator upkeep: it trims on its interval, writes its evidence when asked, and
does nothing (without failing) where the C library is not glibc."""

from __future__ import annotations

import asyncio
import ctypes.util
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from aijobs_operator import memory
from aijobs_operator.memory import MemorySettings


@pytest.fixture
def no_glibc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A platform whose C library cannot be found (musl's static builds, Windows)."""
    memory.glibc.cache_clear()
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    yield
    memory.glibc.cache_clear()


@pytest.mark.usefixtures("no_glibc")
def test_without_glibc_the_upkeep_is_a_no_op() -> None:
    assert memory.glibc() is None
    assert memory.trim() is False
    assert memory.limit_arenas(2) is False
    assert memory.heap() is None


def test_an_arena_limit_given_by_the_environment_stands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert memory.limit_arenas(2) is False


@pytest.mark.skipif(memory.glibc() is None, reason="glibc only")
def test_glibc_reports_its_heap_and_trims_it() -> None:
    figures = memory.heap()
    assert figures is not None and figures.used > 0
    memory.trim()  # whether pages were free to give back or not, it returns


async def test_the_heap_is_trimmed_on_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    trimmed = asyncio.Event()
    calls: list[int] = []

    def counting_trim() -> bool:
        calls.append(1)
        if len(calls) >= 3:
            trimmed.set()
        return True

    monkeypatch.setattr(memory, "trim", counting_trim)
    upkeep = asyncio.create_task(memory.keep_small(MemorySettings(malloc_trim_seconds=0.01)))
    try:
        await asyncio.wait_for(trimmed.wait(), timeout=10)
    finally:
        upkeep.cancel()
    assert len(calls) >= 3


def test_no_interval_and_no_report_means_no_upkeep_at_all() -> None:
    assert MemorySettings(malloc_trim_seconds=0, tracemalloc="").upkeep_seconds == 0
    assert MemorySettings(malloc_trim_seconds=0, tracemalloc="report.txt").upkeep_seconds > 0


def test_the_report_names_the_lines_that_hold_memory(tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        held = [bytearray(1000) for _ in range(1000)]  # ~1 MB from one line of this file
        memory.write_report(tmp_path / "report.txt")
    finally:
        tracemalloc.stop()
    report = (tmp_path / "report.txt").read_text().splitlines()
    assert report[0].startswith("pid ") and " traced " in report[0]
    assert any("test_memory.py" in line for line in report[1:]), report
    assert not list(tmp_path.glob("*.part"))
    del held
