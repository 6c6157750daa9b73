"""The AIImageJob CRD as a user meets it through kubectl on a real API server."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Kubectl

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def _example(name: str = "upscale-inline.yaml") -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES[0].parent / name).read_text())


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_manifest_is_accepted(kubectl: Kubectl, path: Path) -> None:
    kubectl.run("apply", "-f", str(path), check=True)
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    job = kubectl.json("get", "aij", name)
    assert job["spec"]["retryPolicy"]["maxAttempts"] >= 1  # defaults were applied


def test_kubectl_get_shows_phase_pipeline_price_run_at_ready_and_age(kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", str(EXAMPLES[0].parent / "thumbnail-scheduled.yaml"), check=True)
    out = kubectl.run("get", "aij", check=True).stdout.splitlines()
    assert out[0].split() == ["NAME", "PHASE", "PIPELINE", "PRICE", "RUN-AT", "READY", "AGE"]
    assert out[1].split()[:4] == ["thumbnail-nightly", "thumbnail", "2", "2030-01-01T02:00:00Z"]


def test_kubectl_get_by_category_and_short_name(kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", str(EXAMPLES[0].parent / "resize-url.yaml"), check=True)
    for what in ("aij", "aijobs", "aiimagejobs.aijobs.io"):
        assert "resize-from-url" in kubectl.run("get", what, check=True).stdout


@pytest.mark.parametrize(
    ("field", "expect"),
    [
        pytest.param("aij.spec", "The credit account (tenant) that pays for the job", id="spec"),
        pytest.param("aij.spec.input", "Give exactly one of storageRef, url or inline", id="input"),
        pytest.param("aij.status.conditions", "Kubernetes-style conditions", id="conditions"),
    ],
)
def test_kubectl_explain_teaches_the_fields(kubectl: Kubectl, field: str, expect: str) -> None:
    out = kubectl.run("explain", field, check=True).stdout
    assert expect in " ".join(out.split())


def _with(change: dict[str, Any] | None = None, drop: str | None = None) -> dict[str, Any]:
    job = copy.deepcopy(_example())
    job["metadata"]["name"] = "bad"
    if drop:
        job["spec"].pop(drop)
    for key, value in (change or {}).items():
        job["spec"][key] = value
    return job


BAD = [
    pytest.param(_with(drop="account"), "spec.account: Required value", id="no-account"),
    pytest.param(_with({"account": "Acme_Corp"}), "spec.account: Invalid value", id="account-format"),
    pytest.param(_with(drop="input"), "spec.input: Required value", id="no-input"),
    pytest.param(
        _with({"input": {}}), "input needs exactly one of storageRef, url or inline", id="empty-input"
    ),
    pytest.param(
        _with({"input": {"url": "https://x.example/a.png", "storageRef": {"objectId": "obj-1"}}}),
        "input needs exactly one of storageRef, url or inline",
        id="two-inputs",
    ),
    pytest.param(_with({"input": {"url": "ftp://x.example/a.png"}}), "spec.input.url", id="url-scheme"),
    pytest.param(
        _with({"pipeline": "mine-bitcoin"}), 'spec.pipeline: Unsupported value: "mine-bitcoin"', id="pipeline"
    ),
    pytest.param(
        _with({"price": 0}),
        "spec.price: Invalid value: 0: spec.price in body should be greater than or equal to 1",
        id="price-zero",
    ),
    pytest.param(
        _with({"price": -5}), "spec.price in body should be greater than or equal to 1", id="price-negative"
    ),
    pytest.param(_with({"price": "ten"}), "spec.price", id="price-type"),
    pytest.param(_with({"runAt": "tomorrow at noon"}), "spec.runAt", id="run-at-format"),
    pytest.param(
        _with({"runAt": "2030-01-01T10:00:00Z", "deadline": "2030-01-01T09:00:00Z"}),
        "deadline must be after runAt",
        id="deadline-before-run-at",
    ),
    pytest.param(
        _with({"input": {"inline": {"contentType": "application/pdf", "data": "JVBERi0="}}}),
        'spec.input.inline.contentType: Unsupported value: "application/pdf"',
        id="inline-type",
    ),
    pytest.param(
        _with({"retryPolicy": {"initialBackoffSeconds": 30, "maxBackoffSeconds": 5}}),
        "maxBackoffSeconds must be at least initialBackoffSeconds",
        id="backoff-order",
    ),
    pytest.param(_with({"priority": "high"}), 'unknown field "spec.priority"', id="unknown-field"),
]


@pytest.mark.parametrize(("manifest", "message"), BAD)
def test_a_bad_manifest_is_refused_with_a_message_naming_the_problem(
    kubectl: Kubectl, manifest: dict[str, Any], message: str
) -> None:
    proc = kubectl.run("apply", "-f", "-", stdin=json.dumps(manifest))
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert kubectl.json("get", "aij")["items"] == []  # nothing was created


def test_spec_change_raises_generation_and_status_patch_does_not(kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", str(EXAMPLES[0].parent / "resize-url.yaml"), check=True)
    assert kubectl.json("get", "aij", "resize-from-url")["metadata"]["generation"] == 1
    kubectl.run("patch", "aij", "resize-from-url", "--type=merge", "-p", '{"spec":{"price":4}}', check=True)
    assert kubectl.json("get", "aij", "resize-from-url")["metadata"]["generation"] == 2

    status = {"status": {"phase": "Pending", "observedGeneration": 2}}
    kubectl.run(
        "patch",
        "aij",
        "resize-from-url",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
        check=True,
    )
    job = kubectl.json("get", "aij", "resize-from-url")
    assert job["metadata"]["generation"] == 2
    assert job["status"]["phase"] == "Pending"


def test_spec_is_frozen_once_the_operator_has_accepted_the_job(kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", str(EXAMPLES[0].parent / "resize-url.yaml"), check=True)
    kubectl.run(
        "patch",
        "aij",
        "resize-from-url",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"phase":"Charged"}}',
        check=True,
    )
    proc = kubectl.run("patch", "aij", "resize-from-url", "--type=merge", "-p", '{"spec":{"price":1}}')
    assert proc.returncode != 0
    assert "spec is immutable once the operator has accepted the job" in proc.stderr
    assert kubectl.json("get", "aij", "resize-from-url")["spec"]["price"] == 3
    # metadata stays editable: labels and annotations are the user's to change
    kubectl.run("label", "aij", "resize-from-url", "team=vision", check=True)


FULL_STATUS = {
    "phase": "Delivered",
    "observedGeneration": 1,
    "message": "delivered",
    "deadline": "2030-01-01T04:00:00Z",
    "startedAt": "2030-01-01T02:00:00Z",
    "completedAt": "2030-01-01T02:01:00Z",
    "reruns": 1,
    "conditions": [
        {
            "type": "Complete",
            "status": "True",
            "reason": "Delivered",
            "message": "ok",
            "lastTransitionTime": "2030-01-01T02:01:00Z",
            "observedGeneration": 1,
        },
        {
            "type": "Charged",
            "status": "True",
            "reason": "HoldPlaced",
            "message": "hold h-1",
            "lastTransitionTime": "2030-01-01T02:00:01Z",
            "observedGeneration": 1,
        },
    ],
    "steps": [
        {
            "name": "charge",
            "key": "uid-1:charge",
            "state": "Succeeded",
            "remoteIds": {"holdId": "h-1"},
            "attempts": 2,
            "lastError": "timeout",
            "startedAt": "2030-01-01T02:00:00Z",
            "finishedAt": "2030-01-01T02:00:01Z",
        },
    ],
    "compensations": [
        {"name": "release", "key": "uid-1:release", "state": "Succeeded", "attempts": 1},
    ],
    "result": {
        "objectId": "obj-9",
        "sha256": "ab" * 32,
        "size": 1234,
        "url": "http://storage/d/obj-9?sig=x",
        "urlExpiresAt": "2030-01-08T02:01:00Z",
    },
    "audit": {"verdict": "consistent", "findings": [], "checkedAt": "2030-01-01T02:05:00Z"},
    "kopf": {"progress": {"saga": {"retries": 1}}, "dummy": "2030"},
}


def test_every_status_field_the_operator_writes_survives_a_round_trip(kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", str(EXAMPLES[0].parent / "upscale-inline.yaml"), check=True)
    kubectl.run(
        "patch",
        "aij",
        "upscale-inline",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": FULL_STATUS}),
        check=True,
    )
    stored = kubectl.json("get", "aij", "upscale-inline")["status"]
    assert stored == FULL_STATUS  # nothing pruned, nothing altered


def test_a_status_field_outside_the_schema_is_pruned(kubectl: Kubectl) -> None:
    """The reason the test above matters: the API server silently drops unknown fields."""
    kubectl.run("apply", "-f", str(EXAMPLES[0].parent / "upscale-inline.yaml"), check=True)
    kubectl.run(
        "patch",
        "aij",
        "upscale-inline",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"phase":"Pending","notInSchema":1}}',
        check=True,
    )
    assert kubectl.json("get", "aij", "upscale-inline")["status"] == {"phase": "Pending"}
