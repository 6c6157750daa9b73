"""The lease loop: a pipeline of three stages, so that inference never waits on Storage or AI.

    prefetch    lease -> fetch -> decode                the next batch (at most one)
    loop        infer -> encode -> spool (fsync)        this batch
    deliveries  upload -> complete                      batches before it (``deliveries_in_flight``)

The loop takes the batch prefetched meanwhile (or leases one itself when none is), starts leasing
and fetching the next one beside it, infers, encodes and spools each result (durable before
anything else), then hands the spooled results to a delivery that runs in the background and goes
round. A lease's inputs are read in one request (``POST /v1/bulk/contents``). A delivery uploads
each result under a key derived from the job (a re-run stores no second result), all in one
request (``POST /v1/bulk/objects``), and completes the uploaded ones in one request
(``POST /v1/bulk/completions``, each under the key its single completion has always had).

Bounds: at most ``2 x max_tasks`` tasks held and not yet inferred (the batch inferring and the one
prefetched), at most ``deliveries_in_flight`` deliveries; at that bound the loop waits for one to
end, so Storage being slow or away backs up into the loop (no inference, no lease) instead of into
memory. Every held lease is extended once a third of it has gone by. Each stage beats in a lane of its own
(:mod:`aijobs_worker.health`), so a stage that hangs fails ``/healthz`` while the others go round.

Storage down after inference: the results wait in the spool while uploads retry with backoff and
heartbeats keep the leases; when Storage returns, upload and complete. On restart the spool is
drained before anything new is leased. SIGTERM: stop leasing; finish the batch inferring, and run
the batch already prefetched too (see :meth:`Worker.run`); deliveries in flight finish, retrying
for at most ``shutdown_grace_seconds`` after the loop stops; what is undelivered then stays in the
spool for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import itertools
import json
import logging
import math
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from aijobs.api.ai import (
    Failure,
    Heartbeat,
    LeasedTask,
    LeaseRequest,
    Leases,
    Task,
    TaskCompletion,
)
from aijobs.api.bulk import BulkAnswer, ItemAnswer
from aijobs.api.storage import MAX_BULK_OBJECTS, ContentsRequest, ObjectContent, ObjectPut, StoredObject
from aijobs.wire.bulk import Batcher
from aijobs.wire.client import Ambiguous, Refused, ServiceClient, ServiceError, judge
from aijobs_worker import codec
from aijobs_worker.config import WorkerSettings
from aijobs_worker.health import LOOP, Pulse
from aijobs_worker.runner import Item, Runner
from aijobs_worker.sizing import LeaseSizer
from aijobs_worker.spool import Entry, Spool
from aijobs_worker.telemetry import IMAGES, QUEUE_WAIT, STAGE_SECONDS, UPLOAD_RETRIES

_In = TypeVar("_In")
_Out = TypeVar("_Out")

log = logging.getLogger("aijobs.worker")

# Spooled results uploaded at once, and completed in one request, when the spool is drained.
_DRAIN_BATCH = 64
# The bytes of results sent in one bulk upload, well within Storage's body limit (40 MiB).
_BULK_BYTES = 16 * 1024 * 1024

_PREFETCH = "prefetch"
# The lane (:mod:`aijobs_worker.health`) the running stage beats in: set where a stage's task
# starts; what it awaits, and the tasks it gathers, inherit it.
_LANE: contextvars.ContextVar[str] = contextvars.ContextVar("lane", default=LOOP)


@dataclass
class Held:
    """A task this worker holds a lease on: leased now, or found in the spool at start."""

    task_id: str
    lease_token: str
    lost: bool = False  # the lease was taken over: stop caring about this task
    cancelled: bool = False
    renewed: float = -math.inf  # when its lease was taken or last extended (monotonic); never: due


@dataclass
class Batch:
    """A lease's tasks, their inputs fetched and decoded: what inference takes next. Those whose
    input could not be fetched or decoded were handed back and are not among the items."""

    leased: int
    tasks: dict[str, LeasedTask]
    items: list[Item]


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
        # Every stage beats here, in its lane, with how long its next step may take: /healthz.
        self.pulse = pulse or Pulse(cfg.stall_grace_seconds)
        self.wedge_release = threading.Event()  # only a test sets it, to end its wedged worker
        self.held: dict[str, Held] = {}
        self.stopping = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=codec.THREADS, thread_name_prefix="codec")
        # A lease's key names this run of the worker too: its count starts again at a restart
        # (the same worker id, a pod's container restarted), and a key of the run before would
        # replay that run's lease, or be refused as reused once the size asked differs.
        self._run_id = uuid.uuid4().hex[:12]
        self._leases = itertools.count()
        self._rounds = itertools.count(1)
        self._deliveries: set[asyncio.Task[None]] = set()
        # Set when the loop has stopped: deliveries give up retrying past it (results stay spooled).
        self._flush_by: float | None = None
        self._bulk_uploads = True  # until Storage says it has no bulk upload
        self._bulk_reads = True  # nor bulk read
        self.sizer = LeaseSizer(cfg.max_tasks, cfg.lease_work_seconds)
        # Settings AI would refuse stop the worker at start, not at its first poll.
        LeaseRequest(worker=worker_id, max_tasks=cfg.max_tasks, lease_seconds=cfg.lease_seconds)

    # -- the loop -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Drain the spool, then go round the pipeline (the module's docstring) until SIGTERM.

        On SIGTERM the batch already prefetched is run, not handed back: a hand-back costs each
        of its tasks an attempt (one on its last would fail for good, through no fault of its
        own) and a retry backoff before another worker fetches its input again, while running it
        costs one more batch of inference on inputs already in memory, which the pod's
        termination grace is sized for. Nothing new is leased once ``stopping`` is set."""
        heartbeats = asyncio.create_task(self._heartbeat_loop())
        prefetch: asyncio.Task[Batch] | None = None
        try:
            await self.drain_spool()
            while True:
                self._reap_deliveries()
                if prefetch is None and self.stopping.is_set():
                    break
                await self._wedge_if_asked()
                if prefetch is None:
                    batch = await self._gather()
                else:
                    self._beat("waiting for the next batch, leased and fetched beside", math.inf)
                    batch, prefetch = await prefetch, None
                if not batch.leased:
                    self._beat("waiting between lease polls", self.cfg.poll_seconds)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), self.cfg.poll_seconds)
                    continue
                if not batch.items:
                    continue
                if not self.stopping.is_set():
                    prefetch = asyncio.create_task(self._prefetch())
                await self._deliver_beside(await self._infer_and_spool(batch))
            await self._finish_deliveries()
        finally:
            heartbeats.cancel()
            for task in (prefetch, *self._deliveries):  # only left running when the loop failed
                if task is not None:
                    task.cancel()
            self._pool.shutdown(wait=False)

    def _beat(self, doing: str, within: float) -> None:
        self.pulse.beat(doing, within, _LANE.get())

    async def _lease(self) -> list[LeasedTask]:
        key = f"{self.worker_id}:{self._run_id}:lease:{next(self._leases)}"
        # The size is fixed with the key: a retry asks for what the first try asked (and a lost
        # answer's replay hands over leases granted then: their clock started at the first try).
        asked = LeaseRequest(
            worker=self.worker_id, max_tasks=self.sizer.size(), lease_seconds=self.cfg.lease_seconds
        ).wire()
        first_try = time.monotonic()
        for attempt in range(1, 1_000_000):
            if self.stopping.is_set():  # SIGTERM: nothing new
                return []
            self._beat("polling the AI service for work", self.cfg.call_timeout_seconds)
            try:
                leased = await self.ai.fetch(Leases, "POST", "/v1/leases", key=key, json=asked)
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
            self.held[task.id] = Held(task.id, task.lease_token or "", renewed=first_try)
            QUEUE_WAIT.observe(max(0.0, (now - task.run_at).total_seconds()))
        return items

    async def _prefetch(self) -> Batch:
        """The next batch, leased and fetched in a lane of its own while the loop infers."""
        _LANE.set(_PREFETCH)
        try:
            return await self._gather()
        finally:
            self.pulse.rest(_PREFETCH)  # done: its batch waits for the loop, promising nothing

    async def _gather(self) -> Batch:
        """Lease a batch, then fetch and decode its inputs; a task whose input cannot be fetched
        is handed back (retryable), one whose input is no image is failed."""
        tasks = await self._lease()
        if not tasks:
            return Batch(0, {}, [])
        # The stages of ours around inference are bounded by one lease: one that outlasts the
        # lease it runs under has stopped. Inference has the model's own budget.
        self._beat(f"fetching {len(tasks)} input(s)", self.cfg.lease_seconds)
        started = time.perf_counter()
        blobs = await self._fetch_all(tasks)
        STAGE_SECONDS.labels("fetch").observe((time.perf_counter() - started) / max(1, len(tasks)))
        fetched: list[tuple[LeasedTask, bytes]] = []
        unfetched = []
        for task, blob in zip(tasks, blobs, strict=True):
            if isinstance(blob, BaseException):
                why = f"could not fetch the input: {blob}"
                unfetched.append(self._give_back(task.id, why, task.lease_token, retryable=True))
            else:
                fetched.append((task, blob))
        self._beat(f"decoding {len(fetched)} input(s)", self.cfg.lease_seconds)
        t0 = time.perf_counter()
        decoding = self._on_pool(codec.decode_each, [blob for _, blob in fetched])
        images, _ = await asyncio.gather(decoding, asyncio.gather(*unfetched))
        if fetched:
            STAGE_SECONDS.labels("decode").observe((time.perf_counter() - t0) / len(fetched))
        items: list[Item] = []
        bad = []
        for (task, _), image in zip(fetched, images, strict=True):
            if isinstance(image, codec.BadImage):
                bad.append(self._give_back(task.id, str(image), task.lease_token, retryable=False))
            else:
                items.append(Item(task.id, task.pipeline, task.params, image))
        await asyncio.gather(*bad)
        return Batch(len(tasks), {task.id: task for task in tasks}, items)

    async def _on_pool(
        self, each: Callable[[Sequence[_In]], list[_Out]], values: Sequence[_In]
    ) -> list[_Out]:
        """``each`` over ``values`` on the codec pool, in as many runs of neighbours as the pool
        has threads, so that the images still go side by side, and a lease costs a few thread
        hops rather than one an image (64 to a lease for a light pipeline: each a future, a
        callback and a wake-up of the loop). The answers come in the values' order."""
        loop = asyncio.get_running_loop()
        runs = codec.runs(values)
        answers = await asyncio.gather(*(loop.run_in_executor(self._pool, each, run) for run in runs))
        return [answer for run in answers for answer in run]

    async def _infer_and_spool(self, batch: Batch) -> list[Entry]:
        """Run the batch, then encode and spool each result: the entries to deliver."""
        self._beat(f"running inference on {len(batch.items)} image(s)", self.cfg.infer_budget_seconds)
        t0 = time.perf_counter()
        await asyncio.to_thread(self.runner.run, batch.items)
        STAGE_SECONDS.labels("infer").observe((time.perf_counter() - t0) / len(batch.items))
        self._beat("encoding and storing results", self.cfg.lease_seconds)
        ran: list[LeasedTask] = []
        outputs = []
        failed = []
        for item in batch.items:
            task = batch.tasks[item.key]
            if item.error is not None or item.output is None:
                IMAGES.labels(task.pipeline, "failed").inc()
                failed.append(
                    self._give_back(item.key, item.error or "no output", task.lease_token, retryable=False)
                )
                continue
            ran.append(task)
            outputs.append(item.output)
        t1 = time.perf_counter()
        # The runs that failed are handed back while the others encode (each is a call to AI).
        encoded, _ = await asyncio.gather(self._on_pool(codec.encode_each, outputs), asyncio.gather(*failed))
        if ran:
            STAGE_SECONDS.labels("encode").observe((time.perf_counter() - t1) / len(ran))
        results = [_spooled(task, png, digest) for task, (png, digest) in zip(ran, encoded, strict=True)]
        await asyncio.to_thread(self.spool.put_many, results)  # durable before anything else
        self.sizer.observe(time.perf_counter() - t0, len(batch.items))
        for entry, _ in results:
            IMAGES.labels(entry.meta["pipeline"], "ok").inc()
        return [entry for entry, _ in results]

    async def _deliver_beside(self, entries: list[Entry]) -> None:
        """Deliver these spooled results in the background; first, while the bound of deliveries
        in flight is reached, wait for one to end (the back-pressure of a slow Storage)."""
        if not entries:
            return
        while len(self._deliveries) >= self.cfg.deliveries_in_flight:
            self._beat(f"waiting for one of {len(self._deliveries)} deliveries in flight to end", math.inf)
            await asyncio.wait(self._deliveries, return_when=asyncio.FIRST_COMPLETED)
            self._reap_deliveries()
        lane = f"delivery {next(self._rounds)}"
        self._deliveries.add(asyncio.create_task(self._delivery(entries, lane)))

    async def _delivery(self, entries: list[Entry], lane: str) -> None:
        _LANE.set(lane)
        try:
            await self.deliver(entries)
        finally:
            self.pulse.rest(lane)

    def _reap_deliveries(self) -> None:
        """Forget the deliveries that ended; one that failed unexpectedly stops the worker, as it
        did when deliveries ran in the loop (its results stay in the spool)."""
        for task in [task for task in self._deliveries if task.done()]:
            self._deliveries.discard(task)
            task.result()

    async def _finish_deliveries(self) -> None:
        """Once the loop has stopped: let the deliveries in flight end, retrying for at most the
        shutdown's grace (what they give up on stays in the spool for the next start)."""
        self._flush_by = time.monotonic() + self.cfg.shutdown_grace_seconds
        while self._deliveries:
            self._beat(f"finishing {len(self._deliveries)} deliveries before exit", math.inf)
            await asyncio.wait(self._deliveries, return_when=asyncio.FIRST_COMPLETED)
            self._reap_deliveries()

    # -- results ------------------------------------------------------------------------------
    async def drain_spool(self) -> None:
        """Deliver what an earlier run left in the spool, before anything new is leased."""
        entries = self.spool.entries()
        if entries:
            log.info("spool holds %d finished result(s): uploading them first", len(entries))
        for entry in entries:
            self.held.setdefault(entry.task_id, Held(entry.task_id, entry.lease_token))
        for start in range(0, len(entries), _DRAIN_BATCH):
            await self.deliver(entries[start : start + _DRAIN_BATCH])

    async def deliver(self, entries: list[Entry]) -> None:
        """Upload the spooled results together (retrying while Storage is away), then complete
        the uploaded ones in one request."""
        stored = await self._store(entries)
        await self._complete([(entry, obj) for entry, obj in zip(entries, stored, strict=True) if obj])

    def _flush_over(self) -> bool:
        """Whether the shutdown's grace for delivering has run out."""
        return self._flush_by is not None and time.monotonic() > self._flush_by

    async def _store(self, entries: list[Entry]) -> list[StoredObject | None]:
        """Each result uploaded, in one request for all (those whose outcome is unknown sent
        again together, under the same keys); None where there is nothing to complete: the task
        was cancelled or Storage refused the result (the run is reported and forgotten), or the
        shutdown's grace ran out (the result stays in the spool for the next start)."""
        t0 = time.perf_counter()
        contents = self.spool.contents(entries)
        stored: list[StoredObject | None] = [None] * len(entries)
        pending = list(range(len(entries)))
        for attempt in itertools.count(1):
            for n in list(pending):
                held = self.held.get(entries[n].task_id)
                if held is not None and held.cancelled:  # acknowledge, so the task ends cancelled now
                    entry = entries[n]
                    await self._give_back(entry.task_id, "cancelled", entry.lease_token, retryable=False)
                    self._forget(entry)
                    pending.remove(n)
            if not pending:
                break
            self._beat(f"uploading {len(pending)} result(s)", self.cfg.lease_seconds)
            outcomes = await self._upload([entries[n] for n in pending], [contents[n] for n in pending])
            unknown: list[tuple[int, Ambiguous]] = []
            for n, outcome in zip(pending, outcomes, strict=True):
                entry = entries[n]
                if isinstance(outcome, StoredObject):
                    stored[n] = outcome
                    STAGE_SECONDS.labels("upload").observe(time.perf_counter() - t0)
                elif isinstance(outcome, Ambiguous):
                    unknown.append((n, outcome))
                else:
                    log.error("storage refused the result of %s: %s", entry.task_id, outcome)
                    # Bytes that are not those encoded (the spool file damaged): run it again.
                    damaged = isinstance(outcome, Refused) and outcome.kind == "digest-mismatch"
                    await self._give_back(entry.task_id, str(outcome), entry.lease_token, retryable=damaged)
                    self._forget(entry)
            pending = [n for n, _ in unknown]
            if not pending:
                break
            UPLOAD_RETRIES.inc(len(pending))
            if self._flush_over():
                log.warning(
                    "storage still unreachable; %d result(s) stay in the spool for the next start",
                    len(pending),
                )
                break
            if attempt in (1, 10) or attempt % 50 == 0:
                log.warning(
                    "upload of %d result(s) failed (%s); kept in the spool, retrying",
                    len(pending),
                    unknown[0][1],
                )
            retry_after = max((exc.retry_after or 0.0 for _, exc in unknown), default=0.0)
            await self._sleep(_backoff(attempt, retry_after, cap=10.0))
        return stored

    async def _upload(self, entries: list[Entry], contents: list[bytes]) -> list[StoredObject | ServiceError]:
        """:meth:`_upload_together` for requests of at most ``MAX_BULK_OBJECTS`` results and
        about ``_BULK_BYTES`` (a larger result goes alone), sent one after the other."""
        outcomes: list[StoredObject | ServiceError] = []
        start = 0
        while start < len(entries):
            end, size = start, 0
            while end < len(entries) and end - start < MAX_BULK_OBJECTS:
                if end > start and size + len(contents[end]) > _BULK_BYTES:
                    break
                size += len(contents[end])
                end += 1
            outcomes += await self._upload_together(entries[start:end], contents[start:end])
            start = end
        return outcomes

    async def _upload_together(
        self, entries: list[Entry], contents: list[bytes]
    ) -> list[StoredObject | ServiceError]:
        """Upload these results in one request (``POST /v1/bulk/objects``, each item Storage's
        single put under the result's key): each one's object, or what kept it from being stored.
        A Storage without the route (older), or one that refuses the request whole, gets one
        ``PUT`` per result instead."""
        if self._bulk_uploads and len(entries) > 1:
            items = [
                ObjectPut(
                    key=result_key(entry.job_id, entry.item),
                    account=entry.account,
                    job_id=entry.job_id,
                    kind="result",
                    state="committed",
                    sha256=entry.sha256,
                ).wire()
                for entry in entries
            ]
            files = [("files", (f"{n}.png", content, "image/png")) for n, content in enumerate(contents)]
            try:
                answer = await self.storage.fetch(
                    BulkAnswer, "POST", "/v1/bulk/objects", data={"items": json.dumps(items)}, files=files
                )
            except Ambiguous as exc:
                return [exc] * len(entries)
            except Refused as exc:
                if _refused_whole(exc, "bulk upload", "result"):
                    self._bulk_uploads = False
            else:
                return list(
                    await asyncio.gather(
                        *(
                            self._stored(entry, item)
                            for entry, item in zip(entries, answer.items, strict=True)
                        )
                    )
                )
        return list(
            await asyncio.gather(*(self._put_one(e, c) for e, c in zip(entries, contents, strict=True)))
        )

    async def _stored(self, entry: Entry, item: ItemAnswer) -> StoredObject | ServiceError:
        """One item of a bulk upload's answer, read as the single put's would be."""
        if 200 <= item.status < 300:
            try:
                return StoredObject.model_validate(item.body)
            except ValueError as exc:
                return Ambiguous("storage", f"contract-violation: a bulk upload's item is no object: {exc}")
        outcome = judge("storage", f"bulk upload of {item.key}", item.status, item.body)
        if isinstance(outcome, Refused) and outcome.kind == "key-taken":
            return await self._earlier(entry)
        return outcome

    async def _put_one(self, entry: Entry, content: bytes) -> StoredObject | ServiceError:
        params = {"account": entry.account, "jobId": entry.job_id, "kind": "result", "state": "committed"}
        if entry.sha256 is not None:
            params["sha256"] = entry.sha256
        path = f"/v1/objects/{result_key(entry.job_id, entry.item)}"
        try:
            return await self.storage.fetch(StoredObject, "PUT", path, params=params, content=content)
        except Refused as exc:
            if exc.kind != "key-taken":
                return exc
            return await self._earlier(entry)
        except Ambiguous as exc:
            return exc

    async def _earlier(self, entry: Entry) -> StoredObject | ServiceError:
        """An earlier run of this job stored its result first: that one is the result."""
        try:
            return await self.storage.fetch(
                StoredObject, "GET", f"/v1/by-key/{result_key(entry.job_id, entry.item)}"
            )
        except ServiceError as exc:
            return exc

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
            self._beat(f"completing {len(pending)} task(s)", self.cfg.call_timeout_seconds)
            outcomes = await asyncio.gather(
                *(self._complete_one(batcher, entry, completion) for entry, completion in pending),
                return_exceptions=True,
            )
            unknown = []
            ended = []
            try:
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
                        if outcome.kind == "task-cancelled":  # acknowledge: the task ends, its job can go
                            token = entry.lease_token
                            await self._give_back(entry.task_id, "cancelled", token, retryable=False)
                    elif isinstance(outcome, BaseException):
                        raise outcome
                    ended.append(entry)
            finally:
                # Those settled, removed from the spool together (one write a segment), even when
                # an unexpected failure stops the round: they need not be delivered again.
                self._forget_all(ended)
            pending = unknown
            if pending and self._flush_over():
                log.warning("%d completion(s) unknown at exit; they stay in the spool", len(pending))
                return
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
        self, task_id: str, reason: str, lease_token: str | None, *, retryable: bool
    ) -> None:
        """Report the run failed (``retryable`` or not) under its lease, and stop holding it."""
        token = lease_token or ""
        body = Failure(lease_token=token, reason=reason[:3900] or "no reason given", retryable=retryable)
        with contextlib.suppress(ServiceError):
            await self.ai.fetch(
                Task, "POST", f"/v1/tasks/{task_id}/fail", key=f"{task_id}:fail:{token}", json=body.wire()
            )
        self._release(task_id, token)

    def _forget(self, entry: Entry) -> None:
        self._forget_all([entry])

    def _forget_all(self, entries: list[Entry]) -> None:
        self.spool.remove_many(entries)
        for entry in entries:
            self._release(entry.task_id, entry.lease_token)

    def _release(self, task_id: str, token: str) -> None:
        """Stop holding the task under this lease; a later lease of it (the same task leased
        to this worker again) is still held, and still heartbeated."""
        held = self.held.get(task_id)
        if held is not None and held.lease_token == token:
            del self.held[task_id]

    async def _fetch_all(self, tasks: list[LeasedTask]) -> list[bytes | BaseException]:
        """Each task's input, or what kept it from being fetched: read together
        (``POST /v1/bulk/contents``, at most ``MAX_BULK_OBJECTS`` a request) when there are
        several, and each one the bulk read did not give (an older Storage, a lost answer, an
        item past the answer's bound or refused) fetched alone, whose answer is then the task's."""
        ids = list(dict.fromkeys(task.input_object_id for task in tasks))
        found: dict[str, bytes | BaseException] = {}
        if self._bulk_reads and len(ids) > 1:
            for start in range(0, len(ids), MAX_BULK_OBJECTS):
                found.update(await self._read_together(ids[start : start + MAX_BULK_OBJECTS]))
        alone = [object_id for object_id in ids if object_id not in found]
        fetched = await asyncio.gather(*(self._fetch(one) for one in alone), return_exceptions=True)
        found.update(zip(alone, fetched, strict=True))
        return [found[task.input_object_id] for task in tasks]

    async def _read_together(self, ids: list[str]) -> dict[str, bytes | BaseException]:
        """The bytes of those of ``ids`` the bulk read gave."""
        try:
            request = ContentsRequest(ids=ids).wire()
        except ValueError as exc:  # AI takes any id; one no object could have goes alone
            log.info("a lease's inputs cannot be read together (%s): one request per input", exc)
            return {}
        try:
            answer = await self.storage.fetch(BulkAnswer, "POST", "/v1/bulk/contents", json=request)
        except Ambiguous as exc:
            log.info("bulk read of %d input(s) failed (%s): one request per input", len(ids), exc)
            return {}
        except Refused as exc:
            if _refused_whole(exc, "bulk read", "input"):
                self._bulk_reads = False
            return {}
        found: dict[str, bytes | BaseException] = {}
        for item in answer.items:
            if item.status != 200:
                continue  # read alone: its own answer says why
            try:
                content = ObjectContent.model_validate(item.body)
                found[content.id] = content.data()
            except ValueError as exc:
                log.warning("a bulk read's item is no object's content (%s): read alone", exc)
        return found

    async def _fetch(self, object_id: str) -> bytes:
        response = await self.storage.call("GET", f"/v1/objects/{object_id}/content")
        return response.content

    # -- leases ---------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        """Extend each held lease once a third of it has gone by (and learn whether its task was
        cancelled). Only those: a lease taken a moment ago needs nothing yet, and a fast model's
        tasks are mostly done within their first third (a heartbeat per held task each round
        was grayscale's most frequent request, bench/batch.py)."""
        due_after = self.cfg.lease_seconds / 3
        while True:
            await asyncio.sleep(due_after / 2)
            for task_id, held in list(self.held.items()):
                if held.lost or time.monotonic() - held.renewed < due_after:
                    continue
                beat = Heartbeat(lease_token=held.lease_token, lease_seconds=self.cfg.lease_seconds)
                sent = time.monotonic()
                try:
                    task = await self.ai.fetch(
                        LeasedTask, "POST", f"/v1/tasks/{task_id}/heartbeat", json=beat.wire()
                    )
                    held.cancelled, held.renewed = task.cancel_requested, sent
                except Refused:
                    held.lost = True
                except Ambiguous:
                    pass  # try again next round; the lease has slack

    async def _sleep(self, seconds: float) -> None:
        """A pause before a retry: the stage beats again after it and the call that follows.
        SIGTERM ends it early (a lease poll then gives up); after that, pauses still space a
        delivery's retries, but none outlasts the shutdown's grace."""
        if self._flush_by is not None:
            seconds = max(0.0, min(seconds, self._flush_by - time.monotonic()))
        self._beat("pausing before a retry", seconds + self.cfg.call_timeout_seconds)
        if self.stopping.is_set():
            await asyncio.sleep(seconds)
            return
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


def _refused_whole(exc: Refused, what: str, each: str) -> bool:
    """Log a bulk request Storage refused whole (its items then go one request per ``each``);
    whether it has no such route at all (an older Storage), so that it is not sent again."""
    if exc.status in (404, 405):
        log.info("storage has no %s (%s): one request per %s", what, exc.kind, each)
        return True
    log.warning("storage refused a %s whole (%s): one request per %s", what, exc, each)
    return False


def _take(path: str) -> bool:
    """Remove the file at ``path``; whether it was there (a stat of /tmp: no need for a thread)."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True


def _backoff(attempt: int, retry_after: float | None, cap: float = 30.0) -> float:
    return max(retry_after or 0.0, min(cap, 0.2 * 2 ** min(attempt, 10)) * random.uniform(0.5, 1.0))


def _spooled(task: LeasedTask, png: bytes, digest: str) -> tuple[Entry, bytes]:
    """A result as its spool entry and bytes. The entry keeps the lease this run was under, not
    the task's latest here: the task may have been leased to this worker again meanwhile (its
    lease ran out while it inferred) and that lease handed back or finished already. AI fences
    the completion by this token."""
    meta = {"pipeline": task.pipeline, "inputObjectId": task.input_object_id}
    return Entry(task.id, task.job_id, task.account, task.lease_token or "", meta, task.item, digest), png
