"""Every command the README shows, run as written (only ports, folders and sizes changed where a
test must not collide with a user's), so a README command that breaks fails the suite.

The kind/helm lines need a Docker engine that can run kind's privileged nodes; the chart they
install is tested by tests/chart on the real API server instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
AIJOBS = [sys.executable, "-m", "aijobs.cli"]


def _run(argv: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **env}
    )


def test_the_readme_names_only_commands_this_file_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = set(re.findall(r"aijobs (controlplane|demo|service|chaos|operator|worker)\b", readme))
    assert shown <= {"controlplane", "demo", "service", "chaos", "operator", "worker"}
    assert ".venv/bin/aijobs chaos --scenario s1" in readme


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([*AIJOBS, "--help"], id="aijobs"),
        pytest.param([*AIJOBS, "chaos", "--help"], id="aijobs-chaos"),
        pytest.param([sys.executable, "-m", "aijobs_dev.chaos", "--help"], id="python-m-aijobs_dev.chaos"),
        pytest.param([*AIJOBS, "worker", "--help"], id="aijobs-worker"),
        pytest.param([sys.executable, "bench/simulate.py", "--help"], id="bench-simulate"),
    ],
)
def test_each_command_explains_itself(argv: list[str]) -> None:
    proc = _run(argv, 60)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


def test_the_simulation_commands_run_and_replay_as_the_readme_shows() -> None:
    campaign = _run([sys.executable, "bench/simulate.py", "--schedules", "40", "--processes", "1"], 300)
    assert campaign.returncode == 0, campaign.stdout + campaign.stderr
    assert "violations  0 in 0 schedules" in campaign.stdout
    story = _run([sys.executable, "bench/simulate.py", "--replay", "1234"], 120)
    assert story.returncode == 0 and story.stdout.startswith("seed 1234: faults")


def test_regenerating_the_crds_parameter_rules_changes_nothing_committed() -> None:
    crd = ROOT / "crds" / "aijobs.io_aiimagejobs.yaml"
    before = crd.read_text()
    proc = _run([sys.executable, "-m", "aijobs.api.crd_rules"], 60)
    assert proc.returncode == 0, proc.stderr
    assert crd.read_text() == before


def test_a_service_applies_its_migrations_with_the_readmes_flags(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'payment.db'}"
    proc = _run([*AIJOBS, "service", "payment", "--port", "0", "--database-url", url, "--migrate-only"], 120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "payment.db").stat().st_size > 0


# These start PostgreSQL and a control plane in the command's own process, out of the fixtures'
# sight (tests/conftest.py), so they carry their markers by hand.
@pytest.mark.postgres
@pytest.mark.controlplane
def test_aijobs_chaos_tells_scenario_1_as_the_readme_shows() -> None:
    proc = _run([*AIJOBS, "chaos", "--scenario", "s1"], 600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "scenario s1" in proc.stdout and "violations" in proc.stdout.lower()


@pytest.mark.postgres
@pytest.mark.controlplane
def test_aijobs_chaos_runs_a_small_random_campaign_as_the_readme_shows() -> None:
    proc = _run([*AIJOBS, "chaos", "--jobs", "4", "--seed", "7", "--faults", "net,kill,disk"], 600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "campaign: seed 7" in proc.stdout


@pytest.mark.controlplane
def test_the_demo_runs_the_main_job_and_leaves_only_its_result(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for attempt in range(2):  # a second run replaces the first one's files
        proc = _run([*AIJOBS, "demo"], 600, XDG_STATE_HOME=str(state))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "upscale-demo: Delivered" in proc.stdout, attempt
        assert "too-expensive: Failed" in proc.stdout
        story = proc.stdout[proc.stdout.index("the story of the first job") :]
        steps = re.findall(r"^\s+Name:\s+(\w+)$", story, re.MULTILINE)
        assert steps == ["charge", "upload", "schedule", "process", "capture", "deliver"], story
        home = state / "aijobs" / "demo"
        assert sorted(p.name for p in home.iterdir()) == ["compare.png", "upscaled.png"]
        compare = Image.open(home / "compare.png")
        assert compare.width > 2 * 4 * Image.open(home / "upscaled.png").width  # both, enlarged
