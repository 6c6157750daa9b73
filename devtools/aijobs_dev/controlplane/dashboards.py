"""Check Grafana dashboard JSON against Grafana's own dashboard schema.

Grafana keeps its dashboard, panel and query schemas in CUE and publishes them, generated into
types with strict decoders, as grafana-foundation-sdk. ``dashboardcheck/`` is a small Go program
over that SDK's Go module (pinned in its go.mod and go.sum): it decodes a dashboard strictly
(an unknown or mistyped field anywhere, panel options and Prometheus queries included, is an
error) and runs the schema's constraints. We build it once into the tool cache, like helm.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aijobs_dev.controlplane.assets import _go, cache_root

SOURCE = Path(__file__).parent / "dashboardcheck"

__all__ = ["SOURCE", "DashboardReport", "check_dashboards", "ensure_dashboardcheck"]


@dataclass(frozen=True)
class DashboardReport:
    ok: bool
    problems: tuple[str, ...]


def ensure_dashboardcheck(*, log=print) -> Path:  # type: ignore[no-untyped-def]
    # Keyed by the source's hash: an edit to the checker or a new SDK pin builds a new binary.
    digest = hashlib.sha256(
        b"".join((SOURCE / name).read_bytes() for name in ("go.mod", "go.sum", "main.go"))
    ).hexdigest()[:12]
    target = cache_root() / "tools" / f"dashboardcheck-{digest}"
    binary = target / "dashboardcheck"
    if not binary.is_file():
        target.mkdir(parents=True, exist_ok=True)
        log(f"building dashboardcheck into {target} (first time only; about a minute)")
        partial = target / ".dashboardcheck.partial"
        _go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(partial), "."], SOURCE, log)
        partial.rename(binary)
    return binary


def check_dashboards(binary: Path, *paths: Path) -> DashboardReport:
    proc = subprocess.run([str(binary), *map(str, paths)], capture_output=True, text=True, timeout=60)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"dashboardcheck failed ({proc.returncode}): {proc.stderr}")
    return DashboardReport(proc.returncode == 0, tuple(proc.stdout.splitlines()))
