"""The simulator's tenancy and auditor checks can fail: each is shown failing under a mutation
that breaks the promise it stands for (a test-only change, undone after the test), and passing
without it (the 20,000 schedules of ``test_simulation.py``)."""

from __future__ import annotations

from typing import Any

import pytest
from aijobs_dev.simulation import world
from aijobs_dev.simulation.run import Campaign, run_range
from aijobs_dev.simulation.twins import AuthTwin, Reply
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
