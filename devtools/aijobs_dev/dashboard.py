"""The chart's Grafana dashboard, evaluated as a person would see it: every panel's queries run
against a real Prometheus scraping the stack, and the values each shows written down.

``python -m aijobs_dev.dashboard --prometheus http://127.0.0.1:9090`` prints that recording."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from aijobs_dev.controlplane.cluster import free_port
from aijobs_dev.testbed.processes import ManagedProcess

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "aijobs" / "files" / "dashboard.json"
# Queries that only an NVIDIA GPU (NVML) answers: valid everywhere, data only where a GPU is.
NEEDS_GPU = ("DCGM_FI_", "aijobs_worker_gpu_")


@dataclass(frozen=True)
class Reading:
    panel: str
    expr: str
    series: list[tuple[dict[str, str], float]]

    @property
    def needs_gpu(self) -> bool:
        return self.expr.startswith(NEEDS_GPU)


def panel_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    doc = json.loads(path.read_text())
    return [(p["title"], t["expr"]) for p in doc["panels"] for t in p.get("targets", [])]


class PrometheusApi:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def targets_up(self) -> dict[str, bool]:
        active = httpx.get(f"{self.url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        return {t["scrapeUrl"]: t["health"] == "up" for t in active}

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """Instant query; raises on a query Prometheus refuses (a typo in a panel)."""
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        if body["status"] != "success":
            raise ValueError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]


class Prometheus(PrometheusApi):
    """A throwaway Prometheus server scraping ``targets`` ({job: ["host:port", ...]}) every second."""

    def __init__(self, root: Path, targets: dict[str, list[str]]) -> None:
        binary = os.environ.get("AIJOBS_PROMETHEUS") or shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError("prometheus is not installed: run scripts/ensure-prometheus")
        root.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addresses}]}
                for job, addresses in targets.items()
            ],
        }
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        super().__init__(f"http://127.0.0.1:{port}")
        self.process = ManagedProcess(
            "prometheus",
            [
                binary,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            root / "logs",
            ready=lambda: httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200,
        )

    def start(self) -> Prometheus:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop(timeout=10)


def record(prometheus: PrometheusApi, path: Path = DASHBOARD) -> list[Reading]:
    return [Reading(title, expr, prometheus.query(expr)) for title, expr in panel_queries(path)]


def render(readings: list[Reading]) -> str:
    lines: list[str] = []
    panel = None
    for reading in readings:
        if reading.panel != panel:
            panel = reading.panel
            lines.append(f"== {panel}")
        lines.append(f"   {reading.expr}")
        if not reading.series:
            lines.append("     (no data" + (": needs an NVIDIA GPU)" if reading.needs_gpu else ")"))
        for labels, value in sorted(reading.series, key=lambda s: sorted(s[0].items())):
            shown = {k: v for k, v in labels.items() if k not in ("job", "instance") or len(labels) == 1}
            text = "NaN (no events in the window)" if math.isnan(value) else f"{value:.4g}"
            lines.append(f"     {json.dumps(shown, sort_keys=True)} {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aijobs_dev.dashboard", description=__doc__)
    parser.add_argument("--prometheus", required=True, help="the Prometheus that scrapes aijobs")
    args = parser.parse_args(argv)
    print(render(record(PrometheusApi(args.prometheus))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
