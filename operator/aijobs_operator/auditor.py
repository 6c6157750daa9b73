"""The auditor: invariant I5 in production. It compares each finished job's saga log with what
Payment, Storage and AI hold for it, writes its verdict to the job's status
(``consistent | repaired | needs-attention``), and repairs what the log alone justifies: release
a stray hold of a failed job, capture the hold of a delivered one whose capture was lost, delete
an orphan object, cancel an orphan task. Money never moves on a guess: a finding without a
``repair`` is reported, not acted on.

It writes through the job reconciler's :class:`~aijobs_operator.kube.KubeWriter` and reads its
cache and clock, so the deterministic simulator runs it unchanged (:meth:`Auditor.audit_pass` is
one round over every finished job; :meth:`Auditor.run` repeats it in production).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from pydantic import ValidationError

from aijobs import consistency
from aijobs.api.ai import Task
from aijobs.api.payment import Hold
from aijobs.api.rules import TERMINAL_PHASES
from aijobs.api.storage import StoredObject
from aijobs.api.v1alpha1 import AIImageJobSpec, AIImageJobStatus, Audit
from aijobs.consistency import Finding, JobRecords, findings
from aijobs.wire.client import ServiceError
from aijobs_operator.config import OperatorSettings
from aijobs_operator.core import idempotency_key
from aijobs_operator.engine import Reconciler
from aijobs_operator.kube import ApiException
from aijobs_operator.metrics import METRICS
from aijobs_operator.steps import Services

log = logging.getLogger("aijobs.operator.auditor")

Verdict = Literal["consistent", "repaired", "needs-attention"]


async def fetch_records(svc: Services, uid: str) -> JobRecords:
    return await consistency.fetch_records(svc.payment, svc.storage, svc.ai, uid)


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
    else:
        raise ValueError(f"unknown repair {finding.repair!r}")


def status_of(body: dict[str, Any]) -> AIImageJobStatus:
    """A job's saga log as the typed model (a job not yet claimed has none: an empty log)."""
    return AIImageJobStatus.model_validate(body.get("status", {}))


class Auditor:
    def __init__(self, cfg: OperatorSettings, reconciler: Reconciler) -> None:
        self.cfg = cfg
        self.reconciler = reconciler

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.audit_interval_seconds)
            await self.audit_pass()

    async def audit_pass(self) -> dict[str, str]:
        """Audit every finished job the reconciler knows, one at a time; a job whose services or
        Kubernetes do not answer now is audited on the next pass. Returns each audited job's
        verdict by uid."""
        verdicts: dict[str, str] = {}
        for body in list(self.reconciler.cache.values()):
            name = body["metadata"]["name"]
            try:
                if status_of(body).phase not in TERMINAL_PHASES:
                    continue
                verdicts[body["metadata"]["uid"]] = await self.audit(body)
            except ValidationError as exc:  # the engine refuses such a job; nothing to compare
                log.warning("audit of %s skipped: unreadable job: %s", name, exc.errors()[0]["msg"])
            except ServiceError as exc:
                log.warning("audit of %s deferred: %s", name, exc)
            except ApiException as exc:  # deleted since it was read (404), or a blip
                log.info("audit of %s skipped: Kubernetes answered %s", name, exc.status)
        return verdicts

    async def audit(self, body: dict[str, Any]) -> Verdict:
        """Check one finished job, repair what is safe, and record the verdict. Returns it."""
        meta = body["metadata"]
        spec = AIImageJobSpec.model_validate(body["spec"])
        status = status_of(body)
        svc = self.reconciler.svc
        found = findings(status, spec.price, await fetch_records(svc, meta["uid"]))
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
        if found or status.audit is None or status.audit.verdict is None:
            audit = Audit(verdict=verdict, findings=notes, checked_at=self.reconciler.clock())
            written = audit.model_dump(by_alias=True, exclude_none=True, mode="json")
            updated = await self.reconciler.kube.patch_status(
                meta["namespace"], meta["name"], {"audit": written}
            )
            self.reconciler.remember(updated)
        return verdict
