"""The reconciler: one pass per job at a time, status written once per pass.

kopf's watch feeds :meth:`Reconciler.observe` with every change; a job's key goes on a work
queue (deduplicated: a job is never reconciled by two workers at once, and an event that arrives
mid-pass queues one more pass). A pass reads the job's saga log, runs forward steps until one
must wait, fails or needs a retry, and writes the resulting status in one patch.

Waiting costs no coroutine per job: retries sit in one timer heap, and jobs waiting on the GPU
are followed by one bulk task-state read per interval for all of them (:meth:`_follow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import heapq
import logging
import time
from typing import Any

from aijobs_services.kit.client import Ambiguous, Refused, ServiceError

from aijobs_operator import saga
from aijobs_operator.config import OperatorSettings
from aijobs_operator.kube import ApiException, KubeWriter
from aijobs_operator.metrics import METRICS
from aijobs_operator.steps import DO, UNDO, Done, Job, Services, StepFailed, Wait

log = logging.getLogger("aijobs.operator")

Key = tuple[str, str]  # (namespace, name)


class Reconciler:
    def __init__(self, cfg: OperatorSettings, services: Services, kube: KubeWriter) -> None:
        self.cfg = cfg
        self.svc = services
        self.kube = kube
        self.cache: dict[Key, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, Any]] = {}  # job uid -> AI task, from the bulk follower
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._running: set[Key] = set()
        self._again: set[Key] = set()
        self._timers: list[tuple[float, Key]] = []
        self._timer_wakeup = asyncio.Event()
        self._idle = asyncio.Event()

    # -- feeding ------------------------------------------------------------------------------
    def observe(self, event_type: str, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            self.cache.pop(key, None)
            return
        current = self.cache.get(key)
        if current is not None and _rv(current) >= _rv(body):
            return  # our own write coming back, or older: nothing new to act on
        self.cache[key] = body
        self.enqueue(key)

    def enqueue(self, key: Key) -> None:
        if key in self._running:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def later(self, key: Key, delay: float) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, key))
        self._timer_wakeup.set()

    # -- running ------------------------------------------------------------------------------
    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(self.cfg.workers):
                group.create_task(self._worker())
            group.create_task(self._timer_loop())
            group.create_task(self._follow_loop())

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._running.add(key)
            try:
                await self.reconcile(key)
            except Exception:  # one job's bug must not stop the others; retry it later
                log.exception("reconcile %s/%s failed", *key)
                self.later(key, 5.0)
            finally:
                self._running.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.enqueue(key)

    async def _timer_loop(self) -> None:
        while True:
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, key = heapq.heappop(self._timers)
                if key in self.cache:
                    self.enqueue(key)
            timeout = (self._timers[0][0] - now) if self._timers else None
            self._timer_wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_wakeup.wait(), timeout)

    async def _follow_loop(self) -> None:
        while True:
            try:
                await self._follow()
            except ServiceError as exc:
                log.warning("following task states: %s", exc)
            await asyncio.sleep(self.cfg.follow_interval_seconds)

    async def _follow(self) -> None:
        """One bulk read of the AI service for every job waiting on its task."""
        waiting: dict[str, Key] = {}
        phases: dict[str, int] = {}
        for key, body in list(self.cache.items()):
            status = body.get("status") or {}
            phase = status.get("phase") or "New"
            phases[phase] = phases.get(phase, 0) + 1
            if saga.succeeded(status, "schedule") and not saga.succeeded(status, "process"):
                waiting[body["metadata"]["uid"]] = key
        for phase in (
            "New",
            "Pending",
            "Charged",
            "Uploaded",
            "Scheduled",
            "Processed",
            "Delivered",
            "Compensating",
            "Failed",
        ):
            METRICS.jobs.labels(phase).set(phases.get(phase, 0))
        uids = list(waiting)
        for start in range(0, len(uids), 1000):
            METRICS.follow_requests.inc()
            result = await self.svc.ai.json(
                "POST", "/v1/tasks/query", json={"jobIds": uids[start : start + 1000]}
            )
            for task in result["items"]:
                before = self.tasks.get(task["jobId"])
                self.tasks[task["jobId"]] = task
                if before is None or (before["state"], before["updatedAt"]) != (
                    task["state"],
                    task["updatedAt"],
                ):
                    self.enqueue(waiting[task["jobId"]])

    # -- one pass -----------------------------------------------------------------------------
    async def reconcile(self, key: Key) -> None:
        body = self.cache.get(key)
        if body is None:
            return
        meta = body["metadata"]
        status = copy.deepcopy(body.get("status") or {})
        if meta.get("deletionTimestamp"):
            await self._finalize(body, status)
            return
        if status.get("phase") in saga.TERMINAL:
            return
        if saga.FINALIZER not in (meta.get("finalizers") or []):
            body = self.remember(await self.kube.add_finalizer(body, saga.FINALIZER))
            meta = body["metadata"]
        job = self._job(body, status)
        if not status.get("phase"):
            await self._claim(body, job)
            self.enqueue(key)  # the first step runs in a pass of its own, after the claim is stored
            return
        if status["phase"] == "Compensating":
            await self._compensate(body, job, status.get("message") or "compensating")
            return
        await self._forward(body, job)

    def _job(self, body: dict[str, Any], status: dict[str, Any]) -> Job:
        meta, spec = body["metadata"], body["spec"]
        deadline = saga.effective_deadline(spec, meta["creationTimestamp"], self.cfg.default_deadline_seconds)
        return Job(
            meta["uid"], meta["namespace"], meta["name"], spec, status, deadline, self.tasks.get(meta["uid"])
        )

    def remember(self, body: dict[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        self.cache[(meta["namespace"], meta["name"])] = body
        return body

    async def _write(self, body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        try:
            updated = await self.kube.patch_status(meta["namespace"], meta["name"], status)
        except ApiException as exc:
            if exc.status == 404:
                return body
            raise
        return self.remember(updated)

    async def _claim(self, body: dict[str, Any], job: Job) -> None:
        """Accept the job: from this write on its spec is frozen (the CRD's rule), and only then
        does any step act on it."""
        gen = body["metadata"]["generation"]
        status = job.status
        status.update(
            phase="Pending",
            observedGeneration=gen,
            startedAt=saga.iso(saga.now()),
            deadline=saga.iso(job.deadline),
            message="accepted; charging",
        )
        saga.set_condition(status, "Reconciling", "True", "Accepted", "the saga is running", gen)
        saga.set_condition(status, "Stalled", "False", "Accepted", "", gen)
        saga.set_condition(status, "Complete", "False", "InProgress", "", gen)
        saga.set_condition(status, "Failed", "False", "InProgress", "", gen)
        await self._write(body, status)
        await self.kube.event(body, "Normal", "Accepted", f"job accepted; deadline {saga.iso(job.deadline)}")

    async def _forward(self, body: dict[str, Any], job: Job) -> None:
        status, gen = job.status, body["metadata"]["generation"]
        key = (job.namespace, job.name)
        policy = job.spec.get("retryPolicy") or {}
        changed = False
        for step in saga.STEPS:
            if saga.succeeded(status, step.name):
                continue
            if not saga.committed_to_deliver(status) and saga.now() > job.deadline:
                METRICS.past_deadline.inc()
                await self._compensate(
                    body,
                    job,
                    f"the deadline {saga.iso(job.deadline)} passed before delivery",
                    reason="DeadlineExceeded",
                )
                return
            rec = saga.record(status, step.name)
            rec.setdefault("key", saga.idempotency_key(job.uid, step.name))
            rec.setdefault("startedAt", saga.iso(saga.now()))
            started = time.perf_counter()
            try:
                outcome = await DO[step.name](job, self.svc, self.cfg)
            except StepFailed as exc:
                METRICS.step_seconds.labels(step.name, "failed").observe(time.perf_counter() - started)
                rec.update(state="Failed", lastError=exc.message, finishedAt=saga.iso(saga.now()))
                rec["attempts"] += 1
                if not saga.past_the_point_of_no_return(status):
                    await self._compensate(body, job, exc.message, reason=exc.reason)
                    return
                changed |= self._retry(key, rec, step.name, status, gen, policy, None, exc.message)
                break
            except Ambiguous as exc:
                METRICS.step_seconds.labels(step.name, "unknown").observe(time.perf_counter() - started)
                rec["attempts"] += 1
                rec["lastError"] = str(exc)
                if step.compensable and rec["attempts"] >= policy.get("maxAttempts", 10):
                    await self._compensate(
                        body,
                        job,
                        f"{step.name} gave up after {rec['attempts']} attempts: {exc}",
                        reason="RetriesExhausted",
                    )
                    return
                changed |= self._retry(key, rec, step.name, status, gen, policy, exc.retry_after, str(exc))
                break
            except Refused as exc:  # a refusal a step did not expect: a definite failure
                rec.update(state="Failed", lastError=str(exc), finishedAt=saga.iso(saga.now()))
                rec["attempts"] += 1
                if not saga.past_the_point_of_no_return(status):
                    await self._compensate(body, job, str(exc), reason="Refused")
                    return
                changed |= self._retry(key, rec, step.name, status, gen, policy, None, str(exc))
                break
            METRICS.step_seconds.labels(step.name, "ok").observe(time.perf_counter() - started)
            if isinstance(outcome, Wait):
                changed |= saga.set_condition(
                    status, step.condition, "False", outcome.reason, outcome.message, gen
                )
                changed |= _set(status, "message", outcome.message)
                # The follower wakes the job when its task changes; this timer makes sure the
                # deadline is noticed even if nothing ever changes.
                self.later(key, max(0.5, (job.deadline - saga.now()).total_seconds() + 0.5))
                break
            assert isinstance(outcome, Done)
            rec["attempts"] += 1
            rec.update(state="Succeeded", finishedAt=saga.iso(saga.now()), remoteIds=outcome.remote_ids)
            rec.pop("lastError", None)
            if step.phase:
                status["phase"] = step.phase
            saga.set_condition(status, step.condition, "True", "Done", outcome.message, gen)
            status["message"] = outcome.message
            changed = True
            await self.kube.event(body, "Normal", step.condition, outcome.message)
            if step.checkpoint:
                body = await self._write(body, status)
                changed = False
        else:
            self._finish(status, gen, "Delivered", "Delivered", status.get("message") or "delivered")
            changed = True
            METRICS.outcomes.labels("Delivered").inc()
        if changed:
            await self._write(body, status)

    def _retry(
        self,
        key: Key,
        rec: dict[str, Any],
        step: str,
        status: dict[str, Any],
        gen: int,
        policy: dict[str, Any],
        retry_after: float | None,
        error: str,
    ) -> bool:
        METRICS.retries.labels(step).inc()
        delay = saga.backoff(
            rec["attempts"],
            policy.get("initialBackoffSeconds", 1),
            policy.get("maxBackoffSeconds", 60),
            retry_after,
        )
        self.later(key, delay)
        saga.set_condition(
            status,
            "Reconciling",
            "True",
            "Retrying",
            f"{step}: attempt {rec['attempts']} had an unknown outcome ({error}); retrying in "
            f"{delay:.0f}s with the same key",
            gen,
        )
        status["message"] = f"{step} retrying: {error}"
        return True

    def _finish(self, status: dict[str, Any], gen: int, phase: str, reason: str, message: str) -> None:
        status.update(phase=phase, completedAt=saga.iso(saga.now()), message=message, observedGeneration=gen)
        delivered = phase == "Delivered"
        saga.set_condition(status, "Complete", "True" if delivered else "False", reason, message, gen)
        saga.set_condition(status, "Failed", "False" if delivered else "True", reason, message, gen)
        saga.set_condition(status, "Reconciling", "False", reason, "", gen)
        saga.set_condition(status, "Stalled", "False", reason, "", gen)

    async def _undo_all(self, job: Job, status: dict[str, Any]) -> str | None:
        """Run every compensation that has not succeeded; returns the first error, if any."""
        for name, undo in UNDO:
            if saga.succeeded(status, name, "compensations"):
                continue
            rec = saga.record(status, name, "compensations")
            rec.setdefault("key", saga.idempotency_key(job.uid, name))
            rec.setdefault("startedAt", saga.iso(saga.now()))
            rec["attempts"] += 1
            try:
                message = await undo(job, self.svc)
            except ServiceError as exc:
                rec["lastError"] = str(exc)
                return f"{name}: {exc}"
            rec.update(state="Succeeded", finishedAt=saga.iso(saga.now()), lastError=message)
        return None

    async def _compensate(self, body: dict[str, Any], job: Job, why: str, reason: str | None = None) -> None:
        status, gen = job.status, body["metadata"]["generation"]
        key = (job.namespace, job.name)
        first = status.get("phase") != "Compensating"
        if first:
            METRICS.compensations.labels(reason or "Unknown").inc()
            status.update(phase="Compensating", message=why)
            saga.set_condition(status, "Reconciling", "True", reason or "Compensating", why, gen)
            await self.kube.event(body, "Warning", reason or "Compensating", f"compensating: {why}")
        error = await self._undo_all(job, status)
        if error is not None:
            attempts = max(r["attempts"] for r in status["compensations"])
            delay = saga.backoff(attempts, 1, 60)
            saga.set_condition(
                status,
                "Stalled",
                "True",
                "CompensationRetrying",
                f"{error}; retrying in {delay:.0f}s (a refund is delayed, never skipped)",
                gen,
            )
            self.later(key, delay)
            await self._write(body, status)
            return
        saga.set_condition(
            status,
            "Compensated",
            "True",
            "Compensated",
            "; ".join(r.get("lastError", "") for r in status["compensations"]),
            gen,
        )
        failure = status.get("message") or why
        self._finish(status, gen, "Failed", _reason(status, reason), failure)
        METRICS.outcomes.labels("Failed").inc()
        await self._write(body, status)
        await self.kube.event(body, "Warning", "Failed", f"job failed and was compensated: {failure}")

    async def _finalize(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        """The job is being deleted: undo whatever it still holds (nothing, if it was delivered or
        already compensated), then let it go."""
        if saga.FINALIZER not in (body["metadata"].get("finalizers") or []):
            return
        if status.get("phase") not in saga.TERMINAL and status.get("phase"):
            job = self._job(body, status)
            error = await self._undo_all(job, status)
            if error is not None:
                meta = body["metadata"]
                self.later((meta["namespace"], meta["name"]), saga.backoff(3, 1, 30))
                return
            METRICS.compensations.labels("Deleted").inc()
        await self.kube.remove_finalizer(body, saga.FINALIZER)


def _set(status: dict[str, Any], field: str, value: Any) -> bool:
    if status.get(field) == value:
        return False
    status[field] = value
    return True


def _reason(status: dict[str, Any], reason: str | None) -> str:
    if reason:
        return reason
    for cond in status.get("conditions", []):
        if cond["type"] == "Reconciling" and cond.get("reason") not in (None, "Accepted", "Retrying"):
            return str(cond["reason"])
    return "Failed"


def _rv(body: dict[str, Any]) -> int:
    try:
        return int(body["metadata"].get("resourceVersion", 0))
    except ValueError:
        return 0
