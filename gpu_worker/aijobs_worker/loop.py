"""The lease loop: lease -> heartbeat -> fetch -> decode -> infer -> encode -> **spool (fsync)** ->
upload (key derived from the job, so a re-run stores no second result) -> complete, the leased
batch's completions in one request (``POST /v1/bulk/completions``, each under the key its single
completion has always had).

Storage down after inference: the result waits in the spool while uploads retry with backoff and
heartbeats keep the lease; when Storage returns, upload and complete. On restart the spool is
drained before anything new is leased. SIGTERM: stop leasing, hand back what was not started,
finish what was, flush the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aijobs.api.ai import (
    Failure,
    Heartbeat,
    LeasedTask,
    LeaseRequest,
    Leases,
    Task,
    TaskCompletion,
)
from aijobs.api.storage import StoredObject
from aijobs.wire.bulk import Batcher
from aijobs.wire.client import Ambiguous, Refused, ServiceClient, ServiceError
from aijobs_worker import codec
from aijobs_worker.config import WorkerSettings
from aijobs_worker.health import Pulse
from aijobs_worker.runner import Item, Runner
from aijobs_worker.spool import Entry, Spool
from aijobs_worker.telemetry import IMAGES, QUEUE_WAIT, STAGE_SECONDS, UPLOAD_RETRIES

log = logging.getLogger("aijobs.worker")

# Spooled results uploaded at once, and completed in one request, when the spool is drained.
_DRAIN_BATCH = 64


@dataclass
class Held:
    """A task this worker holds a lease on: leased now, or found in the spool at start."""

    task_id: str
    lease_token: str
    lost: bool = False  # the lease was taken over: stop caring about this task
    cancelled: bool = False


def result_key(job_id: str, item: int | None = None) -> str:
    """One key per job, or per image of a batch job: every run of its task uploads under it, so
    at most one result exists for each."""
    return f"result:{job_id}" if item is None else f"result:{job_id}:{item}"


class Worker:
    def __init__(
        self,
        cfg: WorkerSettings,
        ai: ServiceClient,
        storage: ServiceClient,
        runner: Runner,
        spool: Spool,
        worker_id: str,
        pulse: Pulse | None = None,
    ) -> None:
        self.cfg, self.ai, self.storage, self.runner, self.spool = cfg, ai, storage, runner, spool
        self.worker_id = worker_id
        # Every turn of the loop beats here, with how long its next stage may take: /healthz.
        self.pulse = pulse or Pulse(cfg.stall_grace_seconds)
        self.wedge_release = threading.Event()  # only a test sets it, to end its wedged worker
        self.held: dict[str, Held] = {}
        self.stopping = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="codec")
        self._leases = itertools.count()
        # Built once: settings AI would refuse stop the worker at start, not at its first poll.
        self._lease_request = LeaseRequest(
            worker=worker_id, max_tasks=cfg.max_tasks, lease_seconds=cfg.lease_seconds
        ).wire()

    # -- the loop -----------------------------------------------------------------------------
    async def run(self) -> None:
        heartbeats = asyncio.create_task(self._heartbeat_loop())
        try:
            await self.drain_spool()
            while not self.stopping.is_set():
                await self._wedge_if_asked()
                tasks = await self._lease()
                if not tasks:
                    self.pulse.beat("waiting between lease polls", self.cfg.poll_seconds)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), self.cfg.poll_seconds)
                    continue
                await self.process(tasks)
            await self.drain_spool(deadline=time.monotonic() + self.cfg.shutdown_grace_seconds)
        finally:
            heartbeats.cancel()
            self._pool.shutdown(wait=False)

    async def _lease(self) -> list[LeasedTask]:
        key = f"{self.worker_id}:lease:{next(self._leases)}"
        for attempt in range(1, 1_000_000):
            self.pulse.beat("polling the AI service for work", self.cfg.call_timeout_seconds)
            try:
                leased = await self.ai.fetch(Leases, "POST", "/v1/leases", key=key, json=self._lease_request)
                items = leased.items
                self.pulse.polled(True)
                break
            except Ambiguous as exc:  # retry the same key: a lost answer hands us the same tasks
                self.pulse.polled(False, str(exc))
                if self.stopping.is_set():
                    return []
                await self._sleep(_backoff(attempt, exc.retry_after))
        now = dt.datetime.now(dt.UTC)
        for task in items:
            self.held[task.id] = Held(task.id, task.lease_token or "")
            QUEUE_WAIT.observe(max(0.0, (now - task.run_at).total_seconds()))
        return items

    async def process(self, tasks: list[LeasedTask]) -> None:
        loop = asyncio.get_running_loop()
        # The stages of ours around inference are bounded by one lease: one that outlasts the
        # lease it runs under has stopped. Inference has the model's own budget.
        self.pulse.beat(f"fetching {len(tasks)} input(s)", self.cfg.lease_seconds)
        started = time.perf_counter()
        blobs = await asyncio.gather(*(self._fetch(t) for t in tasks), return_exceptions=True)
        STAGE_SECONDS.labels("fetch").observe((time.perf_counter() - started) / max(1, len(tasks)))
        items: list[Item] = []
        for task, blob in zip(tasks, blobs, strict=True):
            if isinstance(blob, BaseException):
                await self._give_back(task.id, f"could not fetch the input: {blob}", retryable=True)
                continue
            self.pulse.beat("decoding an input", self.cfg.lease_seconds)
            t0 = time.perf_counter()
            try:
                image = await loop.run_in_executor(self._pool, codec.decode, blob)
            except codec.BadImage as exc:
                await self._give_back(task.id, str(exc), retryable=False)
                continue
            STAGE_SECONDS.labels("decode").observe(time.perf_counter() - t0)
            items.append(Item(task.id, task.pipeline, task.params, image))
        if not items:
            return
        self.pulse.beat(f"running inference on {len(items)} image(s)", self.cfg.infer_budget_seconds)
        t0 = time.perf_counter()
        await asyncio.to_thread(self.runner.run, items)
        STAGE_SECONDS.labels("infer").observe((time.perf_counter() - t0) / len(items))
        self.pulse.beat("encoding and storing results", self.cfg.lease_seconds)
        by_id = {task.id: task for task in tasks}
        spooled = await asyncio.gather(*(self._finish_item(item, by_id[item.key]) for item in items))
        await self.deliver([entry for entry in spooled if entry is not None])

    async def _finish_item(self, item: Item, task: LeasedTask) -> Entry | None:
        """The item's result encoded and spooled (or its run reported failed: None)."""
        if item.error is not None or item.output is None:
            IMAGES.labels(task.pipeline, "failed").inc()
            await self._give_back(item.key, item.error or "no output", retryable=False)
            return None
        t0 = time.perf_counter()
        png = await asyncio.get_running_loop().run_in_executor(self._pool, codec.encode, item.output)
        STAGE_SECONDS.labels("encode").observe(time.perf_counter() - t0)
        token = self.held[item.key].lease_token
        meta = {"pipeline": task.pipeline, "inputObjectId": task.input_object_id}
        entry = Entry(task.id, task.job_id, task.account, token, meta, task.item)
        await asyncio.to_thread(self.spool.put, entry, png)  # durable before anything else
        IMAGES.labels(task.pipeline, "ok").inc()
        return entry

    # -- results ------------------------------------------------------------------------------
    async def drain_spool(self, deadline: float | None = None) -> None:
        entries = self.spool.entries()
        if entries:
            log.info("spool holds %d finished result(s): uploading them first", len(entries))
        for entry in entries:
            self.held.setdefault(entry.task_id, Held(entry.task_id, entry.lease_token))
        for start in range(0, len(entries), _DRAIN_BATCH):
            await self.deliver(entries[start : start + _DRAIN_BATCH], deadline)

    async def deliver(self, entries: list[Entry], deadline: float | None = None) -> None:
        """Upload the spooled results (retrying while Storage is away), then complete the
        uploaded ones in one request."""
        stored = await asyncio.gather(*(self._store(entry, deadline) for entry in entries))
        await self._complete([(entry, obj) for entry, obj in zip(entries, stored, strict=True) if obj])

    async def _store(self, entry: Entry, deadline: float | None) -> StoredObject | None:
        """The result uploaded; None when there is nothing to complete: the task was cancelled or
        Storage refused the result (the run is reported and forgotten), or the ``deadline``
        passed (the result stays in the spool for the next start)."""
        held = self.held.get(entry.task_id)
        t0 = time.perf_counter()
        content = self.spool.content(entry)
        attempt = 0
        while True:
            attempt += 1
            if held is not None and held.cancelled:  # acknowledge, so the task ends cancelled now
                await self._give_back(entry.task_id, "cancelled", False, entry.lease_token)
                self._forget(entry)
                return None
            self.pulse.beat(f"uploading the result of {entry.task_id}", self.cfg.lease_seconds)
            try:
                obj = await self._upload(entry, content)
                STAGE_SECONDS.labels("upload").observe(time.perf_counter() - t0)
                return obj
            except Ambiguous as exc:
                UPLOAD_RETRIES.inc()
                if deadline is not None and time.monotonic() > deadline:
                    log.warning(
                        "storage still unreachable; %s stays in the spool for the next start", entry.task_id
                    )
                    return None
                if attempt in (1, 10) or attempt % 50 == 0:
                    log.warning(
                        "upload of %s failed (%s); result kept in the spool, retrying", entry.task_id, exc
                    )
                await self._sleep(_backoff(attempt, exc.retry_after, cap=10.0))
            except Refused as exc:
                log.error("storage refused the result of %s: %s", entry.task_id, exc)
                await self._give_back(entry.task_id, str(exc), False, entry.lease_token)
                self._forget(entry)
                return None

    async def _upload(self, entry: Entry, content: bytes) -> StoredObject:
        params = {"account": entry.account, "jobId": entry.job_id, "kind": "result", "state": "committed"}
        path = f"/v1/objects/{result_key(entry.job_id, entry.item)}"
        try:
            return await self.storage.fetch(StoredObject, "PUT", path, params=params, content=content)
        except Refused as exc:
            if exc.kind != "key-taken":
                raise
            # An earlier run of this job stored its result first: that one is the result.
            return await self.storage.fetch(
                StoredObject, "GET", f"/v1/by-key/{result_key(entry.job_id, entry.item)}"
            )

    async def _complete(self, done: list[tuple[Entry, StoredObject]]) -> None:
        """Complete these uploaded results in one request, each under its own key (the one its
        single completion has always had, so a retry across an upgrade replays). Those whose
        outcome is unknown (the answer was lost, the item failed) are sent again together, with
        the same keys; each refused one is handled as the single completion's refusal was."""
        batcher = self.ai.bulk("/v1/bulk/completions", Task)
        pending = [(entry, _completion(entry, obj)) for entry, obj in done]
        for attempt in itertools.count(1):
            if not pending:
                return
            self.pulse.beat(f"completing {len(pending)} task(s)", self.cfg.call_timeout_seconds)
            outcomes = await asyncio.gather(
                *(self._complete_one(batcher, entry, completion) for entry, completion in pending),
                return_exceptions=True,
            )
            unknown = []
            for (entry, completion), outcome in zip(pending, outcomes, strict=True):
                if isinstance(outcome, Ambiguous):
                    unknown.append((entry, completion))
                    continue
                if isinstance(outcome, Refused):
                    # Lease taken over or task cancelled: someone else owns it now.
                    log.info(
                        "completion of %s refused (%s); dropping this run's claim",
                        entry.task_id,
                        outcome.kind,
                    )
                    if outcome.kind == "task-cancelled":  # acknowledge, so the task ends (and its job can go)
                        await self._give_back(entry.task_id, "cancelled", False, entry.lease_token)
                elif isinstance(outcome, BaseException):
                    raise outcome
                self._forget(entry)
            pending = unknown
            if pending:
                retry_after = max(
                    (o.retry_after or 0.0 for o in outcomes if isinstance(o, Ambiguous)), default=0.0
                )
                await self._sleep(_backoff(attempt, retry_after, cap=10.0))

    async def _complete_one(self, batcher: Batcher[Task], entry: Entry, completion: TaskCompletion) -> Task:
        key = f"{entry.task_id}:complete:{entry.lease_token}"
        sent = completion.wire()
        body = {k: v for k, v in sent.items() if k != "taskId"}  # the single route's, byte for byte
        return await batcher.call(
            key,
            sent,
            lambda: self.ai.fetch(Task, "POST", f"/v1/tasks/{entry.task_id}/complete", key=key, json=body),
        )

    async def _give_back(
        self, task_id: str, reason: str, retryable: bool, lease_token: str | None = None
    ) -> None:
        """Report the run failed (``retryable`` or not) under its lease, and stop holding it."""
        token = lease_token if lease_token is not None else self.held[task_id].lease_token
        body = Failure(lease_token=token, reason=reason[:3900] or "no reason given", retryable=retryable)
        with contextlib.suppress(ServiceError):
            await self.ai.fetch(
                Task, "POST", f"/v1/tasks/{task_id}/fail", key=f"{task_id}:fail:{token}", json=body.wire()
            )
        self.held.pop(task_id, None)

    def _forget(self, entry: Entry) -> None:
        self.spool.remove(entry)
        self.held.pop(entry.task_id, None)

    async def _fetch(self, task: LeasedTask) -> bytes:
        response = await self.storage.call("GET", f"/v1/objects/{task.input_object_id}/content")
        return response.content

    # -- leases ---------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.lease_seconds / 3)
            for task_id, held in list(self.held.items()):
                if held.lost:
                    continue
                beat = Heartbeat(lease_token=held.lease_token, lease_seconds=self.cfg.lease_seconds)
                try:
                    task = await self.ai.fetch(
                        LeasedTask, "POST", f"/v1/tasks/{task_id}/heartbeat", json=beat.wire()
                    )
                    held.cancelled = task.cancel_requested
                except Refused:
                    held.lost = True
                except Ambiguous:
                    pass  # try again next round; the lease has slack

    async def _sleep(self, seconds: float) -> None:
        """A pause before a retry: the loop beats again after it and the call that follows."""
        self.pulse.beat("pausing before a retry", seconds + self.cfg.call_timeout_seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def _wedge_if_asked(self) -> None:
        """The test-only fault of ``wedge_file``: consumed, so that the restarted container runs
        normally (the file sits in the pod's /tmp, which outlives a container restart)."""
        if not self.cfg.wedge_file or not _take(self.cfg.wedge_file):
            return
        log.warning("fault: %s found; the loop now blocks forever without beating", self.cfg.wedge_file)
        await asyncio.to_thread(self.wedge_release.wait)  # a call that never returns


def _completion(entry: Entry, obj: StoredObject) -> TaskCompletion:
    return TaskCompletion(
        task_id=entry.task_id,
        lease_token=entry.lease_token,
        result_object_id=obj.id,
        result={"sha256": obj.sha256, "size": obj.size, "width": obj.width, "height": obj.height},
    )


def _take(path: str) -> bool:
    """Remove the file at ``path``; whether it was there (a stat of /tmp: no need for a thread)."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True


def _backoff(attempt: int, retry_after: float | None, cap: float = 30.0) -> float:
    return max(retry_after or 0.0, min(cap, 0.2 * 2 ** min(attempt, 10)) * random.uniform(0.5, 1.0))
