"""Check Grafana dashboard JSON against Grafana's own dashboard schema.

Grafana keeps its dashboard, panel and query schemas in CUE and publishes them, generated into
types with strict decoders, as grafana-foundation-sdk. ``dashboardcheck/`` is a small Go program
over that SDK's Go module (pinned in its go.mod and go.sum): it decodes a dashboard strictly
(an unknown or mistyped field anywhere, panel options and Prometheus queries included, is an
error) and runs the schema's constraints. We build it once into the tool cache, like helm.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from aijobs_dev.controlplane.assets import build_go_source

SOURCE = Path(__file__).parent / "dashboardcheck"

__all__ = ["SOURCE", "DashboardReport", "check_dashboards", "ensure_dashboardcheck"]


@dataclass(frozen=True)
class DashboardReport:
    ok: bool
    problems: tuple[str, ...]


def ensure_dashboardcheck(*, log=print) -> Path:  # type: ignore[no-untyped-def]
    return build_go_source("dashboardcheck", SOURCE, log=log)


def check_dashboards(binary: Path, *paths: Path) -> DashboardReport:
    proc = subprocess.run([str(binary), *map(str, paths)], capture_output=True, text=True, timeout=60)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"dashboardcheck failed ({proc.returncode}): {proc.stderr}")
    return DashboardReport(proc.returncode == 0, tuple(proc.stdout.splitlines()))
