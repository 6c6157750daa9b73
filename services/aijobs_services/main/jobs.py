"""AIImageJob resources as Main API builds and shows them: pure functions over plain data."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from aijobs.api.main import JobView
from aijobs.api.v1alpha1 import API_VERSION, KIND

LABEL_ACCOUNT = "aijobs.io/account"
LABEL_USER = "aijobs.io/user"
ANNOTATION_REQUEST = "aijobs.io/request-sha256"


def job_name(user: str, key: str) -> str:
    """One Idempotency-Key of one user always names the same job: a retry can't make a second."""
    return "job-" + hashlib.sha256(f"{user}\0{key}".encode()).hexdigest()[:16]


def request_digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def manifest(
    *,
    name: str,
    account: str,
    user: str,
    pipeline: str,
    parameters: dict[str, Any],
    price: int,
    job_input: dict[str, Any],
    run_at: dt.datetime | None,
    deadline: dt.datetime,
    digest: str,
    max_failed_images: int | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "account": account,
        "pipeline": pipeline,
        "parameters": parameters,
        "price": price,
        "input": job_input,
        "deadline": deadline.isoformat().replace("+00:00", "Z"),
    }
    if max_failed_images is not None:
        spec["maxFailedImages"] = max_failed_images
    if run_at is not None:
        spec["runAt"] = run_at.isoformat().replace("+00:00", "Z")
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "labels": {
                LABEL_ACCOUNT: account,
                LABEL_USER: user,
                "app.kubernetes.io/managed-by": "aijobs-main-api",
            },
            "annotations": {ANNOTATION_REQUEST: digest},
        },
        "spec": spec,
    }


def view(job: dict[str, Any]) -> JobView:
    """What a user sees of a job: read from the saga log (status), nothing else. Its records keep
    only the fields the log holds (dump it with ``exclude_unset``, as the routes do)."""
    status = job.get("status") or {}
    meta, spec = job["metadata"], job["spec"]
    # A batch's counts (null until the operator has counted its set); a single job's view stays
    # as it was, without the field.
    batch = {"batch": status.get("batch")} if (spec.get("input") or {}).get("batch") else {}
    return JobView.model_validate(
        {
            **batch,
            "id": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
            "createdAt": meta.get("creationTimestamp"),
            "pipeline": spec["pipeline"],
            "parameters": spec.get("parameters") or {},
            "price": spec["price"],
            "runAt": spec.get("runAt"),
            "deadline": status.get("deadline") or spec.get("deadline"),
            "phase": status.get("phase") or "Pending",
            "message": status.get("message"),
            "resultUrl": (status.get("result") or {}).get("url"),
            "conditions": status.get("conditions") or [],
            "steps": status.get("steps") or [],
            "compensations": status.get("compensations") or [],
            "audit": status.get("audit"),
        }
    )


def owned_by(job: dict[str, Any] | None, account: str) -> bool:
    """Whether ``job`` exists and belongs to ``account`` (another account's job is not shown)."""
    return job is not None and job["metadata"].get("labels", {}).get(LABEL_ACCOUNT) == account
