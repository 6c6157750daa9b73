"""The simulator's tenancy and auditor checks can fail: each is shown failing under a mutation
that breaks the promise it stands for (a test-only change, undone after the test), and passing
without it (the 20,000 schedules of ``test_simulation.py``)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from aijobs_dev.simulation import world
from aijobs_dev.simulation.check import check
from aijobs_dev.simulation.run import Campaign, run_range
from aijobs_dev.simulation.twins import AuthTwin, Reply
from aijobs_dev.simulation.world import Faults, SimJob, World
from aijobs_operator import auditor

from aijobs.consistency import Finding, JobRecords

SCHEDULES = 300


def _violations(campaign: Campaign, invariant: str) -> list[str]:
    return [line for lines in campaign.failing.values() for line in lines if line.startswith(invariant + " ")]


def test_a_namespace_that_charges_an_account_it_is_not_bound_to_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Auth lets any namespace charge any account: jobs of an unbound namespace, or of the
    contested one naming the account that does not hold it, charge that account."""

    def anyone(self: AuthTwin, *, body: Any, **_: Any) -> Reply:
        return Reply(200, {"namespace": body["namespace"], "account": body["account"], "allowed": True})

    monkeypatch.setattr(AuthTwin, "authorize", anyone)
    found = _violations(run_range(0, SCHEDULES), "T1")
    assert found
    assert any("from namespace stray" in line for line in found)
    assert any("from namespace lab" in line and "held by" in line for line in found)


def test_a_repair_the_auditor_skips_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """The auditor says it repaired but does nothing: stray holds stay held, orphans stay."""

    async def skip(svc: Any, uid: str, finding: Finding) -> None:
        return None

    monkeypatch.setattr(auditor, "repair", skip)
    found = _violations(run_range(0, 2 * SCHEDULES), "A1")  # a lost capture is the rarest damage
    for kind in ("stray-hold", "lost-capture", "orphan-object", "orphan-task"):
        assert any(f"{kind} " in line and "not repaired" in line for line in found), kind


def test_a_finished_job_the_auditor_never_judged_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_pass(self: auditor.Auditor) -> dict[str, str]:
        return {}

    monkeypatch.setattr(auditor.Auditor, "audit_pass", no_pass)
    found = _violations(run_range(0, 50), "A1")
    assert any("audit verdict None" in line for line in found)


def test_an_auditor_that_captures_without_evidence_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """The auditor takes the Delivered phase alone as evidence (as if AI always said the task
    succeeded): a hold whose task AI disowns is captured, money the log does not justify."""
    judge = auditor.findings

    def credulous(status: Any, price: int, records: JobRecords) -> list[Finding]:
        if records.task is not None:
            task = records.task.model_copy(update={"state": "succeeded"})
            records = JobRecords(records.holds, records.objects, task, records.charges)
        return judge(status, price, records)

    monkeypatch.setattr(auditor, "findings", credulous)
    campaign = run_range(0, SCHEDULES)
    assert any("evidence False" in line for line in _violations(campaign, "A2"))
    assert _violations(campaign, "A3")


def test_an_auditor_that_leaves_held_credits_to_the_daily_recheck_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The auditor no longer reads what Payment holds each pass: a hold put on a job it already
    judged waits for the daily recheck (what the dashboard's e2e test once met as a stray hold
    left active past its deadline)."""
    due = auditor.audit_due

    def blind(body: Any, last: Any, now: Any, recheck: Any, held: bool = False) -> bool:
        return due(body, last, now, recheck)

    monkeypatch.setattr(auditor, "audit_due", blind)
    found = _violations(run_range(0, SCHEDULES), "A1")
    assert any("stray-hold " in line and "waited for the daily recheck" in line for line in found)


def test_an_auditor_that_leaves_a_gone_jobs_late_commits_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hold, an input and a task that committed after their job was gone stay: no saga will
    ever run for that job again, and the user's credits stay held for nothing."""

    async def nothing(self: auditor.Auditor, uid: str) -> str:
        return "consistent"

    monkeypatch.setattr(auditor.Auditor, "clean_up_gone", nothing)
    found = _violations(run_range(0, 2 * SCHEDULES), "A1")
    for kind in ("gone-hold", "gone-object", "gone-task"):
        assert any(f"{kind} " in line and "not repaired" in line for line in found), kind
    assert any("gone-hold " in line and "waited for the daily recheck" in line for line in found)


def _cold_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every restart is cold, and its list hands the new process nothing more until faults heal:
    the jobs it missed stay out of its cache through every pass before."""
    monkeypatch.setattr(world, "COLD_RESTARTS", 1.0)
    monkeypatch.setattr(world, "COLD_LISTING", 0.0)


def test_an_auditor_that_takes_its_cold_cache_for_kubernetes_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The auditor undoes every held job its new process's cache does not hold yet, without
    asking the API server: it releases the hold of a job still in flight (what the 10,000-job
    campaign met as objects deleted under jobs that went on to deliver)."""

    async def trust_the_cache(self: auditor.Auditor, gone: set[str]) -> set[str]:
        return gone

    _cold_restarts(monkeypatch)
    monkeypatch.setattr(auditor.Auditor, "confirm_gone", trust_the_cache)
    found = _violations(run_range(0, SCHEDULES), "A2")
    assert any("the auditor released" in line and "evidence False" in line for line in found), found


def test_cold_restarts_keep_every_invariant(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same schedules as above, the auditor as built: it confirms a job is gone with a fresh
    LIST before undoing anything, and no schedule breaks an invariant."""
    _cold_restarts(monkeypatch)
    campaign = run_range(0, SCHEDULES)
    assert campaign.faults["cold-restart"] >= 50, campaign.faults
    assert not campaign.failing, list(campaign.failing.items())[:3]


def _awaiting_capture() -> tuple[World, SimJob]:
    """A schedule with no faults and one single-image job, run until its task succeeded while
    its hold is still active: the saga's next pass captures and delivers it."""
    for seed in range(100):
        world = World(seed, Faults(), jobs=1)
        (job,) = world.jobs
        if job.images or job.namespace not in ("team", "ops"):  # one the account may charge
            continue

        async def drive(world: World = world, job: SimJob = job) -> bool:
            for _ in range(200):
                world._work()
                if any(t.job_id == job.uid and t.state == "succeeded" for t in world.ai.tasks.values()):
                    return True
                await world.operator.follow()
                while world.kube.watch:
                    await world._watch_and_drain()
                for key in list(world.kube.objects):
                    await world._pass(key)
                world.clock += dt.timedelta(seconds=30)
            return False

        if asyncio.run(drive()):
            holds = [h.state for h in world.payment.holds.values() if h.job_id == job.uid]
            assert holds == ["active"], holds
            return world, job
    raise AssertionError("no seed of 100 brings a single job to its capture")


async def _deliver_then_delete(world: World, auditor_: auditor.Auditor) -> None:
    """Beside the auditor, between its read of the holds and its look at its cache: the saga
    captures and delivers the job, its user deletes it, and its finalizer lets it go."""
    (job,) = world.jobs
    for _ in range(20):
        await world.operator.follow()
        while world.kube.watch:
            await world._watch_and_drain()
        for key in list(world.kube.objects):
            await world._pass(key)
        body = world.kube.objects.get((job.namespace, job.name))
        if body is None:
            break
        if body.get("status", {}).get("phase") == "Delivered":
            world._delete(job.namespace, job.name, "delete")
    while world.kube.watch:
        await world._watch_and_drain()
    assert job.uid in world.operator.gone  # the cache saw it go, while Payment's hold was active


def _deleted_mid_audit(monkeypatch: pytest.MonkeyPatch) -> tuple[World, SimJob]:
    world, job = _awaiting_capture()
    monkeypatch.setattr(World, "meanwhile", _deliver_then_delete)
    verdicts = asyncio.run(world.auditor.audit_pass())
    assert job.uid in verdicts  # the auditor took it for gone, and cleaned up after it
    return world, job


def test_a_job_delivered_and_deleted_while_the_auditor_awaits_keeps_its_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The race the 50-job campaign met once: the holds read while the job's was active, the job
    delivered and gone before the auditor looked for it. It was charged, so its result stays."""
    world, job = _deleted_mid_audit(monkeypatch)
    (hold,) = [h for h in world.payment.holds.values() if h.job_id == job.uid]
    assert hold.state == "captured"
    results = [o for o in world.storage.objects.values() if o.job_id == job.uid and o.kind == "result"]
    assert [o.state for o in results] == ["committed"]
    assert not [str(v) for v in check(world) if v.invariant == "I1"]


def test_an_auditor_that_cleans_up_after_a_charged_job_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """The auditor undoes a gone job without looking at whether it was charged: the result the
    user paid for is deleted."""
    undo = auditor.gone_job_leftovers

    def regardless(records: JobRecords, tasks: Any) -> list[Finding]:
        uncharged = [h for h in records.holds if h.state != "captured"]
        return undo(JobRecords(uncharged, records.objects, None, records.charges, records.counts), tasks)

    monkeypatch.setattr(auditor, "gone_job_leftovers", regardless)
    world, job = _deleted_mid_audit(monkeypatch)
    found = [str(v) for v in check(world) if v.invariant == "I1"]
    assert any(f"{job.name}: charged {job.price} for no delivered result" in line for line in found), found
