"""The saga's steps for a batch: one job, many images (``spec.input.batch``, DESIGN.md §6).

The step table is the single job's (:mod:`aijobs_operator.saga`); each step of a batch job runs
the function here instead of its single-image one, with the same promises:

- **charge** freezes the set: the account's committed images under the prefix as they stood
  when the job was created (Storage lists them ``createdBefore`` the job's creationTimestamp, so
  a retry lists the very same set, whatever is uploaded since), counted and digested into the
  log, and holds ``count x price`` under the step's one key. An empty set, or one too large, is
  refused before anything is held; too few credits, with the numbers. A batch named by an image
  list (``imageList``, :mod:`aijobs.api.imagelist`) is frozen by the list itself: a committed
  object of the account, immutable, whose sha256 is the set's digest. Its lines are checked
  before anything is held (each well formed; each object id a committed image of the account,
  looked up together), and its count priced the same way.
- **upload** has nothing to store for a prefix: the images are in Storage already. A list's
  URLs are fetched by Storage now, once the batch is paid for, each stored under a key derived
  from the job's uid and its index (a retry replays it); a URL Storage refuses fails the job,
  naming its line, and compensation returns the hold and deletes what was fetched.
- **schedule** lists the set again and refuses it if its digest changed (an image deleted or
  replaced since acceptance; for a list, an object it names no longer committed), then creates
  one task per image in bulk, each under a key derived from the job's uid and the image's index:
  a retry, a restart, a lost answer replay per image.
- **process** follows the job's task counts (one read, whatever the size: the engine's follower
  passes them in). Past ``maxFailedImages`` it cancels the images not yet run. Once every task
  has ended it counts the images delivered: a succeeded task whose result Storage holds
  committed. None: the job fails, and compensation returns everything.
- **capture** (written ahead) is one partial capture of ``price x delivered``, the rest of the
  hold released in the same transaction: an image that failed costs nothing.
- **deliver** stores the result manifest (one JSON line per input: its key, its result and
  sha256, or why it failed) and records one signed link to it, as a single job's result. Its
  lines are those the process step read, which capture charged for (the engine keeps them in
  memory for the job; a restarted operator reads again); the job's results are listed again,
  and one no line names is deleted.

Status stays small: counts, a sample of failures, the log (:class:`BatchStatus`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import itertools
from collections.abc import Set as AbstractSet
from typing import Any

from aijobs.api import ai, imagelist, payment, storage
from aijobs.api.rules import MAX_BATCH_IMAGES
from aijobs.api.v1alpha1 import BatchFailure, BatchInput, BatchStatus, ManifestLine
from aijobs.wire.client import Ambiguous, Refused
from aijobs.wire.lookup import lookup_objects
from aijobs_operator import core
from aijobs_operator.core import Done, Ended, Waiting, hold_expiry, idempotency_key, iso
from aijobs_operator.steps import (
    Call,
    Job,
    StepFailed,
    authorize,
    bulk_call,
    record_delivery,
    refused,
    same_bytes,
)

__all__ = [
    "cancel_tasks",
    "capture",
    "charge",
    "deliver",
    "digest",
    "manifest_key",
    "process",
    "schedule",
    "upload",
]

GATHER = 5000  # tasks awaited at once while scheduling (the batcher sends up to 1000 a request)
# Tasks created first, in a gather of their own: a worker's lease of them runs while the rest are
# created. AI takes about half a second of CPU for a request of 1,000 and answers two at once, so
# the batch's first image would otherwise wait for 2,000 tasks to be created before any could be
# leased. 64 is a worker's largest lease by default (aijobs_worker.config: max_tasks). The
# batcher is shared: another job's items queued before these still go first.
FIRST = 64
SAMPLE = 10  # failures kept in status (the manifest lists them all)
# A failure's reason as the manifest and status keep it: with keys of at most 255 characters, a
# line stays under ~700 bytes, a 100,000-image manifest under Storage's 128 MiB for manifests.
REASON = 200


# ----------------------------------------------------------------------------- the frozen set
def digest(objects: list[storage.StoredObject]) -> str:
    """The set's fingerprint: each image's key and content hash, in key order."""
    h = hashlib.sha256()
    for obj in objects:
        h.update(f"{obj.key} {obj.sha256}\n".encode())
    return h.hexdigest()


async def frozen_set(call: Call) -> list[storage.StoredObject]:
    """The batch's images, in key order: what was committed under the prefix when the job was
    created. Read page by page; the same on every retry. A creationTimestamp has whole seconds,
    so the set ends with the second after it: an image uploaded in the second the job was
    created is in (the same one on every read), one uploaded later is not."""
    job, svc = call.job, call.svc
    assert job.created is not None
    prefix = _source(call).prefix
    assert prefix is not None
    params: dict[str, Any] = {
        "account": job.spec.account,
        "prefix": prefix,
        "createdBefore": iso(job.created + dt.timedelta(seconds=1)),
        "limit": call.cfg.batch_page_size,
    }
    found: list[storage.StoredObject] = []
    while True:
        page = await svc.storage.fetch(storage.ObjectPage, "GET", "/v1/objects", params=params)
        found.extend(page.items)
        if page.next is None or len(found) > MAX_BATCH_IMAGES:
            return found
        params = {**params, "after": page.next}


def _total(call: Call) -> int:
    return int(call.job.ids()["images"])


def _source(call: Call) -> BatchInput:
    batch = call.job.spec.input.batch
    assert batch is not None  # a batch step runs for a batch job only (steps.by_input)
    return batch


def _named(call: Call) -> str:
    """The set as a message names it."""
    source = _source(call)
    return f"under {source.prefix!r}" if source.prefix is not None else f"of image list {source.image_list}"


# ------------------------------------------------------------------------------ an image list
def input_key(uid: str, item: int) -> str:
    """Where a list's URL is stored once fetched: the job's and the image's, so a retry replays."""
    return f"job:{uid}:input:{item}"


async def read_list(call: Call) -> tuple[storage.StoredObject, list[imagelist.Entry]]:
    """The job's image list and its entries, or the job fails naming what is wrong with it."""
    job, svc = call.job, call.svc
    list_id = _source(call).image_list
    assert list_id is not None
    try:
        found = await svc.storage.fetch(storage.StoredObject, "GET", f"/v1/objects/{list_id}")
    except Refused as exc:
        if exc.status == 404:
            raise StepFailed("ImageListMissing", f"Storage has no image list {list_id}") from exc
        raise
    if found.account != job.spec.account or found.kind != "list" or found.state != "committed":
        raise StepFailed(
            "ImageListNotUsable",
            f"object {list_id} is not an image list of account {job.spec.account} "
            f"(it is a {found.state} {found.kind} of account {found.account})",
        )
    response = await svc.storage.call("GET", f"/v1/objects/{list_id}/content")
    try:
        entries = imagelist.parse(response.content.decode("utf-8"))
    except (imagelist.BadImageList, UnicodeDecodeError) as exc:
        raise StepFailed("BadImageList", f"image list {list_id}: {exc}") from exc
    return found, entries


async def listed_images(call: Call, *, strict: bool) -> list[storage.StoredObject]:
    """The images a list names, in its order: each object id's object, each URL's as fetched by
    the upload step. ``strict``: an image no longer usable (deleted since acceptance) fails the
    job; otherwise it is left out (the manifest's lines come from the tasks; this only gives
    them their keys, so a delivery after capture never fails for it)."""
    job = call.job
    try:
        _, entries = await read_list(call)
    except StepFailed:
        if strict:
            raise
        return []  # the list went since acceptance (an admin's doing): the lines lose their keys
    named = await lookup_objects(call.svc.storage, (e.object_id for e in entries if e.object_id))
    fetched = {o.key: o for o in await job_objects(call, "input")}
    images: list[storage.StoredObject] = []
    for entry in entries:
        if entry.object_id is not None:
            obj = named.get(entry.object_id)
            ok = imagelist.usable(obj, job.spec.account)
        else:
            obj = fetched.get(input_key(job.uid, entry.item))
            ok = obj is not None and obj.state == "committed"
        if ok and obj is not None:
            images.append(obj)
        elif strict:
            raise StepFailed(
                "InputsChanged",
                f"image {entry.item} (line {entry.line}, {entry.text}) is no longer in Storage: "
                "nothing was run; create a new job",
            )
    return images


async def images_of(call: Call, *, strict: bool) -> list[storage.StoredObject]:
    return (
        await frozen_set(call)
        if _source(call).prefix is not None
        else await listed_images(call, strict=strict)
    )


def progress(total: int, counts: ai.JobTaskCounts, digest_: str | None = None) -> BatchStatus:
    done = counts.succeeded + counts.failed + counts.cancelled
    return BatchStatus(
        total=total,
        digest=digest_,
        succeeded=counts.succeeded,
        failed=counts.failed,
        cancelled=counts.cancelled,
        pending=max(0, total - done),
        progress=f"{counts.succeeded}/{total}",
    )


# ----------------------------------------------------------------------------------- the steps
async def _count_prefix(call: Call) -> tuple[int, str]:
    spec = call.job.spec
    images = await frozen_set(call)
    if not images:
        raise StepFailed(
            "EmptyBatch",
            f"no committed image of account {spec.account} {_named(call)} was in Storage when the job "
            "was created: upload the images first, then create the job",
        )
    if len(images) > MAX_BATCH_IMAGES:
        raise StepFailed(
            "BatchTooLarge", f"more than {MAX_BATCH_IMAGES} images {_named(call)}: split the batch"
        )
    return len(images), digest(images)


async def _count_list(call: Call) -> tuple[int, str]:
    """An image list's count and digest (the list's own sha256: it cannot change), once every
    object id it names is found to be a committed image of the account."""
    found, entries = await read_list(call)
    named = await lookup_objects(call.svc.storage, (e.object_id for e in entries if e.object_id))
    try:
        imagelist.check_objects(entries, named, call.job.spec.account)
    except imagelist.BadImageList as exc:
        raise StepFailed("ImageNotUsable", f"image list {found.id}: {exc}") from exc
    return len(entries), found.sha256


async def charge(call: Call) -> Done | Waiting:
    job, svc = call.job, call.svc
    spec = job.spec
    await authorize(call)
    count, fingerprint = await (
        _count_prefix(call) if _source(call).prefix is not None else _count_list(call)
    )
    amount = count * spec.price
    expires = hold_expiry(job.status, job.policy)
    body = payment.HoldCreate(account=spec.account, job_id=job.uid, amount=amount, expires_at=expires)
    try:
        hold = await bulk_call(
            svc.payment,
            payment.Hold,
            "/v1/holds",
            "/v1/bulk/holds",
            idempotency_key(job.uid, "charge"),
            same_bytes(body, expiresAt=expires),
        )
    except Refused as exc:
        if exc.status == 402:
            raise StepFailed(
                "InsufficientCredits",
                f"the batch needs {amount} credits ({count} images x {spec.price}): {exc.detail or exc.kind}",
            ) from exc
        raise refused("ChargeRefused", exc) from exc
    return Done(
        f"held {amount} credits for {count} images (hold {hold.id})",
        {"holdId": hold.id, "images": str(count), "digest": fingerprint},
        batch=BatchStatus(total=count, digest=fingerprint, pending=count, progress=f"0/{count}"),
    )


FETCHES = 8  # a list's URLs Storage is asked to fetch at once


async def upload(call: Call) -> Done | Waiting:
    if _source(call).prefix is not None:
        return Done(f"the batch's {_total(call)} images are in Storage {_named(call)}")
    _, entries = await read_list(call)
    urls = [e for e in entries if e.url is not None]
    gate = asyncio.Semaphore(FETCHES)

    async def fetch(entry: imagelist.Entry) -> storage.StoredObject:
        async with gate:
            return await _ingest(call, entry)

    answers = await asyncio.gather(*(fetch(e) for e in urls), return_exceptions=True)
    # An unknown outcome first: the step is retried, each URL under its key, before a refusal
    # fails the job (and compensation deletes what was fetched, none of it still in flight).
    _raise_first([a for a in answers if not isinstance(a, StepFailed)], "InputRefused")
    for answer in answers:
        if isinstance(answer, StepFailed):
            raise answer
    return Done(
        f"the batch's {len(entries)} images are in Storage ({len(urls)} fetched from their URLs)",
        {"fetched": str(len(urls))},
    )


def fetch_request(job: Job, entry: imagelist.Entry) -> storage.IngestRequest:
    """A list's URL as Storage is asked to fetch it: into an input of the job's (its compensation
    deletes it), under the image's key (a retry fetches nothing twice)."""
    assert entry.url is not None
    return storage.IngestRequest(
        key=input_key(job.uid, entry.item),
        url=entry.url,
        account=job.spec.account,
        job_id=job.uid,
        state="committed",
    )


async def _ingest(call: Call, entry: imagelist.Entry) -> storage.StoredObject:
    cfg = call.cfg
    body = fetch_request(call.job, entry)
    try:
        return await call.svc.storage.fetch(
            storage.StoredObject,
            "POST",
            "/v1/ingest",
            timeout=cfg.call_timeout_seconds * 6,
            json=body.wire(),
        )
    except Refused as exc:
        reason = "StorageFull" if exc.status == 507 else "InputRefused"
        raise StepFailed(
            reason,
            f"image {entry.item} (line {entry.line}, {entry.url}): storage refused: {exc.detail or exc.kind}",
        ) from exc


async def schedule(call: Call) -> Done | Waiting:
    job, svc = call.job, call.svc
    spec = job.spec
    images = await images_of(call, strict=True)
    if _source(call).prefix is not None and digest(images) != job.ids()["digest"]:
        raise StepFailed(
            "InputsChanged",
            f"the images {_named(call)} changed after the job was accepted (one was "
            "deleted or replaced): nothing was run; create a new job",
        )
    batcher = svc.ai.bulk("/v1/bulk/tasks", ai.Task)
    for start, end in gathers(len(images)):
        calls = []
        for index in range(start, end):
            body = ai.TaskCreate(
                job_id=job.uid,
                account=spec.account,
                pipeline=spec.pipeline,
                params=spec.parameters,
                input_object_id=images[index].id,
                run_at=spec.run_at,
                item=index,
            )
            calls.append(
                batcher.call(
                    idempotency_key(job.uid, f"schedule:{index}"), same_bytes(body, runAt=spec.run_at)
                )
            )
        answers = await asyncio.gather(*calls, return_exceptions=True)
        _raise_first(answers, "SchedulingRefused")
    when = (
        "as soon as workers are free" if spec.run_at is None or spec.run_at <= job.now else iso(spec.run_at)
    )
    return Done(f"{len(images)} tasks scheduled, run {when}", {"tasks": str(len(images))})


def gathers(n: int) -> list[tuple[int, int]]:
    """The ranges of images ``[start, end)`` whose tasks the schedule step creates together, one
    after the other: the first :data:`FIRST`, then :data:`GATHER` at a time."""
    bounds = [0, *range(min(FIRST, n), n, GATHER), n]
    return [(start, end) for start, end in itertools.pairwise(bounds) if start < end]


def _raise_first(answers: list[Any], reason: str) -> None:
    """Of many items' answers: a crash first (it is the process's), then an unknown outcome (the
    step is retried, every item under its key), then a refusal (a definite no)."""
    for answer in answers:
        if isinstance(answer, BaseException) and not isinstance(answer, Exception):
            raise answer
    for answer in answers:
        if isinstance(answer, Ambiguous):
            raise answer
    for answer in answers:
        if isinstance(answer, Refused):
            raise refused(reason, answer) from answer
        if isinstance(answer, Exception):
            raise answer


async def counts_of(call: Call) -> ai.JobTaskCounts:
    job = call.job
    if job.counts is not None:
        return job.counts
    found = await call.svc.ai.fetch(
        ai.TaskCounts, "POST", "/v1/tasks/counts", json=ai.TaskCountsQuery(job_ids=[job.uid]).wire()
    )
    return found.items[0]


async def process(call: Call) -> Done | Waiting:
    job, svc = call.job, call.svc
    total = _total(call)
    counts = await counts_of(call)
    status = progress(total, counts, job.ids().get("digest"))
    limit = job.spec.max_failed_images
    stage = core.batch_stage(counts, limit, job.spec.run_at, job.now)
    if stage == "cancel-rest":
        # The key names what was seen: a retry replays, a task that appeared since (a creation
        # whose answer was lost, committed late) gets a call of its own.
        key = idempotency_key(job.uid, f"cancel-rest:{counts.total}:{counts.scheduled + counts.running}")
        await svc.ai.fetch(ai.JobTasksCancelled, "POST", f"/v1/jobs/{job.uid}/tasks/cancel", key=key)
        return Waiting(
            "CancellingRest",
            f"{counts.failed} images failed, more than maxFailedImages ({limit}): the rest are cancelled",
            batch=status,
        )
    if stage == "waiting-for-run-at":
        assert job.spec.run_at is not None
        return Waiting("WaitingForRunAt", f"{total} images run at {iso(job.spec.run_at)}", batch=status)
    if stage == "running":
        return Waiting(
            "Processing",
            f"{counts.succeeded}/{total} images done, {counts.failed} failed, {status.pending} to go",
            batch=status,
        )
    if counts.total != total:
        raise StepFailed("TaskMissing", f"AI holds {counts.total} tasks for the {total} images")
    lines, _ = await outcomes(call)
    ended = ended_of(status, lines)
    final = ended.final
    if final.succeeded == 0:
        raise StepFailed(
            "ProcessingFailed",
            f"none of the {total} images succeeded ({final.failed} failed, {final.cancelled} cancelled)",
        )
    return Done(
        f"{final.succeeded} of {total} images processed ({final.failed} failed, {final.cancelled} cancelled)",
        {"succeeded": str(final.succeeded), "failed": str(final.failed), "cancelled": str(final.cancelled)},
        batch=final,
        ended=ended,
    )


def _final(status: BatchStatus, lines: list[ManifestLine]) -> BatchStatus:
    """The counts once every image has ended, as the manifest tells them (a succeeded task whose
    result Storage does not hold committed counts as failed: it is not delivered, not charged)."""
    failures = [line for line in lines if line.state == "failed"]
    succeeded = sum(1 for line in lines if line.state == "succeeded")
    cancelled = sum(1 for line in lines if line.state == "cancelled")
    return status.model_copy(
        update={
            "succeeded": succeeded,
            "failed": len(failures),
            "cancelled": cancelled,
            "pending": 0,
            "progress": f"{succeeded}/{status.total}",
            "failures": [
                BatchFailure(item=f.item, input=f.input, reason=(f.reason or "")[:REASON])
                for f in failures[:SAMPLE]
            ],
        }
    )


async def job_results(call: Call) -> list[storage.StoredObject]:
    """The job's live result objects, page by page."""
    return await job_objects(call, "result")


async def job_objects(call: Call, kind: storage.ObjectKind) -> list[storage.StoredObject]:
    """The job's committed objects of one kind, page by page."""
    found: list[storage.StoredObject] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": call.cfg.batch_page_size}
        if cursor is not None:
            params["after"] = cursor
        page = await call.svc.storage.fetch(
            storage.JobObjects, "GET", f"/v1/jobs/{call.job.uid}/objects", params=params
        )
        found.extend(o for o in page.items if o.kind == kind and o.state == "committed")
        if page.next is None:
            return found
        cursor = page.next


async def outcomes(call: Call) -> tuple[list[ManifestLine], list[storage.StoredObject]]:
    """One line per image, in index order, from what AI and Storage hold once every task has
    ended: its input (key and object id), then its result object and sha256, or why not; and the
    job's live results they were read with. The inputs, the results and the tasks are read side
    by side (for a prefix batch, three listings; for an image list, the list, and the job's
    objects twice), none depending on another once every task has ended: a task's result is
    committed before its task is completed."""
    inputs, results, tasks = await asyncio.gather(
        images_of(call, strict=False), job_results(call), job_tasks(call)
    )
    keys = {o.id: o.key for o in inputs}
    by_id = {o.id: o for o in results}
    return [_line(task, keys, by_id) for task in tasks], results


def ended_of(status: BatchStatus, lines: list[ManifestLine]) -> Ended:
    """The outcomes as the delivery needs them: the manifest's bytes, the final counts, the
    results named."""
    return Ended(
        manifest="".join(line.dump() + "\n" for line in lines).encode(),
        final=_final(status, lines),
        named=frozenset(line.result for line in lines if line.result is not None),
    )


async def job_tasks(call: Call) -> list[ai.Task]:
    """The job's tasks in image order, page by page."""
    found: list[ai.Task] = []
    after: int | None = None
    while True:
        params: dict[str, Any] = {"limit": call.cfg.batch_page_size}
        if after is not None:
            params["after"] = after
        page = await call.svc.ai.fetch(ai.TaskPage, "GET", f"/v1/jobs/{call.job.uid}/tasks", params=params)
        found.extend(page.items)
        if page.next is None:
            return found
        after = page.next


def _line(task: ai.Task, keys: dict[str, str], results: dict[str, storage.StoredObject]) -> ManifestLine:
    item = task.item if task.item is not None else -1
    line = ManifestLine(
        item=item, key=keys.get(task.input_object_id), input=task.input_object_id, state="failed"
    )
    result = results.get(task.result_object_id or "")
    if task.state == "succeeded" and result is not None:
        return line.model_copy(
            update={"state": "succeeded", "result": result.id, "sha256": result.sha256, "size": result.size}
        )
    if task.state == "succeeded":
        why = f"result {task.result_object_id} is not in Storage"
    elif task.state == "cancelled":
        return line.model_copy(
            update={"state": "cancelled", "reason": (task.error or "cancelled before it ran")[:REASON]}
        )
    else:
        why = task.error or task.state
    return line.model_copy(update={"reason": why[:REASON]})


async def capture(call: Call) -> Done | Waiting:
    job, svc = call.job, call.svc
    ids = job.ids()
    hold_id, images = ids["holdId"], int(ids["succeeded"])
    amount = core.batch_charge(job.spec.price, images, int(ids["images"]))
    try:
        hold = await bulk_call(
            svc.payment,
            payment.Hold,
            f"/v1/holds/{hold_id}/capture",
            "/v1/bulk/captures",
            idempotency_key(job.uid, "capture"),
            {"amount": amount},
            {"holdId": hold_id, "amount": amount},
        )
    except Refused as exc:
        raise refused("CaptureRefused", exc) from exc
    if hold.settled_at is None:
        raise Refused("payment", 200, "contract-violation", f"captured hold {hold.id} has no settledAt", {})
    return Done(
        f"charged {hold.captured_amount} credits for {images} images; {hold.released_amount} released",
        {"capturedAt": hold.settled_at.isoformat()},
    )


MANIFEST_TYPE = "application/x-ndjson"


def manifest_key(uid: str) -> str:
    return f"manifest:{uid}"


async def deliver(call: Call) -> Done | Waiting:
    job, svc = call.job, call.svc
    ended = job.ended
    if ended is not None and ended.final.succeeded == int(job.ids()["succeeded"]):
        # What the process step read, and capture charged for (the engine kept it); the job's
        # results are listed again, so that one stored since is deleted as a stray.
        results = await job_results(call)
    else:  # a restarted operator: read again
        lines, results = await outcomes(call)
        total = len(lines)
        ended = ended_of(job.status.batch or progress(total, ai.JobTaskCounts.of(job.uid, {}, None)), lines)
    content = ended.manifest
    key = manifest_key(job.uid)
    params = {"account": job.spec.account, "jobId": job.uid, "kind": "manifest", "state": "committed"}
    try:
        manifest = await svc.storage.fetch(
            storage.StoredObject,
            "PUT",
            f"/v1/objects/{key}",
            content=content,
            params=params,
            headers={"Content-Type": MANIFEST_TYPE},
        )
    except Refused as exc:
        if exc.kind != "key-taken":
            raise
        # Stored by an earlier attempt (the outcomes cannot change once every task has ended,
        # so it says the same): that one is the manifest.
        manifest = await svc.storage.fetch(storage.StoredObject, "GET", f"/v1/by-key/{key}")
    await delete_strays(call, results, ended.named)
    result = await record_delivery(call, manifest.id, manifest.sha256, manifest.size)
    final = ended.final
    delivered = final.succeeded
    return Done(
        f"{delivered} of {final.total} images delivered; the manifest lists each",
        {"manifestObjectId": manifest.id},
        result=result,
        batch=final,
    )


async def delete_strays(call: Call, results: list[storage.StoredObject], named: AbstractSet[str]) -> None:
    """Delete each of the job's results (as the delivery read them) the manifest does not name
    (an image cancelled past maxFailedImages whose worker stored it before it heard): not the
    user's, as compensation would delete it. One stored after that read stays; the auditor
    reports it (needs-attention)."""
    job = call.job
    for stray in results:
        if stray.id not in named:
            await call.svc.storage.fetch(
                storage.StoredObject,
                "POST",
                f"/v1/objects/{stray.id}/delete",
                key=idempotency_key(job.uid, f"delete-stray:{stray.id}"),
            )


async def cancel_tasks(call: Call) -> Done | Waiting:
    """Cancel every task of the batch not yet ended, and wait until none runs (a running image
    may still store its result before its worker hears; the objects are deleted only after)."""
    job, svc = call.job, call.svc
    counts = await counts_of_now(call)
    open_ = counts.scheduled + counts.running
    if open_ > 0:
        # The key names what was seen: a retry replays, a task that appeared since (a creation
        # whose answer was lost, committed late) gets a call of its own.
        key = idempotency_key(job.uid, f"cancel-task:{counts.total}:{open_}")
        await svc.ai.fetch(ai.JobTasksCancelled, "POST", f"/v1/jobs/{job.uid}/tasks/cancel", key=key)
        counts = await counts_of_now(call)
    if counts.running > 0:
        return Waiting(
            "TaskStopping", f"{counts.running} images are cancelled, their workers have not stopped yet"
        )
    return Done(f"cancelled the batch's tasks ({counts.cancelled} cancelled of {counts.total})")


async def counts_of_now(call: Call) -> ai.JobTaskCounts:
    found = await call.svc.ai.fetch(
        ai.TaskCounts, "POST", "/v1/tasks/counts", json=ai.TaskCountsQuery(job_ids=[call.job.uid]).wire()
    )
    return found.items[0]
