"""Finished jobs go away on time (``spec.ttlSecondsAfterFinished``, the operator's default), and
the auditor judges a finished job once, not on every pass."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx
import pytest
from aijobs_operator.auditor import Audited, Auditor, audit_due
from aijobs_operator.config import OperatorSettings
from aijobs_operator.engine import Reconciler
from aijobs_operator.kube import JOBS, ApiException, Resource
from aijobs_operator.steps import Services
from aijobs_operator.ttl import Finished, TtlCollector, due, expires_at, finished

from aijobs.wire.client import ServiceClient
from aijobs.wire.tokens import TokenSigner

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
DONE = "2030-01-01T11:00:00Z"  # an hour before NOW


def job(
    name: str = "j",
    uid: str = "u-1",
    phase: str | None = "Delivered",
    completed: str | None = DONE,
    ttl: int | None = None,
    conditions: list[dict[str, Any]] | None = None,
    deleting: bool = False,
    rv: str = "7",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"account": "acme", "pipeline": "grayscale", "price": 3, "input": {}}
    if ttl is not None:
        spec["ttlSecondsAfterFinished"] = ttl
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    if completed:
        status["completedAt"] = completed
    if conditions:
        status["conditions"] = conditions
    meta: dict[str, Any] = {"namespace": "team-a", "name": name, "uid": uid, "resourceVersion": rv}
    if deleting:
        meta["deletionTimestamp"] = DONE
    return {"metadata": meta, "spec": spec, "status": status}


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("body", "when"),
    [
        pytest.param(job(), _at(DONE), id="delivered"),
        pytest.param(job(phase="Failed"), _at(DONE), id="failed"),
        pytest.param(job(phase="Scheduled"), None, id="in-flight"),
        pytest.param(job(phase=None, completed=None), None, id="not-claimed"),
        pytest.param(job(deleting=True), None, id="already-deleting"),
        pytest.param(
            job(
                completed=None,
                conditions=[
                    {"type": "Charged", "status": "True", "lastTransitionTime": "2030-01-01T11:30:00Z"},
                    {"type": "Complete", "status": "True", "lastTransitionTime": "2030-01-01T10:00:00Z"},
                ],
            ),
            _at("2030-01-01T10:00:00Z"),
            id="no-completedAt-the-Complete-condition",
        ),
        pytest.param(
            job(
                phase="Failed",
                completed=None,
                conditions=[
                    {"type": "Complete", "status": "False", "lastTransitionTime": "2030-01-01T11:59:00Z"},
                    {"type": "Failed", "status": "True", "lastTransitionTime": "2030-01-01T09:00:00Z"},
                ],
            ),
            _at("2030-01-01T09:00:00Z"),
            id="no-completedAt-the-Failed-condition",
        ),
        pytest.param(job(completed=None), None, id="finished-nobody-knows-when"),
        pytest.param(job(completed="yesterday"), None, id="unreadable-time"),
    ],
)
def test_when_a_job_finished(body: dict[str, Any], when: dt.datetime | None) -> None:
    view = finished(body)
    assert (view.finished_at if view else None) == when


FINISHED = _at(DONE)


def _view(ttl: int | None, finished_at: dt.datetime = FINISHED, name: str = "j") -> Finished:
    return Finished("team-a", name, f"uid-{name}", finished_at, ttl)


@pytest.mark.parametrize(
    ("own", "default", "is_due"),
    [
        pytest.param(None, None, False, id="no-ttl-no-default-kept-forever"),
        pytest.param(0, None, True, id="zero-right-after-finishing"),
        pytest.param(3600, None, True, id="exactly-at-the-ttl"),
        pytest.param(3601, None, False, id="one-second-early"),
        pytest.param(None, 3600, True, id="the-default"),
        pytest.param(None, 7200, False, id="the-default-not-yet"),
        pytest.param(7200, 0, False, id="its-own-ttl-wins-over-a-shorter-default"),
        pytest.param(0, 7200, True, id="its-own-ttl-wins-over-a-longer-default"),
    ],
)
def test_which_finished_jobs_are_due(own: int | None, default: int | None, is_due: bool) -> None:
    view = _view(own)
    assert (due([view], default, NOW) == [view]) is is_due
    at = expires_at(view, default)
    assert (at is None) is (own is None and default is None)


def test_the_longest_overdue_go_first() -> None:
    late, later, not_yet = (
        _view(0, NOW - dt.timedelta(hours=2), "late"),
        _view(0, NOW - dt.timedelta(hours=1), "later"),
        _view(60, NOW, "not-yet"),
    )
    assert due([not_yet, later, late], None, NOW) == [late, later]


class FakeKube:
    """The writes the TTL and the auditor make, against a dict of stored jobs."""

    def __init__(self, *bodies: dict[str, Any]) -> None:
        self.stored = {(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in bodies}
        self.writes: list[str] = []

    async def delete(self, namespace: str | None, name: str, uid: str, resource: Resource = JOBS) -> bool:
        self.writes.append(f"delete {name}")
        body = self.stored.get((namespace or "", name))
        if body is None or body["metadata"]["uid"] != uid:
            return False
        del self.stored[(namespace or "", name)]
        return True

    async def patch_status(
        self,
        namespace: str | None,
        name: str,
        status: dict[str, Any],
        resource: Resource = JOBS,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        self.writes.append(f"status {name}")
        body = self.stored[(namespace or "", name)]
        if resource_version is not None and resource_version != body["metadata"]["resourceVersion"]:
            raise ApiException(status=409)
        body["status"] = {**body["status"], **status}
        body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
        return {**body, "metadata": dict(body["metadata"])}

    async def event(self, body: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        self.writes.append(f"event {body['metadata']['name']}")


def test_the_collector_deletes_only_due_jobs_and_never_a_namesake() -> None:
    """A job re-created under a due job's name (another uid) is not deleted for it; a job not yet
    judged by the auditor waits."""
    stored_new = job("reused", uid="u-new", completed=None, phase="Pending")
    kube = FakeKube(
        job("due", uid="u-due", ttl=0), job("kept"), stored_new, job("unjudged", uid="u-3", ttl=0)
    )
    cache = [
        job("due", uid="u-due", ttl=0),
        job("kept"),
        job("reused", uid="u-old", ttl=0),
        job("unjudged", "u-3", ttl=0),
    ]
    collector = TtlCollector(
        kube, lambda: cache, None, lambda: NOW, 1.0, ready=lambda b: b["metadata"]["uid"] != "u-3"
    )
    deleted = asyncio.run(collector.collect())
    assert [j.name for j in deleted] == ["due"]
    assert set(kube.stored) == {("team-a", "kept"), ("team-a", "reused"), ("team-a", "unjudged")}
    assert kube.stored[("team-a", "reused")] is stored_new
    assert sorted(kube.writes) == ["delete due", "delete reused"]  # no Event, no status write


@pytest.mark.parametrize(
    ("last", "rv", "now", "again"),
    [
        pytest.param(None, "7", NOW, True, id="never-audited"),
        pytest.param(Audited("7", NOW, "consistent"), "7", NOW, False, id="unchanged"),
        pytest.param(Audited("7", NOW, "consistent"), "8", NOW, True, id="changed-since"),
        pytest.param(Audited("7", NOW, "repaired"), "7", NOW, True, id="repaired-see-it-took"),
        pytest.param(Audited("7", NOW, "needs-attention"), "7", NOW, False, id="reported-unchanged"),
        pytest.param(
            Audited("7", NOW, "consistent"), "7", NOW + dt.timedelta(days=1), True, id="recheck-after-a-day"
        ),
    ],
)
def test_when_the_auditor_judges_a_job_again(
    last: Audited | None, rv: str, now: dt.datetime, again: bool
) -> None:
    assert audit_due(job(rv=rv), last, now, dt.timedelta(days=1)) is again


def _services(reads: list[str], held: list[dict[str, Any]] | None = None) -> Services:
    """Payment, Storage and AI that hold nothing for any job (what a job failed before anything
    was held leaves) but the active holds in ``held``, counting the requests they answer. A
    release settles the hold it names."""
    held = [] if held is None else held

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        reads.append(f"{request.method} {path}")
        uid = path.split("/")[3] if "/jobs/" in path else ""
        if path == "/v1/holds":
            assert request.url.params["state"] == "active"
            return httpx.Response(
                200, json={"items": [h for h in held if h["state"] == "active"], "next": None}
            )
        if path.endswith("/release"):
            hold = next(h for h in held if h["id"] == path.split("/")[3])
            hold.update(state="released", settledAt=DONE, releasedAmount=hold["amount"])
            return httpx.Response(200, json=hold)
        if path.endswith("/charges"):
            holds = [h for h in held if h["jobId"] == uid]
            return httpx.Response(200, json={"jobId": uid, "charged": 0, "holds": holds, "entries": []})
        if path.endswith("/objects"):
            return httpx.Response(200, json={"jobId": uid, "items": []})
        return httpx.Response(200, json={"items": []})

    signer = TokenSigner("operator", "test-secret-0123456789abcdef-0123456789")

    def client(name: str) -> ServiceClient:
        return ServiceClient(name, f"http://{name}", signer, transport=httpx.MockTransport(answer))

    return Services(*(client(n) for n in ("auth", "payment", "storage", "ai", "main")))


READS = ["GET /v1/jobs/u-1/charges", "GET /v1/jobs/u-1/objects", "POST /v1/tasks/query"]
HELD = "GET /v1/holds"  # what Payment holds now: one read a pass, whatever the number of jobs


def _auditing(kube: FakeKube, reads: list[str], held: list[dict[str, Any]] | None = None) -> Auditor:
    cfg = OperatorSettings(secret="test-secret-0123456789abcdef-0123456789", metrics_port=0)
    reconciler = Reconciler(cfg, _services(reads, held), kube, clock=lambda: NOW)
    return Auditor(cfg, reconciler)


def test_a_finished_job_is_audited_once_and_costs_no_write_when_all_agree() -> None:
    """Three reads (Payment, Storage, AI) on the first pass; none for the job on the next while
    it does not change; no status write, no Event. A change to the job (a person's annotation,
    say) has it judged again."""

    async def scenario() -> tuple[list[str], list[str], list[str], list[str]]:
        kube = FakeKube(job("nothing-held", phase="Failed"))
        reads: list[str] = []
        auditor = _auditing(kube, reads)
        auditor.reconciler.cache[("team-a", "nothing-held")] = job("nothing-held", phase="Failed")
        first = await auditor.audit_pass()
        after_first = list(reads)
        second = await auditor.audit_pass()
        after_second = reads[len(after_first) :]
        auditor.reconciler.cache[("team-a", "nothing-held")] = job("nothing-held", phase="Failed", rv="8")
        await auditor.audit_pass()
        return [*first.values(), *second.values()], after_first, after_second, [*reads, *kube.writes]

    verdicts, first, second, everything = asyncio.run(scenario())
    assert verdicts == ["consistent"]
    assert sorted(first) == sorted([HELD, *READS])
    assert second == [HELD]  # the second pass asked nothing about the job
    assert everything.count(HELD) == 3 and sorted(r for r in everything if r != HELD) == sorted(2 * READS)


def test_a_hold_placed_on_a_judged_job_is_released_on_the_next_pass() -> None:
    """A finished, judged job that Payment later holds credits for (an admin's or a replayed
    request's stray hold) is judged again on the very next pass, not after the daily recheck,
    and the hold released; then the job costs no reads again."""

    async def scenario() -> tuple[list[str], dict[str, str], list[str]]:
        failed = job("too-poor", phase="Failed")
        kube = FakeKube(failed)
        reads: list[str] = []
        held: list[dict[str, Any]] = []
        auditor = _auditing(kube, reads, held)
        auditor.reconciler.cache[("team-a", "too-poor")] = failed
        assert await auditor.audit_pass() == {"u-1": "consistent"}
        hold = {"id": "hold-1", "account": "acme", "jobId": "u-1", "amount": 3, "state": "active"}
        held.append({**hold, "expiresAt": DONE, "createdAt": DONE, "settledAt": None})
        mark = len(reads)
        verdicts = await auditor.audit_pass()
        repaired = reads[mark:]
        await auditor.audit_pass()  # sees the repair took
        mark = len(reads)
        await auditor.audit_pass()
        return repaired, verdicts, reads[mark:]

    repaired, verdicts, quiet = asyncio.run(scenario())
    assert verdicts == {"u-1": "repaired"}
    assert "POST /v1/holds/hold-1/release" in repaired
    assert quiet == [HELD]


def _twin_with_a_job() -> tuple[Any, dict[str, Any]]:
    from aijobs_dev.simulation.world import Faults, KubeTwin, World

    twin = KubeTwin(World(0, Faults()))  # no faults: no crash drawn mid-write
    body = job("twin", uid="u-twin", phase=None, completed=None)
    twin.create(body)
    return twin, twin.objects[("team-a", "twin")]


def test_the_twin_refuses_a_status_write_on_a_stale_resource_version() -> None:
    """The simulator's KubeTwin answers ``patch_status(..., resource_version=)`` as the API server
    does (tests/foundation/test_crd_on_apiserver.py proves the API server's answer)."""
    twin, stored = _twin_with_a_job()
    seen = stored["metadata"]["resourceVersion"]
    written = asyncio.run(twin.patch_status("team-a", "twin", {"phase": "Pending"}, resource_version=seen))
    assert written["metadata"]["resourceVersion"] != seen
    with pytest.raises(ApiException) as refused:
        asyncio.run(twin.patch_status("team-a", "twin", {"phase": "Failed"}, resource_version=seen))
    assert refused.value.status == 409
    assert stored["status"]["phase"] == "Pending"


def test_the_twin_deletes_by_uid_only() -> None:
    twin, _ = _twin_with_a_job()
    assert asyncio.run(twin.delete("team-a", "twin", "another-uid")) is False
    assert ("team-a", "twin") in twin.objects
    assert asyncio.run(twin.delete("team-a", "twin", "u-twin")) is True
    assert ("team-a", "twin") not in twin.objects  # no finalizer: gone at once
    assert asyncio.run(twin.delete("team-a", "twin", "u-twin")) is False
