"""``aijobs submit … --run-at +2h`` run twice (its answer lost the first time, or the user unsure
it went through) is one job, at the time the first run asked for: the delay travels as a delay
and Main API counts it from the job's first acceptance. Main API and Storage are the real apps
(:mod:`tests.services.batch_stand`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aijobs.cli import main as aijobs
from aijobs.console import user
from tests.services import images
from tests.services.batch_stand import Stand, stand

__all__ = ["stand"]


def test_a_relative_run_at_submitted_twice_is_one_job_at_one_time(
    stand: Stand, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(images.png(color=(7, 7, 7)))
    token = tmp_path / "token"
    token.write_text(stand.tokens["acme"] + "\n")
    config = tmp_path / "config.toml"
    config.write_text(f'[services]\nmain = "{stand.main_url}"\n[user]\ntoken_file = "{token}"\n')
    monkeypatch.setenv("AIJOBS_CONFIG", str(config))
    command = ["submit", str(image), "--pipeline", "grayscale", "--run-at", "+2h", "--json"]

    assert aijobs(command) == 0
    capsys.readouterr()
    assert aijobs(command) == 0
    assert "already submitted" in capsys.readouterr().err
    assert stand.kube.created == 1
    (job,) = stand.kube.jobs.values()
    assert job["spec"]["runAt"].endswith("Z")
    # What makes the two runs one request whatever the clock says between them (a time worked
    # out here made them differ once a second had passed):
    assert user._run_at("+2h") == {"delaySeconds": 7200}
    assert user._run_at("2030-01-01T00:00:00Z") == {"runAt": "2030-01-01T00:00:00Z"}

    # A folder's batch with a delay, twice: one job too.
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "b.png").write_bytes(images.png(color=(8, 8, 8)))
    batch = ["submit", str(folder), "--pipeline", "grayscale", "--run-at", "+10m"]
    assert aijobs(batch) == 0 and aijobs(batch) == 0
    assert "already submitted" in capsys.readouterr().err
    assert stand.kube.created == 2
