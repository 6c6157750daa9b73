"""The chart's Grafana dashboard against Grafana's own dashboard schema (grafana-foundation-sdk's
strict decoder, see aijobs_dev.controlplane.dashboards): a dashboard Grafana would load as we
wrote it, with no field it silently drops."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aijobs_dev.controlplane.dashboards import check_dashboards, ensure_dashboardcheck

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "aijobs" / "files" / "dashboard.json"


@pytest.fixture(scope="module")
def dashboardcheck() -> Path:
    return ensure_dashboardcheck(log=lambda _: None)


def test_the_dashboard_matches_grafanas_schema(dashboardcheck: Path) -> None:
    report = check_dashboards(dashboardcheck, DASHBOARD)
    assert report.ok, "\n".join(report.problems)


def test_every_query_is_checked_as_a_prometheus_query() -> None:
    """The schema checks a query's fields by its data source's type, read from the query itself:
    a query without one would pass unchecked, whatever it holds."""
    board = json.loads(DASHBOARD.read_text())
    for panel in board["panels"]:
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def _broken(change: str) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    if change == "misspelt-panel-field":
        board["panels"][0]["gridPOS"] = board["panels"][0].pop("gridPos")
    elif change == "misspelt-query-field":
        target = board["panels"][1]["targets"][0]
        target["exp"] = target.pop("expr")
    elif change == "wrong-type":
        board["refresh"] = 30
    elif change == "no-annotations":
        del board["annotations"]
    return board


@pytest.mark.parametrize(
    ("change", "says"),
    [
        pytest.param("misspelt-panel-field", "unexpected field 'gridPOS'", id="misspelt-panel-field"),
        pytest.param("misspelt-query-field", "unexpected field 'exp'", id="misspelt-query-field"),
        pytest.param("wrong-type", "refresh", id="wrong-type"),
        pytest.param("no-annotations", "annotations: required field", id="no-annotations"),
    ],
)
def test_the_check_refuses_what_grafana_would_drop_or_reject(
    dashboardcheck: Path, tmp_path: Path, change: str, says: str
) -> None:
    path = tmp_path / "dashboard.json"
    path.write_text(json.dumps(_broken(change)))
    report = check_dashboards(dashboardcheck, path)
    assert not report.ok
    assert any(says in problem for problem in report.problems), report.problems
