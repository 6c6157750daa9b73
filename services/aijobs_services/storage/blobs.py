"""The blob volume: files named by their sha256, written so that a crash or a full disk never
leaves a half blob under a real name.

Write path: stream into ``tmp/`` while hashing (on the event loop for a single put, on its
thread for a bulk put's parts) -> fsync the file (on the put's thread: an fsync would stall every
request the loop serves) -> rename to ``blobs/aa/bb/<sha>`` -> fsync ``bb/``, ``aa/`` and
``blobs/`` (the put may have made ``aa/`` and ``bb/``, and a crash can lose a new folder's entry
in its parent as well as the blob's in its folder; a blob found there already gets the same
fsyncs, as the put that renamed it may not have made them yet; ``blobs/`` itself was made durable
in the volume when the store opened it). Only then does the caller record the object in the
database; a crash between the two leaves an unreferenced blob, which the collector removes.

A bulk put (many images in one request) makes its files durable together: each written to
``tmp/``, then the volume flushed once (``syncfs``), then each renamed, then the volume flushed
once more. An fsync of each file and of the folders on its path costs a journal commit each: two
to four for every image, some 190 for a worker's lease of 64 results. The first flush comes before
any rename, so a blob's name never points at bytes that a crash could lose; the second makes the
names durable before the records are committed. Both flushes go through one descriptor of the
volume, opened before the put writes its first file (:class:`VolumeFlush`): the kernel reports a
writeback failure on the volume once to every descriptor opened before it, so the put hears of its
own files' failure even when another put's flush met it first (one opened later would not). Linux
reports such failures to ``syncfs`` since 5.8; on an older kernel, or with no ``syncfs`` (not
Linux), each file is fsynced, then, all renamed, each folder on their paths once.

Blobs are shared by content, so a new object may re-use a blob whose last object was deleted
while the collector is deciding to remove it. Three things rule that out. Keeping a blob that
already exists refreshes its timestamp, and the collector only considers blobs older than its
horizon. A put holds a shared lock on the volume from keeping the blob until its record is
committed. The collector lists and stats the blob files, and looks up which old ones are still
in use, with no lock at all (puts go on: that walk grows with the volume); then it takes the lock
exclusively and, for the few it found unused, looks their use up again and re-reads their
timestamps before removing them: with no put between keeping and recording, a blob taken up since
the listing is either recorded or young (``fcntl`` locks: they hold across the service's worker
processes too).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import platform
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from aijobs_services.kit.problems import Problem


def _syncfs_call() -> Callable[[int], int] | None:
    """The C library's ``syncfs(2)`` where the kernel reports a failed writeback through it
    (Linux 5.8 on), else None."""
    version = re.match(r"(\d+)\.(\d+)", platform.release())
    if platform.system() != "Linux" or version is None or (int(version[1]), int(version[2])) < (5, 8):
        return None
    try:
        found = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    except OSError:
        return None
    return cast("Callable[[int], int] | None", found)


_SYNCFS = _syncfs_call()


class DiskFull(Problem):
    status, slug, title = 507, "insufficient-storage", "Storage is full"


class ObjectTooLarge(Problem):
    status, slug, title = 413, "object-too-large", "Object too large"


def _full(exc: OSError) -> DiskFull | None:
    """The refusal a full disk or a spent filesystem quota is answered with; None for another
    error."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull("the storage volume is full; nothing was stored")
    return None


class VolumeFlush:
    """One bulk put's flushes of the volume (``syncfs``), through a descriptor opened before the
    put writes any file: every writeback failure on the volume from then on is reported to it
    (the module's docstring). Close it when the put is done."""

    def __init__(self, root: Path) -> None:
        assert _SYNCFS is not None
        self.root = root
        self._fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)

    def __call__(self) -> None:
        """Everything written to the volume so far made durable, or :class:`DiskFull` / OSError."""
        assert _SYNCFS is not None
        if _SYNCFS(self._fd) != 0:
            code = ctypes.get_errno()
            exc = OSError(code, f"syncfs of {self.root}: {os.strerror(code)}")
            full = _full(exc)
            if full is not None:
                raise full from exc
            raise exc

    def close(self) -> None:
        os.close(self._fd)


@dataclass(frozen=True)
class Staged:
    path: Path
    sha256: str
    size: int


class _Intake:
    """A received stream as it is written to its temporary file: hashed and counted."""

    def __init__(self, path: Path, out: BinaryIO, max_bytes: int) -> None:
        self.path, self.out, self.max_bytes = path, out, max_bytes
        self.digest, self.size = hashlib.sha256(), 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise ObjectTooLarge(f"the object is larger than {self.max_bytes} bytes")
        self.digest.update(chunk)
        self.out.write(chunk)

    def staged(self) -> Staged:
        return Staged(self.path, self.digest.hexdigest(), self.size)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.blobs = root / "blobs"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.blobs.mkdir(parents=True, exist_ok=True)
        _fsync(root)  # blobs/ and tmp/ durable: no put changes the volume's own folder after this

    @contextlib.contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        with (self.root / ".collect.lock").open("a") as handle:
            fcntl.flock(handle, mode)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def sharing(self) -> contextlib.AbstractContextManager[None]:
        """Held by a put from keeping its blob until its record is committed."""
        return self._locked(fcntl.LOCK_SH)

    def collecting(self) -> contextlib.AbstractContextManager[None]:
        """Held by the collector from its last look-up of which blobs are in use until its
        removals are done."""
        return self._locked(fcntl.LOCK_EX)

    def path(self, sha256: str) -> Path:
        return self.blobs / sha256[:2] / sha256[2:4] / sha256

    @contextlib.contextmanager
    def _staging(self, max_bytes: int) -> Iterator[_Intake]:
        """A temporary file to write a received stream into; removed again if the writing fails
        (a full disk answered as :class:`DiskFull`)."""
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            with tmp.open("wb") as out:
                yield _Intake(tmp, out, max_bytes)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            full = _full(exc)
            if full is not None:
                raise full from exc
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    async def receive(self, chunks: AsyncIterator[bytes], max_bytes: int) -> Staged:
        """Write a stream to a temporary file, hashing it; nothing is left behind on failure. The
        file is not yet durable: :meth:`sync` it, off the event loop, before keeping it."""
        with self._staging(max_bytes) as intake:
            async for chunk in chunks:
                intake.write(chunk)
        return intake.staged()

    def receive_file(self, source: BinaryIO, max_bytes: int) -> Staged:
        """:meth:`receive` from a file already in hand (a multipart part the server spooled), on
        the calling thread: a bulk put reads all its parts in the one thread that stores them,
        rather than an event-loop turn per piece."""
        with self._staging(max_bytes) as intake:
            while chunk := source.read(1024 * 1024):
                intake.write(chunk)
        return intake.staged()

    def sync(self, staged: Staged) -> None:
        """Make a received file's bytes durable (blocking: call it from a thread)."""
        _fsync(staged.path)

    @contextlib.contextmanager
    def flushes(self) -> Iterator[VolumeFlush | None]:
        """A bulk put's :class:`VolumeFlush`, to open before it writes its first file; None where
        the kernel cannot report a failed flush (then each file and folder is fsynced)."""
        if _SYNCFS is None:
            yield None
            return
        flush = VolumeFlush(self.root)
        try:
            yield flush
        finally:
            flush.close()

    def keep_many(self, staged: Sequence[Staged], flush: VolumeFlush | None) -> None:
        """:meth:`keep` for many files already made durable (by ``flush``, or each fsynced): each moved
        under its content name, then the names made durable together, by one flush of the volume
        (without one, an fsync of each folder on their paths, once each). The names are made
        durable even when every blob was there already: another put may have renamed it and not
        yet flushed."""
        if not staged:
            return
        for each in staged:
            self._move(each)
        if flush is not None:
            flush()
            return
        for folder in dict.fromkeys(f for each in staged for f in self._folders(each.sha256)):
            _fsync(folder)

    def _move(self, staged: Staged) -> bool:
        """Move a received file under its content name; False if the blob was there already
        (then it is made young again, and the file dropped)."""
        final = self.path(staged.sha256)
        with contextlib.suppress(FileNotFoundError):
            os.utime(final)  # it exists and is in use again: young, so the collector spares it
            staged.path.unlink(missing_ok=True)
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, final)
        return True

    def keep(self, staged: Staged) -> Path:
        """Move a received file, its bytes already durable (:meth:`sync`), under its content name
        (atomic), then make that name durable: an fsync of the blob's folder, of its parent and of
        ``blobs/``, since a crash can lose a new folder's entry in its parent as well as the blob's
        in its folder. A blob that was there already is made durable the same way: the put that
        renamed it may not have flushed its folders yet, and this put's object is about to be
        recorded on it."""
        self.keep_many([staged], None)
        return self.path(staged.sha256)

    def _folders(self, sha256: str) -> tuple[Path, Path, Path]:
        """The folders whose entries name a blob: its own, its parent, and ``blobs/``."""
        final = self.path(sha256)
        return final.parent, final.parent.parent, self.blobs

    def discard(self, staged: Staged) -> None:
        staged.path.unlink(missing_ok=True)

    def remove(self, sha256: str) -> bool:
        with contextlib.suppress(FileNotFoundError):
            self.path(sha256).unlink()
            return True
        return False

    def kept_at(self, sha256: str) -> float | None:
        """When the blob was last kept (its mtime); None if it is not there."""
        return _mtime(self.path(sha256))

    def all_blobs(self) -> list[tuple[str, float]]:
        """(sha256, mtime) of every blob on the volume; read with no lock, so one removed meanwhile
        (by another process's collector) is left out."""
        found = ((p.name, _mtime(p)) for p in self.blobs.glob("*/*/*"))
        return [(sha, mtime) for sha, mtime in found if mtime is not None]

    def stale_temp_files(self, older_than: float) -> list[Path]:
        """Leftovers of receives that died; a part file a put discards meanwhile is left out."""
        return [p for p in self.tmp.iterdir() if (mtime := _mtime(p)) is not None and mtime < older_than]


def _fsync(path: Path) -> None:
    """Make a file's bytes, or a folder's entries, durable; a full volume answered as
    :class:`DiskFull`."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        full = _full(exc)
        if full is not None:
            raise full from exc
        raise


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None
