"""Real processes on loopback ports, for tests, the demo and fault campaigns: the services,
the operator, workers and fault proxies. Each is started, waited on until it answers, stopped
with SIGTERM, or killed with SIGKILL to inject a crash (and started again on the same port).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from aijobs_dev.controlplane.cluster import free_port

__all__ = ["CALLER_NAMES", "ManagedProcess", "ServiceProcess", "make_secrets"]

CALLER_NAMES = ("admin", "operator", "worker", "main-api")


def make_secrets() -> dict[str, str]:
    """A fresh secret per caller identity."""
    return {name: secrets.token_urlsafe(32) for name in CALLER_NAMES}


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    ready: Callable[[], bool] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ManagedProcess:
        if self.running:  # two overlapping faults may both try to restart it: keep the first
            return self
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{self.name}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready(timeout)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 60.0) -> None:
        if self.ready is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; see {self.log_dir}/{self.name}.log"
                )
            with contextlib.suppress(httpx.HTTPError):
                if self.ready():
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s; see {self.log_dir}/{self.name}.log")

    def stop(self, timeout: float = 20.0) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to finish or clean up."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _service_ready(base: str, name: str) -> Callable[[], bool]:
    """Ready, and really the service we started (not another process on a reused port)."""

    def ready() -> bool:
        health = httpx.get(f"{base}/healthz", timeout=2)
        return (
            health.status_code == 200
            and health.json().get("service") == name
            and httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        )

    return ready


class ServiceProcess(ManagedProcess):
    """``aijobs service NAME`` on its own port (kept across restarts)."""

    def __init__(
        self,
        name: str,
        database_url: str,
        callers: dict[str, str],
        log_dir: Path,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        workers: int = 1,
    ) -> None:
        self.port = port or free_port()
        argv = [
            sys.executable,
            "-m",
            "aijobs.cli",
            "service",
            name,
            "--port",
            str(self.port),
            "--database-url",
            database_url,
            "--workers",
            str(workers),
        ]
        full_env = {
            "AIJOBS_CALLERS": json.dumps(callers),
            "AIJOBS_SWEEP_INTERVAL_SECONDS": "1",
            **(env or {}),
        }
        super().__init__(name, argv, log_dir, full_env, _service_ready(f"http://127.0.0.1:{self.port}", name))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServiceProcess:
        super().start(timeout)
        return self
