"""Real service processes on loopback ports, for tests, the demo and fault campaigns.

A :class:`ServiceProcess` is ``aijobs service NAME`` in a child process: started, waited on
until ``/readyz`` answers, stopped with SIGTERM, or killed with SIGKILL to inject a crash.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from aijobs.controlplane.cluster import free_port

__all__ = ["CALLER_NAMES", "ServiceProcess", "make_secrets"]

CALLER_NAMES = ("admin", "operator", "worker", "main-api")


def make_secrets() -> dict[str, str]:
    """A fresh secret per caller identity."""
    return {name: secrets.token_urlsafe(32) for name in CALLER_NAMES}


@dataclass
class ServiceProcess:
    name: str
    database_url: str
    callers: dict[str, str]
    log_dir: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServiceProcess:
        import json

        env = {
            **os.environ,
            "AIJOBS_CALLERS": json.dumps(self.callers),
            "AIJOBS_SWEEP_INTERVAL_SECONDS": "1",
            **self.env,
        }
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "aijobs.cli",
            "service",
            self.name,
            "--port",
            str(self.port),
            "--database-url",
            self.database_url,
            "--workers",
            str(self.workers),
        ]
        with (self.log_dir / f"{self.name}.log").open("ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_dir}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready on {self.url} after {timeout:.0f}s; see {self.log_dir}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to finish or clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
