"""The seed's four scenarios, deterministic, and a short random campaign under every fault kind:
every invariant I1-I5 must hold at the end."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aijobs_dev.chaos import Campaign, build_stack, run_random, run_scenario, schedule
from aijobs_dev.testbed.stack import Stack


@pytest.fixture(scope="module")
def chaos_stack(
    control_plane: Any, postgres: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    suffix = uuid.uuid4().hex[:6]
    stack = build_stack(
        tmp_path_factory.mktemp("chaos"),
        control_plane.kubeconfig,
        lambda name: postgres.create_database(f"chaos_{name}_{suffix}"),
        seed=11,
    )
    try:
        yield stack
    finally:
        stack.stop()


class _Process:
    """A managed process as the campaign sees it: ``proc`` None once a fault killed it, a
    finished ``proc`` once it exited by itself."""

    def __init__(self, name: str, state: str) -> None:
        self.name, self.starts = name, 0
        code = 3 if state == "exited" else None
        self.proc = None if state == "killed" else SimpleNamespace(returncode=code)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def start(self) -> _Process:
        self.starts += 1
        self.proc = SimpleNamespace(returncode=None)
        return self


def test_a_process_that_exits_by_itself_under_faults_is_a_crash_and_is_started_again() -> None:
    """Only a process no fault killed counts: the killed one waits for its fault's heal (or the
    campaign's), and is then started without a word."""
    killed, exited, fine = _Process("payment", "killed"), _Process("worker-1", "exited"), _Process("ai", "up")
    stack = SimpleNamespace(
        services={"payment": killed, "ai": fine}, operators=[_Process("operator", "up")], workers=[exited],
        faults=lambda name, rules: None,
    )  # fmt: skip
    campaign = Campaign(stack, seed=1)
    campaign.supervise()
    assert campaign.crashes == ["worker-1 exited by itself (code 3); see its log"]
    assert (killed.starts, exited.starts, fine.starts) == (0, 1, 0)
    campaign.heal_all()
    assert (killed.starts, exited.starts, fine.starts) == (1, 1, 0)
    assert len(campaign.crashes) == 1


def _job(name: str, uid: str, phase: str | None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "ns", "name": name, "uid": uid, "finalizers": ["aijobs.io/saga"]}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T03:25:00Z"
    steps = [{"name": "charge", "state": "Succeeded", "attempts": 1}]
    return {"metadata": meta, "status": {"phase": phase, "message": f"{name} says", "steps": steps}}


def test_a_campaign_that_did_not_end_names_the_jobs_that_kept_it() -> None:
    """What a report says when not every job ended: a job not terminal, one the campaign deleted
    that is still there, one submitted that is not there at all; not a finished job, nor one
    deleted and gone, nor a job of the same name created again (another uid)."""
    stack = SimpleNamespace(services={}, operators=[], workers=[], faults=lambda name, rules: None)
    campaign = Campaign(stack, seed=1)  # type: ignore[arg-type]
    campaign.submitted = [("ns", n) for n in ("done", "running", "stuck", "gone", "lost", "again")]
    campaign.deleted = {("ns", "stuck"): ("u-stuck", "acme", 1), ("ns", "gone"): ("u-gone", "acme", 1)}
    campaign.deleted[("ns", "again")] = ("u-old", "acme", 1)
    listed = [
        _job("done", "u-done", "Delivered"),
        _job("running", "u-running", "Scheduled"),
        _job("stuck", "u-stuck", "Failed", deleting=True),
        _job("again", "u-new", "Delivered"),
    ]
    campaign.jobs = lambda: listed  # type: ignore[method-assign]
    said = campaign.unended()
    assert [line.split(":")[0].split(" ")[0] for line in said] == ["ns/lost", "ns/running", "ns/stuck"]
    assert "missing" in said[0]
    assert "phase Scheduled" in said[1] and "deleted" not in said[1]
    assert "phase Failed, deleted at 2026-12-07T03:25:00Z, deleted by the campaign" in said[2]
    assert "finalizers ['aijobs.io/saga']" in said[2] and "('charge', 'Succeeded', 1)" in said[2]


def test_a_seed_always_gives_the_same_fault_schedule() -> None:
    assert schedule(42, {"net", "kill"}, 30) == schedule(42, {"net", "kill"}, 30)
    assert schedule(42, {"net", "kill"}, 30) != schedule(43, {"net", "kill"}, 30)


@pytest.mark.parametrize(
    ("scenario", "phase", "says"),
    [
        pytest.param("s1", "Failed", "quota", id="s1-disk-full-after-the-charge"),
        pytest.param("s2", "Delivered", "result delivered", id="s2-lost-response-then-retry"),
        pytest.param("s3", "Delivered", "result delivered", id="s3-storage-down-while-the-gpu-works"),
        pytest.param("s4", "Failed", "not a recognisable image", id="s4-services-disagree"),
    ],
)
def test_a_seed_scenario_ends_with_the_opposite_of_the_seeds_story(
    chaos_stack: Stack, scenario: str, phase: str, says: str
) -> None:
    result, story = run_scenario(Campaign(chaos_stack, seed=3), scenario)
    assert result.violations == [] and result.crashes == [], story
    assert f": {phase} —" in story and says in story
    if phase == "Failed":
        assert "held (started with 100)" in story and "100 available, 0 held" in story
    else:
        assert "90 available, 0 held" in story  # charged once
    if scenario == "s4":
        assert "'verdict': 'repaired'" in story and "stray-hold" in story
    if scenario == "s2":  # both answers were lost after their callee committed
        assert "'s2-schedule'" in story and "'s2-upload'" in story
    if scenario == "s3":
        assert "'s3-storage-down'" in story


def test_a_random_campaign_of_fifty_jobs_keeps_every_invariant(chaos_stack: Stack) -> None:
    campaign = Campaign(chaos_stack, seed=20261125)
    result = run_random(campaign, 50, {"net", "kill", "disk"}, random.Random(20261125))
    result.print()
    assert result.jobs + result.deleted == 50 and result.deleted >= 1  # users deleted some mid-saga
    assert result.heal_seconds is not None
    assert sum(result.faults.values()) > 10
    assert result.violations == []
