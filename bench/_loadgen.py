"""A compiled load generator for the benches: vegeta, driven through files.

A Python load generator (asyncio + httpx) spends more CPU per request than the service it
measures, so on a small machine it bounds the figure it prints. vegeta (Go) is built once from
the Go module proxy into the tool cache (:func:`aijobs_dev.controlplane.assets.ensure_go_tool`,
the same way as the project's other Go tools) and is given the requests as a file of JSON
targets, each its own method, URL, headers (a unique ``Idempotency-Key``, an
``Authorization``) and body::

    from bench._loadgen import Target, attack

    targets = [Target("POST", f"{url}/v1/holds", {"Idempotency-Key": f"h{i}", ...}, body) for i in ...]
    run = attack(targets, workers=16)             # every target once, as fast as 16 workers go
    run.report.throughput, run.report.p50_s       # from `vegeta report -type=json`
    [r.json() for r in run.results if r.code == 201]   # each response, when bodies are kept

``attack`` sends each target exactly once (``-lazy``: vegeta reads the file as it goes and stops
at its end) with ``-rate=0`` (no pacing: as fast as ``workers`` connections allow), or, with
``duration``, cycles through the targets until the time is up (the targets then repeat: fit
for reads, not for keyed writes). The report is vegeta's own; ``results`` are the decoded
responses (``vegeta encode -to=json``), for a bench that chains a second wave on the first's
answers (a capture needs the hold's id).
"""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aijobs_dev.controlplane.assets import ensure_go_tool

__all__ = ["VEGETA_VERSION", "Attack", "Report", "Result", "Target", "attack", "vegeta"]

VEGETA_VERSION = "v12.13.0"
END_OF_TARGETS = "no targets to attack"


def vegeta() -> Path:
    """The vegeta binary: ``$AIJOBS_VEGETA``, or built once into the tool cache."""
    return ensure_go_tool("vegeta", VEGETA_VERSION, "github.com/tsenart/vegeta/v12", env="AIJOBS_VEGETA")


@dataclass(frozen=True)
class Target:
    """One request, as vegeta's JSON target format carries it."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def line(self) -> str:
        target: dict[str, Any] = {
            "method": self.method,
            "url": self.url,
            "header": {name: [value] for name, value in self.headers.items()},
        }
        if self.body:
            target["body"] = base64.b64encode(self.body).decode()
        return json.dumps(target, separators=(",", ":"))


@dataclass(frozen=True)
class Report:
    """``vegeta report -type=json``, the figures a bench prints (times in seconds)."""

    requests: int
    duration_s: float  # from the first request sent to the last answer received
    rate: float  # requests sent per second
    throughput: float  # successful (2xx/3xx) answers per second
    success: float  # their share
    status_codes: dict[str, int]
    p50_s: float
    p99_s: float
    mean_s: float
    errors: list[str]

    @classmethod
    def parse(cls, raw: dict[str, Any], ends: int = 0) -> Report:
        """vegeta's report, less the ``ends`` "hits" a lazy attack counts when its targets run
        out (status 0, ``no targets to attack``): they are the end of the file, not requests."""
        latencies = raw["latencies"]
        codes = {str(k): int(v) for k, v in (raw.get("status_codes") or {}).items()}
        if ends:
            codes["0"] -= ends
            if not codes["0"]:
                del codes["0"]
        requests = int(raw["requests"]) - ends
        duration_s = (raw["duration"] + raw["wait"]) / 1e9
        ok = sum(n for code, n in codes.items() if 200 <= int(code) < 400)
        return cls(
            requests=requests,
            duration_s=duration_s,
            rate=requests / duration_s if duration_s else 0.0,
            throughput=ok / duration_s if duration_s else 0.0,
            success=ok / requests if requests else 0.0,
            status_codes=codes,
            p50_s=latencies["50th"] / 1e9,
            p99_s=latencies["99th"] / 1e9,
            mean_s=latencies["mean"] / 1e9,
            errors=[e for e in raw.get("errors") or [] if e != END_OF_TARGETS],
        )

    def line(self) -> str:
        """A one-line summary: rate, latencies, status codes."""
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.status_codes.items()))
        return (
            f"{self.requests} requests in {self.duration_s:.2f}s ({self.throughput:.0f}/s ok), "
            f"p50 {1000 * self.p50_s:.1f} ms, p99 {1000 * self.p99_s:.1f} ms; codes {{{codes}}}"
        )


@dataclass(frozen=True)
class Result:
    """One response (kept when ``attack(keep=True)``)."""

    seq: int
    method: str
    url: str
    code: int
    latency_s: float
    body: bytes
    error: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Attack:
    report: Report
    results: list[Result]


def attack(
    targets: Iterable[Target],
    *,
    workers: int,
    duration_s: float | None = None,
    keep: bool = False,
    timeout_s: float = 30,
) -> Attack:
    """Send ``targets`` with at most ``workers`` requests in flight (one connection each): each
    once, or cycled for ``duration_s``. ``keep`` decodes every response (its body included)."""
    binary = str(vegeta())
    with tempfile.TemporaryDirectory(prefix="loadgen-") as folder:
        work = Path(folder)
        (work / "targets.json").write_text("".join(t.line() + "\n" for t in targets))
        command = [
            binary,
            "attack",
            "-format=json",
            f"-targets={work / 'targets.json'}",
            "-rate=0",
            f"-workers={workers}",
            f"-max-workers={workers}",
            f"-timeout={timeout_s}s",
            f"-output={work / 'results.bin'}",
        ]
        command += [f"-duration={duration_s}s"] if duration_s else ["-lazy", "-duration=0"]
        if not keep:
            command.append("-max-body=0")
        subprocess.run(command, check=True, capture_output=True)
        raw = subprocess.run(
            [binary, "report", "-type=json", str(work / "results.bin")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        # Every response decoded (bodies empty unless kept), to tell the end of the targets
        # from the requests.
        encoded = subprocess.run(
            [binary, "encode", "-to=json", str(work / "results.bin")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    results, ends = [], 0
    for line in encoded.splitlines():
        r = json.loads(line)
        if r["error"] == END_OF_TARGETS:
            ends += 1
            continue
        if keep:
            results.append(
                Result(
                    seq=int(r["seq"]),
                    method=r["method"],
                    url=r["url"],
                    code=int(r["code"]),
                    latency_s=r["latency"] / 1e9,
                    body=base64.b64decode(r["body"] or ""),
                    error=r["error"],
                )
            )
    return Attack(Report.parse(json.loads(raw), ends), results)
