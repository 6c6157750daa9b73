"""Services under test: in-process apps over real PostgreSQL, or real uvicorn processes."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from aijobs_dev.testbed.processes import ServiceProcess, make_secrets
from aijobs_services.kit.app import create_app
from aijobs_services.kit.settings import ServiceSettings
from aijobs_services.registry import spec
from fastapi.testclient import TestClient

from aijobs.wire.tokens import TokenSigner


@dataclass
class Api:
    """Calls one service as one caller identity (or as nobody)."""

    http: httpx.Client | TestClient
    service: str
    secrets: dict[str, str]

    def headers(self, caller: str | None, key: str | None) -> dict[str, str]:
        headers = {}
        if caller:
            headers["Authorization"] = (
                f"Bearer {TokenSigner(caller, self.secrets[caller]).token_for(self.service)}"
            )
        if key:
            headers["Idempotency-Key"] = key
        return headers

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        caller: str | None = "admin",
        key: str | None = "auto",
        **kw: Any,
    ) -> httpx.Response:
        key = uuid.uuid4().hex if key == "auto" else key
        return self.http.post(
            path, json=body, headers=self.headers(caller, key) | kw.pop("headers", {}), **kw
        )

    def get(self, path: str, *, caller: str | None = "admin", **kw: Any) -> httpx.Response:
        return self.http.get(path, headers=self.headers(caller, None), **kw)

    def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        response = self.post(path, body, **kw) if method == "POST" else self.get(path, **kw)
        assert response.status_code < 300, response.text
        return response.json()


@pytest.fixture
def secrets() -> dict[str, str]:
    return make_secrets()


def _in_process(name: str, url: str, secrets: dict[str, str]) -> Iterator[tuple[Api, sa.Engine]]:
    settings = ServiceSettings(
        service=name, database_url=url, callers=secrets, sweep_interval_seconds=0, max_body_bytes=64 * 1024
    )
    app = create_app(spec(name), settings)
    with TestClient(app) as client:
        yield Api(client, name, secrets), app.state.engine
    app.state.engine.dispose()


@pytest.fixture
def payment(pg_url: str, secrets: dict[str, str]) -> Iterator[tuple[Api, sa.Engine]]:
    yield from _in_process("payment", pg_url, secrets)


@pytest.fixture
def auth(pg_url: str, secrets: dict[str, str]) -> Iterator[tuple[Api, sa.Engine]]:
    yield from _in_process("auth", pg_url, secrets)


@pytest.fixture
def service_process(tmp_path: Path, secrets: dict[str, str]) -> Iterator[Any]:
    started: list[ServiceProcess] = []

    def start(name: str, url: str, **kw: Any) -> ServiceProcess:
        proc = ServiceProcess(name, url, secrets, tmp_path / "logs", **kw).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def snapshot(
    engine: sa.Engine, *, skip: tuple[str, ...] = ("idempotency_keys", "alembic_version")
) -> dict[str, Any]:
    """Every row of every table (but ``skip``), to assert that a refused request changed nothing."""
    meta = sa.MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        return {
            name: sorted(tuple(map(str, row)) for row in conn.execute(sa.select(table)))
            for name, table in meta.tables.items()
            if name not in skip
        }


class Fsyncs:
    """Every fsync the blob store makes while it is installed, as the (device, inode) of what was
    synced, files and folders apart; ``probe``, when given, is called at each folder's fsync and
    what it answers kept in order (what the database held at that moment, say)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, probe: Callable[[], Any] | None = None) -> None:
        from aijobs_services.storage import blobs

        self.files: list[tuple[int, int]] = []
        self.folders: list[tuple[int, int]] = []
        self.probed: list[Any] = []
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            status = os.fstat(fd)
            if stat.S_ISDIR(status.st_mode):
                self.folders.append((status.st_dev, status.st_ino))
                if probe is not None:
                    self.probed.append(probe())
            else:
                self.files.append((status.st_dev, status.st_ino))
            real_fsync(fd)

        monkeypatch.setattr(blobs.os, "fsync", fsync)


def identity(path: Path) -> tuple[int, int]:
    """A file's or folder's (device, inode), as :class:`Fsyncs` records it."""
    status = os.stat(path)
    return status.st_dev, status.st_ino


def blob_folders(volume: Path, sha256: str) -> list[tuple[int, int]]:
    """The folders whose entries name a blob, deepest first: its own, its parent, ``blobs/``."""
    blobs = volume / "blobs"
    return [identity(blobs / sha256[:2] / sha256[2:4]), identity(blobs / sha256[:2]), identity(blobs)]
