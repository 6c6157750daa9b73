"""The probe server of the processes that serve no HTTP API of their own: the GPU worker and the
operator. One small threaded server answers ``/metrics`` (Prometheus), ``/healthz`` (liveness)
and ``/readyz`` (readiness).

A probe is a :class:`Verdict` computed by a pure function over what the process last recorded
(timestamps, outcomes) and the time now; the server only asks and renders it. It runs on its own
thread, so it keeps answering while the event loop is stuck: that is the point, since the verdict
then says the loop stopped going round, which an answer from the loop itself could never say.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["ProbeServer", "Verdict", "start_probe_server"]


@dataclass(frozen=True)
class Verdict:
    """A probe's answer: ``ok`` gives 200, else 503; ``reason`` says why, for a person."""

    ok: bool
    reason: str


Check = Callable[[], Verdict]


class ProbeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, registry: CollectorRegistry, checks: Mapping[str, Check]) -> None:
        self.registry = registry
        self.checks = dict(checks)
        super().__init__(("", port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: ProbeServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, content_type, encoder(self.server.registry))
            return
        check = self.server.checks.get(path)
        if check is None:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")
            return
        try:
            verdict = check()
        except Exception as exc:  # a probe that cannot decide says so, and fails
            verdict = Verdict(False, f"the check raised {type(exc).__name__}: {exc}")
        body = json.dumps({"status": "ok" if verdict.ok else "failing", "reason": verdict.reason})
        self._send(200 if verdict.ok else 503, "application/json", body.encode() + b"\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a probe every few seconds is not worth a log line


def start_probe_server(port: int, registry: CollectorRegistry, checks: Mapping[str, Check]) -> ProbeServer:
    """Serve ``/metrics`` and each ``checks`` path on ``port`` (0: any free one) from a daemon thread."""
    server = ProbeServer(port, registry, checks)
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    return server
