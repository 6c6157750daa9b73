"""The auditor: invariant I5 in production. It compares each finished job's saga log with what
Payment, Storage and AI hold for it, reports a disagreement in the job's status
(``repaired | needs-attention``), and repairs what the log alone justifies: release a stray hold
of a failed job, capture the hold of a delivered one whose capture was lost, delete an orphan
object, cancel an orphan task. Money never moves on a guess: a finding without a ``repair`` is
reported, not acted on.

A job is audited once when it finishes, not every pass (three reads per job per pass was ~30,000
requests a pass at 10,000 jobs): again only when the job changes (its resourceVersion: a person's
edit or annotation asks for it), after a repair (to see it took), or when its last audit is older
than ``audit_recheck_seconds`` (damage behind the saga's back is found within that bound). Money
is not left to that bound: each pass reads what Payment holds right now (``GET /v1/holds?state=
active``, as many holds as jobs in flight, in pages), and a finished job with an active hold is
audited on that pass, since no finished job may hold credits. A hold of a job that is gone from
Kubernetes (a request that committed after the job's compensation looked, or after its finalizer
went: no saga will ever run for it again) is undone on that pass too: its tasks stopped, its
objects deleted unless it was charged (then they are the result its user paid for), then its
active holds released (:func:`gone_jobs`, :meth:`Auditor.clean_up_gone`), once a fresh LIST
from the API server confirms it is gone (:meth:`Auditor.confirm_gone`: the cache of a process
that has just started is not proof of absence). When nothing disagrees, nothing is written: a
job with no ``status.audit`` has nothing to report, and the verdict is in
:meth:`Auditor.audit_pass`'s answer and the operator's log.

It writes through the job reconciler's :class:`~aijobs_operator.kube.KubeWriter` and reads its
cache and clock, so the deterministic simulator runs it against its twins
(:meth:`Auditor.audit_pass` is one round over the finished jobs due; :meth:`Auditor.run` repeats
it in production); the simulator only hooks :meth:`Auditor.held_jobs` to run the operator's other
work while a pass awaits Payment, as it does in one process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Literal

import urllib3
from pydantic import ValidationError

from aijobs import consistency
from aijobs.api.ai import JobTasksCancelled, Task
from aijobs.api.payment import Hold, HoldPage
from aijobs.api.rules import TERMINAL_PHASES
from aijobs.api.storage import DeletedObjects, StoredObject
from aijobs.api.v1alpha1 import AIImageJobSpec, AIImageJobStatus, Audit
from aijobs.consistency import Finding, JobRecords, findings, gone_job_leftovers
from aijobs.wire.client import ServiceError
from aijobs_operator.config import OperatorSettings
from aijobs_operator.core import idempotency_key
from aijobs_operator.engine import Reconciler
from aijobs_operator.kube import ApiException
from aijobs_operator.metrics import METRICS
from aijobs_operator.steps import Services

log = logging.getLogger("aijobs.operator.auditor")

Verdict = Literal["consistent", "repaired", "needs-attention"]


async def fetch_records(svc: Services, uid: str, batch: bool = False) -> JobRecords:
    return await consistency.fetch_records(svc.payment, svc.storage, svc.ai, uid, batch)


async def repair(svc: Services, uid: str, finding: Finding) -> None:
    """Carry out ``finding.repair`` under a key of its own: a repair retried after a lost answer
    is the same request, answered as the first time. Each answer is read as its wire model (one
    that does not fit is the service breaking its contract, a definite error)."""
    assert finding.repair is not None
    action, _, target = finding.repair.partition(":")
    key = idempotency_key(uid, f"audit-{action}:{target}")
    if action == "release-hold":
        await svc.payment.fetch(Hold, "POST", f"/v1/holds/{target}/release", key=key)
    elif action == "capture-hold":
        await svc.payment.fetch(Hold, "POST", f"/v1/holds/{target}/capture", key=key)
    elif action == "delete-object":
        await svc.storage.fetch(StoredObject, "POST", f"/v1/objects/{target}/delete", key=key)
    elif action == "cancel-task":
        await svc.ai.fetch(Task, "POST", f"/v1/tasks/{target}/cancel", key=key)
    elif action == "cancel-job-tasks":  # a batch's: every task of the job still to run
        job_id = target.split("/", 1)[0]
        await svc.ai.fetch(JobTasksCancelled, "POST", f"/v1/jobs/{job_id}/tasks/cancel", key=key)
    elif action == "delete-job-objects":  # every object of a job that is gone, in one call
        job_id = target.split("/", 1)[0]
        await svc.storage.fetch(DeletedObjects, "POST", f"/v1/jobs/{job_id}/objects/delete", key=key)
    else:
        raise ValueError(f"unknown repair {finding.repair!r}")


def status_of(body: dict[str, Any]) -> AIImageJobStatus:
    """A job's saga log as the typed model (a job not yet claimed has none: an empty log)."""
    return AIImageJobStatus.model_validate(body.get("status", {}))


@dataclass(frozen=True)
class Audited:
    """The last audit of a job: the version of it that was judged, when, and the verdict."""

    resource_version: str
    at: dt.datetime
    verdict: Verdict


def audit_due(
    body: dict[str, Any],
    last: Audited | None,
    now: dt.datetime,
    recheck: dt.timedelta | None,
    held: bool = False,
) -> bool:
    """Whether a finished job is audited on this pass: never audited (by this process), Payment
    holds credits for it (``held``), changed since, repaired last time (to see the repair took),
    or its last audit older than ``recheck`` (None: never again for that reason)."""
    if last is None or held or last.verdict == "repaired":
        return True
    if last.resource_version != body["metadata"].get("resourceVersion"):
        return True
    return recheck is not None and now - last.at >= recheck


def gone_jobs(
    held: set[str], known: set[str], deleted: set[str], suspects: set[str]
) -> tuple[set[str], set[str]]:
    """Which jobs Payment holds credits for this process believes gone from Kubernetes: the jobs
    it saw deleted, and those it has not known for two passes in a row (deleted before it
    started, or not yet in the cache of a process that has just started). ``known`` must be read
    after ``held``: the operator charges only a job it knows. A belief, from the cache:
    :meth:`Auditor.confirm_gone` asks the API server before anything is undone. Returns (gone,
    suspects for the next pass)."""
    unknown = held - known
    gone = {uid for uid in unknown if uid in deleted or uid in suspects}
    return gone, unknown - gone


class Auditor:
    def __init__(self, cfg: OperatorSettings, reconciler: Reconciler) -> None:
        self.cfg = cfg
        self.reconciler = reconciler
        self.audited: dict[str, Audited] = {}  # job uid -> its last audit
        seconds = cfg.audit_recheck_seconds
        self._recheck = dt.timedelta(seconds=seconds) if seconds > 0 else None
        self._suspects: set[str] = set()  # held jobs not known on the last pass

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.audit_interval_seconds)
            await self.audit_pass()

    @property
    def suspects(self) -> set[str]:
        """Jobs Payment holds credits for that this process has not known on its last pass: gone
        on the next one, if still unknown."""
        return set(self._suspects)

    def judged(self, body: dict[str, Any]) -> bool:
        """Whether this version of the job has been audited and left nothing for a person: the TTL
        waits for it before deleting a job (its one audit comes first; a job that needs a person
        stays for them)."""
        last = self.audited.get(body["metadata"]["uid"])
        return (
            last is not None
            and last.resource_version == body["metadata"].get("resourceVersion")
            and last.verdict != "needs-attention"
        )

    async def audit_pass(self) -> dict[str, str]:
        """Audit the finished jobs the reconciler knows that are due (:func:`audit_due`), one at a
        time; a job whose services or Kubernetes do not answer now is audited on the next pass.
        Returns each audited job's verdict by uid."""
        verdicts: dict[str, str] = {}
        now = self.reconciler.clock()
        bodies = list(self.reconciler.cache.values())
        held = await self.held_jobs()
        for body in bodies:
            name = body["metadata"]["name"]
            uid = body["metadata"]["uid"]
            # Read from the raw body: a pass looks at every job, and parses only those it audits.
            if (body.get("status") or {}).get("phase") not in TERMINAL_PHASES:
                continue
            if not audit_due(body, self.audited.get(uid), now, self._recheck, uid in held):
                continue
            try:
                verdict, version = await self.audit(body)
                verdicts[uid] = verdict
                self.audited[uid] = Audited(version, now, verdict)
            except ValidationError as exc:  # the engine refuses such a job; nothing to compare
                log.warning("audit of %s skipped: unreadable job: %s", name, exc.errors()[0]["msg"])
            except ServiceError as exc:
                log.warning("audit of %s deferred: %s", name, exc)
            except ApiException as exc:  # deleted since it was read (404), or a blip
                log.info("audit of %s skipped: Kubernetes answered %s", name, exc.status)
        known = {body["metadata"]["uid"] for body in bodies}
        for uid in [u for u in self.audited if u not in known]:  # deleted jobs: forget them
            del self.audited[uid]
        now_known = {body["metadata"]["uid"] for body in list(self.reconciler.cache.values())}
        gone, self._suspects = gone_jobs(held, now_known, self.reconciler.gone, self._suspects)
        gone = await self.confirm_gone(gone)
        for uid in sorted(gone):
            try:
                verdicts[uid] = await self.clean_up_gone(uid)
            except ServiceError as exc:
                log.warning("clean-up of gone job %s deferred: %s", uid, exc)
        return verdicts

    async def confirm_gone(self, gone: set[str]) -> set[str]:
        """Those of ``gone`` that the API server does not store either. The cache is not proof of
        absence: a process that has just started is still filling it (10,000 jobs take a while to
        list and observe), and undoing a job in flight would delete what its saga goes on to
        deliver. Read after the holds: a job Payment held for existed before they were read, so
        one missing from this LIST no longer exists. Kubernetes not answering (an error, a
        refused or broken connection, a timeout) defers the clean-up to a later pass."""
        if not gone:
            return gone
        try:
            stored = await self.reconciler.kube.job_uids()
        except ApiException as exc:
            log.warning("clean-up of %d gone job(s) deferred: Kubernetes answered %s", len(gone), exc.status)
            return set()
        except urllib3.exceptions.HTTPError as exc:  # the client wraps no transport error
            log.warning("clean-up of %d gone job(s) deferred: Kubernetes unreachable: %s", len(gone), exc)
            return set()
        alive = gone & stored
        if alive:
            log.info("%d job(s) Payment holds for are not in the cache yet but exist: not gone", len(alive))
        return gone - stored

    async def clean_up_gone(self, uid: str) -> str:
        """Undo what a job that is gone left while Payment still holds credits for it (its
        finalizer is gone, so its saga never will): stop its tasks, delete its objects unless a
        hold was captured, then release its active holds
        (:func:`~aijobs.consistency.gone_job_leftovers`). A task still running
        is waited for on the next pass. Said in the log and the metrics: the job has no status
        left to say it in."""
        svc = self.reconciler.svc
        # A fresh key each time: cancelling is idempotent in itself, and a task that a late
        # request created after an earlier call must be cancelled too.
        stopped = await svc.ai.fetch(
            JobTasksCancelled,
            "POST",
            f"/v1/jobs/{uid}/tasks/cancel",
            key=idempotency_key(uid, f"audit-gone-cancel:{self.reconciler.clock().isoformat()}"),
        )
        verdict = "repaired" if stopped.cancelled or stopped.stopping else "consistent"
        for _ in range(2):  # the objects, then (nothing left) the holds
            # Read afresh, not from the cancel's answer: that may be the replay of an earlier
            # pass's, from before its worker stopped.
            records = await fetch_records(svc, uid, batch=True)
            assert records.counts is not None  # a batch-style read counts the tasks
            found = gone_job_leftovers(records, records.counts)
            if not found:
                if records.counts.running:
                    verdict = "repaired"  # its task is stopping: the next pass goes on
                break
            for finding in found:
                await repair(svc, uid, finding)
                METRICS.audit.labels(finding.kind, "repaired").inc()
                log.warning("job %s is gone: %s; repaired: %s", uid, finding.detail, finding.repair)
            verdict = "repaired"
        return verdict

    async def held_jobs(self) -> set[str]:
        """The jobs Payment holds credits for now, read page by page. Payment not answering is
        no reason to skip the pass: the jobs due for their own reasons are audited without it."""
        jobs: set[str] = set()
        params = {"state": "active", "limit": 1000}
        try:
            while True:
                page = await self.reconciler.svc.payment.fetch(HoldPage, "GET", "/v1/holds", params=params)
                jobs.update(hold.job_id for hold in page.items)
                if page.next is None:
                    return jobs
                params = {**params, "after": page.next}
        except ServiceError as exc:
            log.warning("active holds unread this pass: %s", exc)
            return jobs

    async def audit(self, body: dict[str, Any]) -> tuple[Verdict, str]:
        """Check one finished job, repair what is safe, and record a disagreement. Returns the
        verdict and the job's resourceVersion after (its own, when nothing was written)."""
        meta = body["metadata"]
        spec = AIImageJobSpec.model_validate(body["spec"])
        status = status_of(body)
        svc = self.reconciler.svc
        found = findings(status, spec.price, await fetch_records(svc, meta["uid"], spec.is_batch))
        notes: list[str] = []
        verdict: Verdict = "consistent"
        for finding in found:
            if finding.repair is None:
                verdict = "needs-attention"
                notes.append(f"{finding.kind} ({finding.service}): {finding.detail}; needs a person")
                METRICS.audit.labels(finding.kind, "reported").inc()
                continue
            await repair(svc, meta["uid"], finding)
            notes.append(f"{finding.kind} ({finding.service}): {finding.detail}; repaired: {finding.repair}")
            METRICS.audit.labels(finding.kind, "repaired").inc()
            await self.reconciler.kube.event(
                body, "Warning", "AuditRepaired", f"{finding.kind}: {finding.detail}; did {finding.repair}"
            )
            if verdict == "consistent":
                verdict = "repaired"
        log.info("audit of %s/%s: %s", meta["namespace"], meta["name"], verdict)
        stored = status.audit or Audit()
        # Nothing to say and nothing said before that it would correct, or the same said already:
        # no write. A stored needs-attention that no longer holds (a person settled it) is
        # cleared by "consistent".
        unchanged = found and stored.verdict == verdict and stored.findings == notes
        if unchanged or (not found and stored.verdict != "needs-attention"):
            return verdict, str(meta.get("resourceVersion", ""))
        audit = Audit(verdict=verdict, findings=notes, checked_at=self.reconciler.clock())
        written = audit.model_dump(by_alias=True, exclude_none=True, mode="json")
        updated = await self.reconciler.kube.patch_status(meta["namespace"], meta["name"], {"audit": written})
        self.reconciler.remember(updated)
        return verdict, str(updated["metadata"].get("resourceVersion", ""))
