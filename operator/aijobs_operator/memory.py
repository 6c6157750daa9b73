"""The operator's resident memory: what the C allocator keeps after Python has let go.

With thousands of jobs in flight the operator parses a stream of whole bodies (the watch, every
status write's answer, the follower's bulk task reads) and keeps a small slimmed copy of each.
Python frees the big parsed bodies at once, but glibc's ``malloc`` keeps the freed pages: in the
main heap behind the small objects that stay (fragmentation), and in one more arena per thread
that the synchronous Kubernetes client runs on (``asyncio.to_thread``): 77 MB of a 183 MB heap
held free with 4,000 jobs Scheduled (``bench/memory.py`` with the report below), against 0.2 KiB
a job for kopf's own per-object memories. Two remedies, both glibc's own:

- fewer arenas (``mallopt(M_ARENA_MAX)``, the ``MALLOC_ARENA_MAX`` variable set from inside the
  process, before the first thread starts), so the threads share the heaps they free into;
- ``malloc_trim(0)`` now and then, which hands the free pages of every arena back to the kernel.

Elsewhere (musl, macOS, Windows) both are no-ops: :func:`glibc` is None there. The opt-in
``AIJOBS_TRACEMALLOC`` writes, once a minute, what Python itself holds by source line next to
what ``malloc`` holds, the evidence behind the two remedies.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import os
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("aijobs.operator.memory")

M_ARENA_MAX = -8  # from glibc's malloc.h
REPORT_SECONDS = 60.0  # the tracemalloc report's interval


class MemorySettings(BaseSettings):
    """How the operator keeps its allocator small, from ``AIJOBS_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="AIJOBS_", extra="ignore")

    malloc_arenas: int = Field(
        default=2, ge=0, description="glibc arenas at most (MALLOC_ARENA_MAX); 0: glibc's default"
    )
    malloc_trim_seconds: float = Field(
        default=10.0, ge=0, description="How often free heap pages go back to the kernel; 0: never"
    )
    tracemalloc: str = Field(
        default="", description="A file rewritten every trim with Python's and malloc's holdings; empty: off"
    )

    @property
    def upkeep_seconds(self) -> float:
        """How often :func:`keep_small` wakes (a report without trims: every minute); 0: never."""
        return self.malloc_trim_seconds or (REPORT_SECONDS if self.tracemalloc else 0.0)


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (it has ``malloc_trim``), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
        return None
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def limit_arenas(arenas: int) -> bool:
    """Cap glibc's arenas (each thread that allocates may otherwise get one, up to eight per
    core, each keeping what it freed); effective for the threads started afterwards. True if
    applied."""
    libc = glibc()
    if libc is None or arenas <= 0 or os.environ.get("MALLOC_ARENA_MAX"):
        return False  # a limit given by whoever started the process stands
    return bool(libc.mallopt(M_ARENA_MAX, arenas))


def trim() -> bool:
    """Give the free pages of every arena back to the kernel; True if some were."""
    libc = glibc()
    return libc is not None and bool(libc.malloc_trim(0))


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@dataclass(frozen=True)
class Heap:
    """glibc's account of its heaps, in bytes (``mallinfo2``, all arenas)."""

    heap: int  # taken from the kernel for the arenas (sbrk and mmap'd heaps)
    mapped: int  # single large blocks mmap'd on their own
    used: int  # handed out and not freed
    free: int  # in free chunks (after a trim their pages are back with the kernel, still counted)


def heap() -> Heap | None:
    """glibc's heap figures (glibc 2.33 or newer), else None."""
    libc = glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return Heap(heap=info.arena, mapped=info.hblkhd, used=info.uordblks, free=info.fordblks)


def prepare(settings: MemorySettings) -> None:
    """What must happen before the operator starts any thread: the arena cap, and tracing."""
    if settings.tracemalloc:
        tracemalloc.start()
    limit_arenas(settings.malloc_arenas)


async def keep_small(settings: MemorySettings) -> None:
    """Trim the heap every ``malloc_trim_seconds`` (writing the tracemalloc report if asked),
    for ever; with nothing to do (``upkeep_seconds`` 0) there is no loop to run. A trim walks
    the free lists under the arenas' locks (10-25 ms for a 500 MB heap half free, on the machine
    of ``bench/memory.py``), short enough to run on the event loop without a thread of its own."""
    if not settings.upkeep_seconds:
        raise ValueError("no upkeep to keep: neither trims nor a report were asked for")
    loop = asyncio.get_running_loop()
    reported = loop.time()
    while True:
        await asyncio.sleep(settings.upkeep_seconds)
        if settings.malloc_trim_seconds:
            trim()
        # A snapshot of a busy operator's allocations takes seconds: at most one a minute.
        if settings.tracemalloc and loop.time() - reported >= REPORT_SECONDS:
            write_report(Path(settings.tracemalloc))
            reported = loop.time()


def write_report(path: Path, top: int = 30) -> None:
    """Python's holdings by source line, largest first, under malloc's own figures; written
    whole to a side file and renamed, so a reader never sees half of one."""
    snapshot = tracemalloc.take_snapshot()
    stats = snapshot.statistics("lineno")
    traced = sum(s.size for s in stats)
    lines = [f"pid {os.getpid()} traced {traced} bytes in {sum(s.count for s in stats)} blocks"]
    figures = heap()
    if figures is not None:
        lines.append(
            f"malloc heap {figures.heap} mapped {figures.mapped} used {figures.used} free {figures.free}"
        )
    lines += [f"{s.size:>12} {s.count:>9} {s.traceback}" for s in stats[:top]]
    partial = path.with_name(path.name + ".part")
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(path)
