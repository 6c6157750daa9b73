"""The reconciler: one pass per job at a time, status written once per pass.

kopf's watch feeds :meth:`Reconciler.observe` with every change; a job's key goes on a work
queue (deduplicated: a job is never reconciled by two workers at once, and an event that arrives
mid-pass queues one more pass). A pass asks the pure core (:mod:`aijobs_operator.core`) what to do
next, carries it out, feeds the outcome back, and stops when the core says wait; the resulting
log is written in one patch (earlier only where the core asks: a stored result, and capture's
attempt, which is written *before* the call). A delivered job costs four API writes: the
finalizer, the log after its first pass, capture's write-ahead, the delivered log; Events only
for passes with a warning.

Waiting costs no coroutine per job: retries sit in one timer heap, and jobs waiting on the GPU
are followed by one bulk task-state read per interval for all of them (:meth:`_follow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from aijobs.api.ai import JobTaskCounts, Task, TaskCounts, TaskCountsQuery, TaskList, TaskQuery
from aijobs.api.rules import MAX_BATCH_IMAGES
from aijobs.api.v1alpha1 import AIImageJobSpec, AIImageJobStatus, Phase
from aijobs.wire.client import Ambiguous, Refused, ServiceError
from aijobs_operator import core
from aijobs_operator.config import OperatorSettings
from aijobs_operator.core import Saga
from aijobs_operator.kube import ApiException, KubeWriter, stale
from aijobs_operator.metrics import METRICS
from aijobs_operator.saga import FINALIZER, SAGA, now
from aijobs_operator.steps import Call, Job, Services, StepFailed

log = logging.getLogger("aijobs.operator")

Key = tuple[str, str]  # (namespace, name)


class Reconciler:
    def __init__(
        self,
        cfg: OperatorSettings,
        services: Services,
        kube: KubeWriter,
        clock: Callable[[], dt.datetime] = now,
        saga: Saga[Call] = SAGA,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.saga = saga
        self.svc = services
        self.kube = kube
        self.clock = clock
        self.monotonic = monotonic  # the timers' clock (the simulator's is virtual)
        self._policy = core.Policy(
            default_deadline=dt.timedelta(seconds=cfg.default_deadline_seconds),
            batch_default_deadline=dt.timedelta(seconds=cfg.batch_default_deadline_seconds),
            hold_grace=dt.timedelta(seconds=cfg.hold_grace_seconds),
        )
        self.cache: dict[Key, dict[str, Any]] = {}
        self.tasks: dict[str, Task] = {}  # job uid -> AI task, from the bulk follower and the steps
        # A batch job's task counts (job uid -> counts), read by the follower in bulk, and when
        # it last woke the job for them (monotonic seconds): a batch's progress reaches its status
        # at most once per ``batch_progress_seconds``, so its writes grow with time, not images.
        self.counts: dict[str, JobTaskCounts] = {}
        # What a batch's images came to (job uid -> what its process step read), kept for its
        # delivery a few seconds on, which then need not read every task, input and result of
        # the job again; while the job is Scheduled or Processed, at most ENDED_IMAGES images in all.
        self.ended: dict[str, core.Ended] = {}
        self._progress_due: dict[str, dt.datetime] = {}  # when a batch's progress pass is set for
        self._progress_since: dict[str, dt.datetime] = {}  # when this process first followed it
        self._gone: set[str] = set()  # uids of deleted jobs (a job's name may be reused, its uid never)
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
            self._gone.add(meta["uid"])
            return
        if meta["uid"] in self._gone:
            return  # a late copy of a job already gone: acting on it would undo a finished job
        current = self.cache.get(key)
        if current is not None and _rv(current) >= _rv(body):
            return  # our own write coming back, or older: nothing new to act on
        self.cache[key] = body
        self.enqueue(key)

    @property
    def gone(self) -> set[str]:
        """The uids of the jobs this process saw deleted."""
        return self._gone

    def enqueue(self, key: Key) -> None:
        if key in self._running:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def later(self, key: Key, delay: float) -> None:
        heapq.heappush(self._timers, (self.monotonic() + delay, key))
        self._timer_wakeup.set()

    def wake_due(self) -> float | None:
        """Queue each job whose timer is up (one gone from the cache since is let be), and say
        in how many seconds the next timer is up (None: no timer is set)."""
        now = self.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, key = heapq.heappop(self._timers)
            if key in self.cache:
                self.enqueue(key)
        return (self._timers[0][0] - now) if self._timers else None

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
            timeout = self.wake_due()
            self._timer_wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_wakeup.wait(), timeout)

    def drain(self) -> list[Key]:
        """Take every queued job off the queue, in order, without running them (for a driver
        that runs passes itself: the deterministic simulator)."""
        keys = []
        while self._queued:
            key = self._queue.get_nowait()
            self._queued.discard(key)
            keys.append(key)
        return keys

    async def _follow_loop(self) -> None:
        while True:
            try:
                await self.follow()
            except ServiceError as exc:
                log.warning("following task states: %s", exc)
            await asyncio.sleep(self.cfg.follow_interval_seconds)

    async def follow(self) -> None:
        """One bulk read of the AI service for every job waiting on its task."""
        waiting: dict[str, Key] = {}
        batches: dict[str, tuple[Key, int | None]] = {}  # uid -> (key, maxFailedImages)
        phases: dict[str, int] = {}
        delivering: set[str] = set()  # uids of the jobs whose delivery is still to come
        for key, body in list(self.cache.items()):
            status = body.get("status") or {}
            phase = status.get("phase") or "New"
            phases[phase] = phases.get(phase, 0) + 1
            if phase in ("Scheduled", "Processed"):
                delivering.add(body["metadata"]["uid"])
            if phase == "Scheduled":
                spec = body.get("spec") or {}
                if (spec.get("input") or {}).get("batch"):
                    batches[body["metadata"]["uid"]] = (key, spec.get("maxFailedImages"))
                else:
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
        for uid in [u for u in self.ended if u not in delivering]:
            del self.ended[uid]  # delivered, failed or gone
        for uid in [u for u in self.tasks if u not in waiting]:
            del self.tasks[uid]  # its job moved on or is gone; process() asks AI if it ever must
        uids = list(waiting)
        for start in range(0, len(uids), 1000):
            METRICS.follow_requests.inc()
            found = await self.svc.ai.fetch(
                TaskList, "POST", "/v1/tasks/query", json=TaskQuery(job_ids=uids[start : start + 1000]).wire()
            )
            for task in found.items:
                task = _slim_task(task)
                before = self.tasks.get(task.job_id)
                self.tasks[task.job_id] = task
                if before is None or (before.state, before.updated_at) != (task.state, task.updated_at):
                    self.enqueue(waiting[task.job_id])
        await self._follow_batches(batches)

    async def _follow_batches(self, batches: dict[str, tuple[Key, int | None]]) -> None:
        """One counts read for every batch waiting on its images. A batch whose counts moved gets
        one pass when its progress interval is up (:func:`core.progress_interval`; each pass is
        one status write), and one at once when its last image ends or its failures pass its
        ``maxFailedImages``."""
        for uid in [u for u in self.counts if u not in batches]:
            del self.counts[uid]
            self._progress_due.pop(uid, None)
            self._progress_since.pop(uid, None)
        uids = list(batches)
        for start in range(0, len(uids), 1000):
            METRICS.follow_requests.inc()
            query = TaskCountsQuery(job_ids=uids[start : start + 1000]).wire()
            found = await self.svc.ai.fetch(TaskCounts, "POST", "/v1/tasks/counts", json=query)
            for counts in found.items:
                before = self.counts.get(counts.job_id)
                self.counts[counts.job_id] = counts
                if before == counts:
                    continue
                key, limit = batches[counts.job_id]
                now = self.clock()
                # Ended, or past maxFailedImages with images to cancel: at once (no run_at here:
                # images waiting for theirs are not news).
                if core.batch_stage(counts, limit, None, now) in ("ended", "cancel-rest"):
                    self.enqueue(key)
                    continue
                # Progress only: one pass (one status write) when the interval is up, whatever
                # changed meanwhile; it reads the latest counts.
                due = self._progress_due.get(counts.job_id)
                if due is None or now >= due:
                    since = self._progress_since.setdefault(counts.job_id, now)
                    running = (now - since).total_seconds()
                    every = core.progress_interval(self.cfg.batch_progress_seconds, running)
                    self._progress_due[counts.job_id] = now + dt.timedelta(seconds=every)
                    self.later(key, every)

    # -- one pass -----------------------------------------------------------------------------
    async def reconcile(self, key: Key) -> None:
        """Carry out what the saga's plan decides, feeding each outcome to its settle,
        until the job must wait; write the log once at the end (and where the core says earlier)."""
        body = self.cache.get(key)
        if body is None:
            return
        meta = body["metadata"]
        deleting = bool(meta.get("deletionTimestamp"))
        if deleting and FINALIZER not in (meta.get("finalizers") or []):
            return
        status_in = body.get("status") or {}
        if not deleting and status_in.get("phase") in core.TERMINAL:
            return
        if not deleting and FINALIZER not in (meta.get("finalizers") or []):
            try:
                body = self.remember(await self.kube.add_finalizer(body, FINALIZER))
            except ApiException as exc:
                if exc.status != 404 and not stale(exc):
                    raise
                # Deleted, or changed since the cache's copy: nothing was done, and the watch
                # brings the news, which queues the job; the timer is for a watch that does
                # not. A race, not an error: no traceback in the operator's log.
                log.info("%s/%s changed before its finalizer was added (%s)", *key, exc.status)
                self.later(key, 5.0)
                return
        try:
            job = self._view(body)
        except ValidationError as exc:
            await self._refuse(body, exc)
            return
        written = job.status
        events: list[core.Event] = []
        try:
            must_write = False  # the log must reach the API server before the next call
            for _ in range(4 * len(self.saga.steps) + 8):  # every action moves the log on; bound it
                now = self.clock()
                action = self.saga.plan(job, now, self.policy(job))
                if isinstance(action, core.Accept | core.Compensate | core.Finish):
                    _count(job.status, action.status, job.spec.price)
                    job = job.with_status(action.status)
                    events.extend(action.events)
                    must_write |= action.persist
                    continue
                if isinstance(action, core.RunStep | core.RunUndo):
                    job = job.with_status(action.status)
                    if must_write or (isinstance(action, core.RunStep) and action.write_ahead):
                        # A stored result and an irreversible call's attempt are on record
                        # before the next call is made (one write covers both).
                        body = await self._write(body, job.status)
                        written, must_write = job.status, False
                    outcome = await self._carry_out(job, action, now)
                    settled = self.saga.settle(job, action, outcome, self.clock(), self.policy(job))
                    _count(job.status, settled.status, job.spec.price)
                    job = job.with_status(settled.status)
                    events.extend(settled.events)
                    must_write |= settled.checkpoint
                    if settled.wait is not None:
                        self._wake(key, settled.wait.until)
                        break
                    continue
                if isinstance(action, core.Wait):
                    self._wake(key, action.until)
                elif isinstance(action, core.LetGo):
                    if job.status != written:
                        body = await self._write(body, job.status)
                        written = job.status
                    await self.kube.remove_finalizer(body, FINALIZER)
                break
            if job.status != written:
                body = await self._write(body, job.status)
        except Superseded:
            events.clear()  # nothing of this pass is on record: the next one tells it
            self.later(key, 1.0)  # the watch brings the newer job; this is in case it does not
        finally:
            # An Event is an API write as costly as a status patch: a pass that went as planned
            # says so in the conditions alone; one with a warning tells its whole pass, once.
            if any(e.type == "Warning" for e in events):
                await self.kube.event(body, *_one_event(events))

    async def _refuse(self, body: dict[str, Any], exc: ValidationError) -> None:
        """A spec this operator can't read (the API server's schema and the models disagree: an
        upgrade gone wrong). Never accepted, it is failed at once and nothing is charged; once
        accepted it can't be unread, so it waits, loudly, for an operator that reads it."""
        meta = body["metadata"]
        why = f"the spec does not match this operator's model: {exc.errors()[0]['msg']}"
        if (body.get("status") or {}).get("phase"):
            log.error("%s/%s: %s", meta["namespace"], meta["name"], why)
            self.later((meta["namespace"], meta["name"]), 60.0)
            return
        status = core.refuse_unreadable(int(meta.get("generation") or 1), self.clock(), why)
        try:
            body = await self._write(body, status)
        except Superseded:
            return  # edited meanwhile: the next pass reads the new spec
        await self.kube.event(body, "Warning", "InvalidSpec", why)
        if meta.get("deletionTimestamp"):
            await self.kube.remove_finalizer(body, FINALIZER)

    def policy(self, job: core.JobView) -> core.Policy:
        return self._policy.for_job(job.spec)

    def _view(self, body: dict[str, Any], status: AIImageJobStatus | None = None) -> core.JobView:
        meta = body["metadata"]
        return core.JobView(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            generation=int(meta.get("generation") or 1),
            created=core.parse(meta["creationTimestamp"]),
            deleting=bool(meta.get("deletionTimestamp")),
            spec=AIImageJobSpec.model_validate(body["spec"]),
            status=status
            if status is not None
            else AIImageJobStatus.model_validate(body.get("status") or {}),
        )

    async def _carry_out(
        self, job: core.JobView, action: core.RunStep | core.RunUndo, now: dt.datetime
    ) -> core.Outcome:
        """Run one step or compensation and sort what happened into an outcome the core knows.
        Only what is known to be ambiguous is retried; anything a step did not expect is a
        definite failure of this job (compensated, with the reason said), never money held."""
        call = Call(
            Job(
                job.uid,
                job.namespace,
                job.name,
                job.spec,
                job.status,
                self.policy(job),
                now,
                self.tasks.get(job.uid),
                job.created,
                self.counts.get(job.uid),
                self.ended.get(job.uid),
            ),
            self.svc,
            self.cfg,
        )
        run = (
            self.saga.undo(action.name).do
            if isinstance(action, core.RunUndo)
            else self.saga.step(action.name).do
        )
        started = time.perf_counter()
        result = "ok"
        try:
            outcome = await run(call)
            if outcome.task is not None:  # what the step learned of the job's task
                self.tasks[job.uid] = _slim_task(outcome.task)
            if isinstance(outcome, core.Done) and outcome.ended is not None:
                keep_ended(self.ended, job.uid, outcome.ended)
            return outcome
        except StepFailed as exc:
            result = "failed"
            return core.Definite(exc.reason, exc.message)
        except Ambiguous as exc:
            result = "unknown"
            METRICS.retries.labels(action.name).inc()
            return core.Unknown(str(exc), exc.retry_after)
        except Refused as exc:  # a refusal a step did not expect: a definite failure
            result = "failed"
            return core.Definite("Refused", str(exc))
        except Exception as exc:  # a bug or a surprise: this job fails cleanly, the others go on
            result = "error"
            log.exception("%s of %s/%s raised", action.name, job.namespace, job.name)
            return core.Definite(
                "StepError", f"{action.name} failed unexpectedly: {type(exc).__name__}: {exc}"
            )
        finally:
            METRICS.step_seconds.labels(action.name, result).observe(time.perf_counter() - started)

    def _wake(self, key: Key, until: dt.datetime | None) -> None:
        """A timer for ``until`` (None: the follower wakes the job when its task changes)."""
        if until is None:
            return
        delay = max(0.05, (until - self.clock()).total_seconds() + 0.05)
        self.later(key, delay)

    def remember(self, body: dict[str, Any]) -> dict[str, Any]:
        body = slim(body)  # our own write's answer, slimmed as a watched job is
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if meta.get("uid") not in self._gone:  # a write that crossed the job's deletion
            before = self.cache.get(key)
            self.cache[key] = body
            if before is not None and _changed_by_others(before, body):
                # The write's answer carries a change made meanwhile by someone else (a user's
                # deletion): the watch brings that change as older than this answer, so
                # observe() drops it, and the pass that wrote did not see it. Without a pass of
                # its own, a job deleted as its pass finished it would keep its finalizer forever.
                self.enqueue(key)
        return body

    async def _write(self, body: dict[str, Any], status: AIImageJobStatus) -> dict[str, Any]:
        """Write the log. The first write of a job's log is its acceptance: it is made only if
        the job is still the one the pass read (a spec edited meanwhile is never accepted
        unseen); on a conflict the pass ends unwritten, its calls replayed by the next one."""
        meta = body["metadata"]
        first = not (body.get("status") or {}).get("phase")
        try:
            updated = await self.kube.patch_status(
                meta["namespace"],
                meta["name"],
                dump_status(status),
                resource_version=meta.get("resourceVersion") if first else None,
            )
        except ApiException as exc:
            if exc.status == 404:
                return body
            if exc.status == 409 and first:
                raise Superseded from exc
            raise
        return self.remember(updated)


# The images whose outcomes :attr:`Reconciler.ended` keeps, in all: one of the largest batch
# (~30 MB); another batch that ends meanwhile has the older one forgotten, read again by its
# delivery.
ENDED_IMAGES = MAX_BATCH_IMAGES


def keep_ended(kept: dict[str, core.Ended], uid: str, ended: core.Ended) -> None:
    """Keep what a batch's images came to, forgetting the oldest kept past :data:`ENDED_IMAGES`
    (the newest always stays)."""
    kept.pop(uid, None)
    kept[uid] = ended
    images = sum(e.final.total for e in kept.values())
    while len(kept) > 1 and images > ENDED_IMAGES:
        images -= kept.pop(next(iter(kept))).final.total


def _changed_by_others(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether a job's newer copy was deleted, or its spec changed, since the older one."""
    was, now = before["metadata"], after["metadata"]
    return bool(now.get("deletionTimestamp")) != bool(was.get("deletionTimestamp")) or now.get(
        "generation"
    ) != was.get("generation")


class Superseded(Exception):
    """The job changed between a pass's read and its first write: the pass is dropped, and
    the next one (woken by the change itself) starts again from the newer job."""


def _count(before: AIImageJobStatus, after: AIImageJobStatus, price: int) -> None:
    """Metrics of a transition: a compensation begun (by its reason), a job ended (by its phase),
    and the credits that ending moved: charged for a delivery, returned by a released hold."""
    if after.phase == before.phase:
        return
    if after.phase == Phase.COMPENSATING:
        reason = next((c.reason for c in after.conditions if c.type == "Reconciling"), None)
        METRICS.compensations.labels(reason or "Unknown").inc()
    elif after.phase in core.TERMINAL:
        METRICS.outcomes.labels(str(after.phase)).inc()
        captured = any(s.name == "capture" and s.state == "Succeeded" for s in after.steps)
        if captured:  # a single job's price, or a batch's price for each image delivered
            METRICS.credits.labels("charged").inc(price * (after.batch.succeeded if after.batch else 1))
        elif any(c.name == "release-holds" and c.state == "Succeeded" for c in after.compensations) and any(
            s.name == "charge" and s.state == "Succeeded" for s in after.steps
        ):
            METRICS.credits.labels("returned").inc(price)


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def slim(body: dict[str, Any]) -> dict[str, Any]:
    """A copy of a watched job without what the operator never reads: ``managedFields`` (more
    than half of a delivered job's size: every status field the operator ever wrote), kubectl's
    last-applied annotation (a second copy of the spec, inline image included) and an inline
    image Storage already holds; its names and short values shared with every other job's
    (:func:`_shared`). The cache holds every job in flight, so this is most of the operator's
    memory (``bench/memory.py`` prints what each part of an entry weighs)."""
    shallow = dict(body)
    shallow["metadata"] = _drop_unread(dict(body["metadata"]))  # dropped before the copy
    _drop_stored_input(shallow)
    copied: dict[str, Any] = _shared(shallow)
    return copied


def _shared(value: Any) -> Any:
    """A deep copy of a JSON document whose keys and short strings (condition types, reasons,
    states, times) are interned: ten thousand logs decoded one by one would each hold their own
    copies of the same few hundred strings, half of what they weigh."""
    if isinstance(value, dict):
        return {sys.intern(k): _shared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shared(v) for v in value]
    if isinstance(value, str) and len(value) <= 64:
        return sys.intern(value)
    return value


# What stands in the cache for an inline image once Storage holds it (valid base64, 3 bytes).
STORED_INLINE = "AAAA"


def _drop_stored_input(body: dict[str, Any]) -> None:
    """Replace, in a body this process owns, an inline image Storage already holds by a token:
    up to 512 KiB per job that no pass reads again (the spec is frozen, the upload on record;
    only a body whose own log says so is changed, and the API server keeps the image)."""
    spec = body.get("spec") or {}
    inline = (spec.get("input") or {}).get("inline")
    if not inline or inline.get("data") == STORED_INLINE:
        return
    steps = (body.get("status") or {}).get("steps") or []
    if any(s.get("name") == "upload" and s.get("state") == "Succeeded" for s in steps):
        body["spec"] = {**spec, "input": {**spec["input"], "inline": {**inline, "data": STORED_INLINE}}}


def _drop_unread(meta: dict[str, Any]) -> dict[str, Any]:
    """Remove, from metadata this process owns, what :func:`slim` leaves out."""
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return meta


def _slim_task(task: Task) -> Task:
    """The task as the follower keeps it for a waiting job: without its parameters and result
    document, which the process step never reads (the cache holds one per job in flight)."""
    return task.model_copy(update={"params": {}, "result": None})


def _one_event(events: list[core.Event]) -> tuple[str, str, str]:
    """The events of a pass with a warning as one Warning: its reason the last one's (where the
    job now stands), its message each step's in order."""
    return "Warning", events[-1].reason, "; ".join(f"{e.reason}: {e.message}" for e in events)


def dump_status(status: AIImageJobStatus) -> dict[str, Any]:
    """The log as the API server stores it (camelCase, RFC 3339 times, no empty fields)."""
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


def _rv(body: dict[str, Any]) -> int:
    try:
        return int(body["metadata"].get("resourceVersion", 0))
    except ValueError:
        return 0
