"""The lease loop: lease -> heartbeat -> fetch -> decode -> infer -> encode -> **spool (fsync)** ->
upload (key derived from the job, so a re-run stores no second result) -> complete.

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
from typing import Any

from aijobs.wire.client import Ambiguous, Refused, ServiceClient, ServiceError
from aijobs_worker import codec
from aijobs_worker.config import WorkerSettings
from aijobs_worker.health import Pulse
from aijobs_worker.runner import Item, Runner
from aijobs_worker.spool import Entry, Spool
from aijobs_worker.telemetry import IMAGES, QUEUE_WAIT, STAGE_SECONDS, UPLOAD_RETRIES

log = logging.getLogger("aijobs.worker")


@dataclass
class Held:
    task: dict[str, Any]
    lost: bool = False  # the lease was taken over: stop caring about this task
    cancelled: bool = False


def result_key(job_id: str) -> str:
    """One key per job: every run of its task uploads under it, so at most one result exists."""
    return f"result:{job_id}"


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

    async def _lease(self) -> list[dict[str, Any]]:
        key = f"{self.worker_id}:lease:{next(self._leases)}"
        body = {
            "worker": self.worker_id,
            "maxTasks": self.cfg.max_tasks,
            "leaseSeconds": self.cfg.lease_seconds,
        }
        for attempt in range(1, 1_000_000):
            self.pulse.beat("polling the AI service for work", self.cfg.call_timeout_seconds)
            try:
                items: list[dict[str, Any]] = (await self.ai.json("POST", "/v1/leases", key=key, json=body))[
                    "items"
                ]
                self.pulse.polled(True)
                break
            except Ambiguous as exc:  # retry the same key: a lost answer hands us the same tasks
                self.pulse.polled(False, str(exc))
                if self.stopping.is_set():
                    return []
                await self._sleep(_backoff(attempt, exc.retry_after))
        now = dt.datetime.now(dt.UTC)
        for task in items:
            self.held[task["id"]] = Held(task)
            QUEUE_WAIT.observe(max(0.0, (now - dt.datetime.fromisoformat(task["runAt"])).total_seconds()))
        return items

    async def process(self, tasks: list[dict[str, Any]]) -> None:
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
                await self._give_back(task, f"could not fetch the input: {blob}", retryable=True)
                continue
            self.pulse.beat("decoding an input", self.cfg.lease_seconds)
            t0 = time.perf_counter()
            try:
                image = await loop.run_in_executor(self._pool, codec.decode, blob)
            except codec.BadImage as exc:
                await self._give_back(task, str(exc), retryable=False)
                continue
            STAGE_SECONDS.labels("decode").observe(time.perf_counter() - t0)
            items.append(Item(task["id"], task["pipeline"], task["params"], image))
        if not items:
            return
        self.pulse.beat(f"running inference on {len(items)} image(s)", self.cfg.infer_budget_seconds)
        t0 = time.perf_counter()
        await asyncio.to_thread(self.runner.run, items)
        STAGE_SECONDS.labels("infer").observe((time.perf_counter() - t0) / len(items))
        self.pulse.beat("encoding and storing results", self.cfg.lease_seconds)
        await asyncio.gather(*(self._finish_item(item) for item in items))

    async def _finish_item(self, item: Item) -> None:
        task = self.held[item.key].task
        if item.error is not None or item.output is None:
            IMAGES.labels(task["pipeline"], "failed").inc()
            await self._give_back(task, item.error or "no output", retryable=False)
            return
        t0 = time.perf_counter()
        png = await asyncio.get_running_loop().run_in_executor(self._pool, codec.encode, item.output)
        STAGE_SECONDS.labels("encode").observe(time.perf_counter() - t0)
        entry = Entry(
            task["id"],
            task["jobId"],
            task["account"],
            task["leaseToken"],
            {"pipeline": task["pipeline"], "inputObjectId": task["inputObjectId"]},
        )
        await asyncio.to_thread(self.spool.put, entry, png)  # durable before anything else
        IMAGES.labels(task["pipeline"], "ok").inc()
        await self.deliver(entry)

    # -- results ------------------------------------------------------------------------------
    async def drain_spool(self, deadline: float | None = None) -> None:
        entries = self.spool.entries()
        if entries:
            log.info("spool holds %d finished result(s): uploading them first", len(entries))
        for entry in entries:
            self.held.setdefault(entry.task_id, Held({"id": entry.task_id, "leaseToken": entry.lease_token}))
            await self.deliver(entry, deadline)

    async def deliver(self, entry: Entry, deadline: float | None = None) -> None:
        """Upload the spooled result and complete the task, retrying while Storage is away."""
        held = self.held.get(entry.task_id)
        t0 = time.perf_counter()
        content = self.spool.content(entry)
        obj: dict[str, Any] | None = None
        for attempt in itertools.count(1):
            if held is not None and held.cancelled:
                break
            self.pulse.beat(f"uploading the result of {entry.task_id}", self.cfg.lease_seconds)
            try:
                obj = await self._upload(entry, content)
                break
            except Ambiguous as exc:
                UPLOAD_RETRIES.inc()
                if deadline is not None and time.monotonic() > deadline:
                    log.warning(
                        "storage still unreachable; %s stays in the spool for the next start", entry.task_id
                    )
                    return
                if attempt in (1, 10) or attempt % 50 == 0:
                    log.warning(
                        "upload of %s failed (%s); result kept in the spool, retrying", entry.task_id, exc
                    )
                await self._sleep(_backoff(attempt, exc.retry_after, cap=10.0))
            except Refused as exc:
                log.error("storage refused the result of %s: %s", entry.task_id, exc)
                await self._give_back({"id": entry.task_id, "leaseToken": entry.lease_token}, str(exc), False)
                self._forget(entry)
                return
        STAGE_SECONDS.labels("upload").observe(time.perf_counter() - t0)
        if obj is not None:
            await self._complete(entry, obj)
        elif held is not None and held.cancelled:  # acknowledge, so the task ends cancelled now
            await self._give_back({"id": entry.task_id, "leaseToken": entry.lease_token}, "cancelled", False)
        self._forget(entry)

    async def _upload(self, entry: Entry, content: bytes) -> dict[str, Any]:
        params = {"account": entry.account, "jobId": entry.job_id, "kind": "result", "state": "committed"}
        try:
            obj: dict[str, Any] = await self.storage.json(
                "PUT", f"/v1/objects/{result_key(entry.job_id)}", params=params, content=content
            )
        except Refused as exc:
            if exc.kind != "key-taken":
                raise
            # An earlier run of this job stored its result first: that one is the result.
            obj = await self.storage.json("GET", f"/v1/by-key/{result_key(entry.job_id)}")
        return obj

    async def _complete(self, entry: Entry, obj: dict[str, Any]) -> None:
        body = {
            "leaseToken": entry.lease_token,
            "resultObjectId": obj["id"],
            "result": {
                "sha256": obj["sha256"],
                "size": obj["size"],
                "width": obj["width"],
                "height": obj["height"],
            },
        }
        for attempt in itertools.count(1):
            try:
                await self.ai.json(
                    "POST",
                    f"/v1/tasks/{entry.task_id}/complete",
                    key=f"{entry.task_id}:complete:{entry.lease_token}",
                    json=body,
                )
                return
            except Ambiguous as exc:
                await self._sleep(_backoff(attempt, exc.retry_after, cap=10.0))
            except Refused as exc:  # lease taken over or task cancelled: someone else owns it now
                log.info("completion of %s refused (%s); dropping this run's claim", entry.task_id, exc.kind)
                if exc.kind == "task-cancelled":  # acknowledge, so the task ends (and its job can go)
                    await self._give_back(
                        {"id": entry.task_id, "leaseToken": entry.lease_token}, "cancelled", False
                    )
                return

    async def _give_back(self, task: dict[str, Any], reason: str, retryable: bool) -> None:
        with contextlib.suppress(ServiceError):
            await self.ai.json(
                "POST",
                f"/v1/tasks/{task['id']}/fail",
                key=f"{task['id']}:fail:{task['leaseToken']}",
                json={"leaseToken": task["leaseToken"], "reason": reason[:3900], "retryable": retryable},
            )
        self.held.pop(task["id"], None)

    def _forget(self, entry: Entry) -> None:
        self.spool.remove(entry)
        self.held.pop(entry.task_id, None)

    async def _fetch(self, task: dict[str, Any]) -> bytes:
        response = await self.storage.call("GET", f"/v1/objects/{task['inputObjectId']}/content")
        return response.content

    # -- leases ---------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.lease_seconds / 3)
            for task_id, held in list(self.held.items()):
                if held.lost or "leaseToken" not in held.task:
                    continue
                try:
                    task = await self.ai.json(
                        "POST",
                        f"/v1/tasks/{task_id}/heartbeat",
                        json={"leaseToken": held.task["leaseToken"], "leaseSeconds": self.cfg.lease_seconds},
                    )
                    held.cancelled = bool(task["cancelRequested"])
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


def _take(path: str) -> bool:
    """Remove the file at ``path``; whether it was there (a stat of /tmp: no need for a thread)."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True


def _backoff(attempt: int, retry_after: float | None, cap: float = 30.0) -> float:
    return max(retry_after or 0.0, min(cap, 0.2 * 2 ** min(attempt, 10)) * random.uniform(0.5, 1.0))
