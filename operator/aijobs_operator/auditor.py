"""The auditor: invariant I5 in production. It compares each finished job's saga log with what
Payment, Storage and AI hold for it, writes its verdict to the job's status
(``consistent | repaired | needs-attention``), and repairs what the log alone justifies: release
a stray hold of a failed job, capture the hold of a delivered one whose capture was lost, delete
an orphan object, cancel an orphan task. Money never moves on a guess: a finding without a
``repair`` is reported, not acted on.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

from aijobs import consistency
from aijobs.consistency import Finding, JobRecords, findings
from aijobs.wire.client import ServiceError
from aijobs_operator import saga
from aijobs_operator.config import OperatorSettings
from aijobs_operator.engine import Reconciler
from aijobs_operator.kube import ApiException
from aijobs_operator.metrics import METRICS
from aijobs_operator.steps import Services

log = logging.getLogger("aijobs.operator.auditor")


async def fetch_records(svc: Services, uid: str) -> JobRecords:
    return await consistency.fetch_records(svc.payment, svc.storage, svc.ai, uid)


async def repair(svc: Services, uid: str, finding: Finding) -> None:
    assert finding.repair is not None
    action, _, target = finding.repair.partition(":")
    key = saga.idempotency_key(uid, f"audit-{action}:{target}")
    if action == "release-hold":
        await svc.payment.json("POST", f"/v1/holds/{target}/release", key=key)
    elif action == "capture-hold":
        await svc.payment.json("POST", f"/v1/holds/{target}/capture", key=key)
    elif action == "delete-object":
        await svc.storage.json("POST", f"/v1/objects/{target}/delete", key=key)
    elif action == "cancel-task":
        await svc.ai.json("POST", f"/v1/tasks/{target}/cancel", key=key)
    else:
        raise ValueError(f"unknown repair {finding.repair!r}")


class Auditor:
    def __init__(self, cfg: OperatorSettings, reconciler: Reconciler) -> None:
        self.cfg = cfg
        self.reconciler = reconciler

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.audit_interval_seconds)
            for body in list(self.reconciler.cache.values()):
                if (body.get("status") or {}).get("phase") in saga.TERMINAL:
                    try:
                        await self.audit(body)
                    except ServiceError as exc:
                        log.warning("audit of %s deferred: %s", body["metadata"]["name"], exc)
                    except ApiException as exc:  # deleted since it was read (404), or a blip
                        log.info(
                            "audit of %s skipped: Kubernetes answered %s",
                            body["metadata"]["name"],
                            exc.status,
                        )

    async def audit(self, body: dict[str, Any]) -> str:
        """Check one finished job, repair what is safe, and record the verdict. Returns it."""
        meta, spec = body["metadata"], body["spec"]
        status = copy.deepcopy(body.get("status") or {})
        svc = self.reconciler.svc
        found = findings(status, spec["price"], await fetch_records(svc, meta["uid"]))
        notes, verdict = [], "consistent"
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
        previous = status.get("audit") or {}
        if found or previous.get("verdict") is None:
            status["audit"] = {"verdict": verdict, "findings": notes, "checkedAt": saga.iso(saga.now())}
            updated = await self.reconciler.kube.patch_status(
                meta["namespace"], meta["name"], {"audit": status["audit"]}
            )
            self.reconciler.remember(updated)
        return verdict
