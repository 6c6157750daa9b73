"""A job gone from Kubernetes while Payment still holds credits for it: which jobs count as gone,
and what is undone for them, in which order (the rules the auditor runs; the simulator runs them
against late commits in ``tests/simulation``)."""

from __future__ import annotations

import asyncio
import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest
import urllib3
from aijobs_operator.auditor import Auditor, gone_jobs
from aijobs_operator.config import OperatorSettings
from aijobs_operator.kube import ApiException

from aijobs.api.ai import JobTaskCounts, Task
from aijobs.api.payment import Hold, HoldPage
from aijobs.api.storage import StoredObject
from aijobs.api.v1alpha1 import AIImageJobStatus
from aijobs.consistency import JobRecords, findings, gone_job_leftovers

T = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)


def test_a_job_seen_deleted_is_gone_at_once_one_never_known_on_its_second_pass() -> None:
    held = {"live", "seen-deleted", "unknown"}
    gone, suspects = gone_jobs(held, known={"live"}, deleted={"seen-deleted"}, suspects=set())
    assert (gone, suspects) == ({"seen-deleted"}, {"unknown"})
    gone, suspects = gone_jobs(held - gone, known={"live"}, deleted={"seen-deleted"}, suspects=suspects)
    assert (gone, suspects) == ({"unknown"}, set())


def test_a_suspect_that_turns_up_known_is_not_gone() -> None:
    gone, suspects = gone_jobs({"late"}, known={"late"}, deleted=set(), suspects={"late"})
    assert (gone, suspects) == (set(), set())


def _hold(state: str = "active", hold_id: str = "h1") -> Hold:
    return Hold.model_validate(
        {"id": hold_id, "account": "acme", "jobId": "j1", "amount": 3, "state": state,
         "expiresAt": T.isoformat(), "createdAt": T.isoformat(), "settledAt": None}
    )  # fmt: skip


def _object(oid: str, state: str = "committed") -> StoredObject:
    return StoredObject.model_validate(
        {"id": oid, "key": f"k-{oid}", "account": "acme", "jobId": "j1", "kind": "input",
         "sha256": "0" * 64, "size": 1, "contentType": "image/png", "width": 1, "height": 1,
         "state": state, "createdAt": T.isoformat()}
    )  # fmt: skip


def _counts(running: int = 0) -> JobTaskCounts:
    return JobTaskCounts(
        job_id="j1",
        total=1,
        scheduled=0,
        running=running,
        succeeded=0,
        failed=0,
        cancelled=1 - running,
        updated_at=T,
    )


def test_the_holds_go_last_after_the_tasks_stopped_and_the_objects_went() -> None:
    records = JobRecords([_hold()], [_object("o1"), _object("o2"), _object("o0", "deleted")], None)
    assert gone_job_leftovers(records, _counts(running=1)) == []  # a worker may still store
    (delete,) = gone_job_leftovers(records, _counts())
    assert delete.repair is not None and delete.repair.startswith("delete-job-objects:j1/")
    assert "2 object(s)" in delete.detail
    cleaned = JobRecords([_hold()], [_object("o1", "deleted"), _object("o2", "deleted")], None)
    assert [f.repair for f in gone_job_leftovers(cleaned, _counts())] == ["release-hold:h1"]
    settled = JobRecords([_hold("released")], [], None)
    assert gone_job_leftovers(settled, _counts()) == []


def test_a_charged_job_keeps_its_result_and_only_a_stray_hold_is_released() -> None:
    """A job whose hold was active when the auditor read the holds, and which its deletion then
    captured, delivered and let go: it was charged, so its result is the user's and stays (the
    50-job campaign once met this as "charged, but the result is gone")."""
    objects = [_object("in"), _object("result")]
    charged = JobRecords([_hold("captured")], objects, None)
    assert gone_job_leftovers(charged, _counts()) == []
    beside = JobRecords([_hold("captured"), _hold("active", "h2")], objects, None)
    assert [f.repair for f in gone_job_leftovers(beside, _counts())] == ["release-hold:h2"]


def _succeeded(result: str) -> Task:
    return Task.model_validate(
        {"id": "t1", "jobId": "j1", "account": "acme", "pipeline": "grayscale", "params": {},
         "inputObjectId": "in", "runAt": T.isoformat(), "state": "succeeded", "attempts": 1,
         "maxAttempts": 3, "reruns": 0, "cancelRequested": False, "resultObjectId": result,
         "result": None, "error": None, "updatedAt": T.isoformat()}
    )  # fmt: skip


@pytest.mark.parametrize(
    ("status", "records", "repairs"),
    [
        pytest.param(
            {"phase": "Failed"},
            JobRecords([_hold()], [_object("in"), _object("result")], None),
            ["delete-object:in", "delete-object:result", "release-hold:h1"],
            id="failed: its objects, then its hold",
        ),
        pytest.param(
            {"phase": "Delivered", "result": {"objectId": "result"}},
            JobRecords(
                [_hold(hold_id="h1"), _hold(hold_id="h2")],
                [_object("in"), _object("result"), _object("extra").model_copy(update={"kind": "result"})],
                _succeeded("result"),
            ),
            ["capture-hold:h1", "delete-object:extra", "release-hold:h2"],
            id="delivered: the capture first, the stray hold last",
        ),
    ],
)
def test_a_finished_jobs_holds_are_released_after_its_other_repairs(
    status: dict[str, Any], records: JobRecords, repairs: list[str]
) -> None:
    """The auditor stops at a repair that fails: a hold released first, a failed delete after it
    would leave the object to no one once the job is gone (no active hold brings it back)."""
    found = findings(AIImageJobStatus.model_validate(status), 3, records)
    assert [f.repair for f in found] == repairs


class _Operator:
    """What an auditor pass reads: the reconciler's cache (here still empty, as a process's that
    has just started), the holds Payment answers, and the API server's LIST; in call order."""

    def __init__(self, stored: set[str] | Exception) -> None:
        self.calls: list[str] = []
        self.cache: dict[Any, Any] = {}
        self.gone: set[str] = set()
        self.stored = stored
        self.svc = SimpleNamespace(payment=self)
        self.kube = self

    def clock(self) -> dt.datetime:
        return T

    async def fetch(self, model: type[HoldPage], method: str, path: str, **_: Any) -> HoldPage:
        self.calls.append(f"{method} {path}")
        return HoldPage(items=[_hold()], next=None)  # a hold of job j1

    async def job_uids(self) -> set[str]:
        self.calls.append("LIST aiimagejobs")
        if isinstance(self.stored, Exception):
            raise self.stored
        return self.stored


def _two_passes(operator: _Operator, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    cleaned: list[str] = []

    async def clean_up(self: Auditor, uid: str) -> str:
        cleaned.append(uid)
        return "repaired"

    monkeypatch.setattr(Auditor, "clean_up_gone", clean_up)
    auditor = Auditor(OperatorSettings(), operator)  # type: ignore[arg-type]
    assert asyncio.run(auditor.audit_pass()) == {} and operator.calls == ["GET /v1/holds"]
    asyncio.run(auditor.audit_pass())  # j1 unknown for the second pass in a row: gone?
    return cleaned


def test_a_held_job_missing_from_a_new_processs_cache_but_stored_is_not_undone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    operator = _Operator(stored={"j1", "another"})
    assert _two_passes(operator, monkeypatch) == []
    # The holds first, then the LIST: a job held for existed before the holds were read.
    assert operator.calls == ["GET /v1/holds", "GET /v1/holds", "LIST aiimagejobs"]


def test_a_held_job_the_api_server_does_not_store_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _two_passes(_Operator(stored={"another"}), monkeypatch) == ["j1"]


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(ApiException(status=503), id="api-server-error"),
        pytest.param(urllib3.exceptions.ProtocolError("connection reset"), id="connection-reset"),
        pytest.param(urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), id="timeout"),
    ],
)
def test_kubernetes_not_answering_defers_the_clean_up(
    failure: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _two_passes(_Operator(stored=failure), monkeypatch) == []
