"""The AIImageJob CRD as a user meets it through kubectl on a real API server."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Kubectl

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _example(name: str = "upscale-inline.yaml") -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES[0].parent / name).read_text())


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_manifest_is_accepted(kubectl: Kubectl, path: Path) -> None:
    kubectl.run("apply", "-f", str(path), check=True)
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    job = kubectl.json("get", "aij", name)
    assert job["spec"]["retryPolicy"]["maxAttempts"] >= 1  # defaults were applied


def test_kubectl_get_shows_phase_pipeline_price_run_at_ready_images_and_age(kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", str(EXAMPLES[0].parent / "thumbnail-scheduled.yaml"), check=True)
    out = kubectl.run("get", "aij", check=True).stdout.splitlines()
    assert out[0].split() == ["NAME", "PHASE", "PIPELINE", "PRICE", "RUN-AT", "READY", "IMAGES", "AGE"]
    assert out[1].split()[:4] == ["thumbnail-nightly", "thumbnail", "2", "2030-01-01T02:00:00Z"]


def test_kubectl_get_by_category_and_short_name(kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", str(EXAMPLES[0].parent / "resize-url.yaml"), check=True)
    for what in ("aij", "aijobs", "aiimagejobs.aijobs.io"):
        assert "resize-from-url" in kubectl.run("get", what, check=True).stdout


@pytest.mark.parametrize(
    ("field", "expect"),
    [
        pytest.param("aij.spec", "The credit account (tenant) that pays for the job", id="spec"),
        pytest.param(
            "aij.spec.input",
            "Give exactly one of storageRef, url, inline (one image) or batch (many)",
            id="input",
        ),
        pytest.param("aij.spec.input.batch", "Many images in one job (up to 100,000)", id="batch"),
        pytest.param("aij.spec.input.batch.prefix", "The Storage key prefix", id="batch-prefix"),
        pytest.param(
            "aij.spec.input.batch.imageList",
            "one image per line, each an object id of the account's or an http(s) URL",
            id="batch-image-list",
        ),
        pytest.param("aij.spec.maxFailedImages", "how many of its images may fail", id="max-failed"),
        pytest.param("aij.status.batch", "A batch's counts", id="batch-status"),
        pytest.param("aij.status.batch.failures", "A sample of the failures (at most 10)", id="failures"),
        pytest.param("aij.status.conditions", "Kubernetes-style conditions", id="conditions"),
        pytest.param(
            "aij.spec.ttlSecondsAfterFinished",
            "ttlSecondsAfterFinished limits the lifetime of a job that has finished",
            id="ttl",
        ),
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
        _with({"input": {}}), "input needs exactly one of storageRef, url, inline or batch", id="empty-input"
    ),
    pytest.param(
        _with({"input": {"url": "https://x.example/a.png", "storageRef": {"objectId": "obj-1"}}}),
        "input needs exactly one of storageRef, url, inline or batch",
        id="two-inputs",
    ),
    pytest.param(_with({"input": {"url": "ftp://x.example/a.png"}}), "spec.input.url", id="url-scheme"),
    pytest.param(
        _with({"input": {"batch": {"prefix": "acme/set/"}, "url": "https://x.example/a.png"}}),
        "input needs exactly one of storageRef, url, inline or batch",
        id="batch-and-url",
    ),
    pytest.param(
        _with({"input": {"batch": {"prefix": "acme set/*"}}}), "spec.input.batch.prefix", id="batch-prefix"
    ),
    pytest.param(
        _with({"maxFailedImages": 3}),
        "maxFailedImages applies only to a batch (input.batch)",
        id="policy-alone",
    ),
    pytest.param(
        _with({"input": {"batch": {"prefix": "acme/set/"}}, "maxFailedImages": -1}),
        "spec.maxFailedImages",
        id="policy-negative",
    ),
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
    # -- parameters, checked against the one schema the worker and AI share (generated CEL)
    pytest.param(
        _with({"pipeline": "grayscale", "parameters": {"width": 10}}),
        "parameters: grayscale takes no parameters",
        id="grayscale-width",
    ),
    pytest.param(
        _with({"parameters": {"size": 64}}), "parameters: upscale-x2 takes no parameters", id="upscale-size"
    ),
    pytest.param(_with({"pipeline": "resize"}), "parameters.width: resize needs it", id="resize-nothing"),
    pytest.param(
        _with({"pipeline": "resize", "parameters": {"width": 10}}),
        "parameters.height: resize needs it",
        id="resize-no-height",
    ),
    pytest.param(
        _with({"pipeline": "resize", "parameters": {"width": -1, "height": 5}}),
        "parameters.width: for resize it must be in [1, 8192]",
        id="resize-negative",
    ),
    pytest.param(
        _with({"pipeline": "resize", "parameters": {"width": 9000, "height": 5}}),
        "parameters.width: for resize it must be in [1, 8192]",
        id="resize-too-wide",
    ),
    pytest.param(
        _with({"pipeline": "resize", "parameters": {"width": 1.5, "height": 5}}),
        "spec.parameters.width in body must be of type integer",
        id="resize-fraction",
    ),
    pytest.param(
        _with({"pipeline": "resize", "parameters": {"width": "10", "height": 5}}),
        "spec.parameters.width in body must be of type integer",
        id="resize-string",
    ),
    pytest.param(
        _with({"pipeline": "resize", "parameters": {"width": 10, "height": 5, "antialias": "yes"}}),
        "spec.parameters.antialias in body must be of type boolean",
        id="resize-antialias",
    ),
    pytest.param(
        _with({"pipeline": "resize", "parameters": {"width": 10, "height": 5, "strength": 1}}),
        "parameters: resize takes width, height, antialias",
        id="resize-foreign",
    ),
    pytest.param(
        _with({"pipeline": "denoise", "parameters": {"strength": 0}}),
        "parameters.strength: for denoise it must be in (0, 3.0]",
        id="denoise-zero",
    ),
    pytest.param(
        _with({"pipeline": "denoise", "parameters": {"strength": 3.5}}),
        "parameters.strength: for denoise it must be in (0, 3.0]",
        id="denoise-strong",
    ),
    pytest.param(
        _with({"pipeline": "sharpen", "parameters": {"amount": 6}}),
        "parameters.amount: for sharpen it must be in (0, 5.0]",
        id="sharpen-amount",
    ),
    pytest.param(
        _with({"pipeline": "sharpen", "parameters": {"sigma": -1}}),
        "parameters.sigma: for sharpen it must be in (0, 5.0]",
        id="sharpen-sigma",
    ),
    pytest.param(
        _with({"pipeline": "thumbnail", "parameters": {"size": 8}}),
        "parameters.size: for thumbnail it must be in [16, 1024]",
        id="thumbnail-small",
    ),
    pytest.param(
        _with({"pipeline": "thumbnail", "parameters": {"size": 4096}}),
        "parameters.size: for thumbnail it must be in [16, 1024]",
        id="thumbnail-big",
    ),
    pytest.param(
        _with({"pipeline": "user-model"}), "parameters.model: user-model needs it", id="user-model-none"
    ),
    pytest.param(
        _with({"pipeline": "user-model", "parameters": {"model": "../etc/passwd"}}),
        "spec.parameters.model in body should match",
        id="user-model-path",
    ),
    pytest.param(
        _with({"parameters": {"foo": 1}}), 'unknown field "spec.parameters.foo"', id="unknown-parameter"
    ),
    # -- inputs
    pytest.param(
        _with({"input": {"inline": {"contentType": "image/png", "data": "QUJDRAA"}}}),
        "spec.input.inline.data in body should match",
        id="inline-not-whole-base64",
    ),
    pytest.param(
        _with({"input": {"inline": {"contentType": "image/png", "data": "QUJD RA=="}}}),
        "spec.input.inline.data in body should match",
        id="inline-space",
    ),
    pytest.param(
        _with({"input": {"inline": {"contentType": "image/png", "data": "QQ"}}}),
        "spec.input.inline.data",
        id="inline-too-short",
    ),
    pytest.param(
        _with({"input": {"inline": {"data": "QUJDRA=="}}}),
        "spec.input.inline.contentType: Required value",
        id="inline-no-type",
    ),
    pytest.param(
        _with({"input": {"storageRef": {}}}), "spec.input.storageRef.objectId: Required value", id="ref-no-id"
    ),
    pytest.param(
        _with({"input": {"storageRef": {"objectId": "../../x"}}}),
        "spec.input.storageRef.objectId in body should match",
        id="ref-path",
    ),
    pytest.param(
        _with({"input": {"url": "https://x.example/" + "a" * 2100}}), "spec.input.url", id="url-too-long"
    ),
    pytest.param(_with({"input": {"url": "javascript:alert(1)"}}), "spec.input.url", id="url-javascript"),
    pytest.param(_with({"input": {"url": "http://[::1/x.png"}}), "spec.input.url", id="url-unclosed-bracket"),
    pytest.param(_with({"input": {"url": "http://a]b/"}}), "spec.input.url", id="url-stray-bracket"),
    pytest.param(
        _with({"input": {"url": "https://[zz]/"}}), "spec.input.url", id="url-bracket-not-an-address"
    ),
    pytest.param(
        _with({"input": {"url": "https://[::1::2]/x"}}), "input.url: not a well-formed", id="url-bad-ipv6"
    ),
    pytest.param(
        _with({"input": {"url": "http://a.example:99999/x"}}), "input.url: not a well-formed", id="url-port"
    ),
    pytest.param(_with({"input": {"url": "http://u:p@a.example/x"}}), "spec.input.url", id="url-user-info"),
    # -- account, price, times, retry policy
    pytest.param(_with({"account": "a"}), "spec.account", id="account-too-short"),
    pytest.param(_with({"account": "x" * 64}), "spec.account", id="account-too-long"),
    pytest.param(_with({"account": "-acme"}), "spec.account", id="account-leading-dash"),
    pytest.param(
        _with({"price": 1_000_001}),
        "spec.price in body should be less than or equal to 1000000",
        id="price-huge",
    ),
    pytest.param(_with({"price": 2.5}), "spec.price", id="price-fraction"),
    pytest.param(_with({"deadline": "next week"}), "spec.deadline", id="deadline-format"),
    pytest.param(_with({"runAt": "2030-W01-1T10:00:00Z"}), "spec.runAt", id="run-at-week-date"),
    pytest.param(
        _with({"retryPolicy": {"maxAttempts": 0}}), "spec.retryPolicy.maxAttempts", id="attempts-zero"
    ),
    pytest.param(
        _with({"retryPolicy": {"maxAttempts": 1000}}), "spec.retryPolicy.maxAttempts", id="attempts-huge"
    ),
    pytest.param(
        _with({"retryPolicy": {"initialBackoffSeconds": 0}}),
        "spec.retryPolicy.initialBackoffSeconds",
        id="backoff-zero",
    ),
    pytest.param(_with({"ttlSecondsAfterFinished": -1}), "spec.ttlSecondsAfterFinished", id="ttl-negative"),
    pytest.param(
        _with({"ttlSecondsAfterFinished": "1h"}), "spec.ttlSecondsAfterFinished", id="ttl-not-seconds"
    ),
    pytest.param(
        _with({"input": {"batch": {"prefix": "acme/cat/", "imageList": "obj-1"}}}),
        "batch needs exactly one of prefix or imageList",
        id="batch-prefix-and-list",
    ),
    pytest.param(
        _with({"input": {"batch": {}}}), "batch needs exactly one of prefix or imageList", id="batch-empty"
    ),
    pytest.param(
        _with({"input": {"batch": {"imageList": "../etc/passwd"}}}),
        "spec.input.batch.imageList",
        id="batch-list-not-an-id",
    ),
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


def _accepted(kubectl: Kubectl, spec: dict[str, Any] | None = None) -> str:
    job = yaml.safe_load((EXAMPLES[0].parent / "resize-url.yaml").read_text())
    job["spec"].update(spec or {})
    kubectl.run("apply", "-f", "-", stdin=json.dumps(job), check=True)
    name = str(job["metadata"]["name"])
    status = '{"status":{"phase":"Delivered"}}'
    kubectl.run("patch", "aij", name, "--subresource=status", "--type=merge", "-p", status, check=True)
    return name


@pytest.mark.parametrize(
    ("before", "patch"),
    [
        pytest.param(None, {"ttlSecondsAfterFinished": 0}, id="set"),
        pytest.param({"ttlSecondsAfterFinished": 3600}, {"ttlSecondsAfterFinished": 60}, id="changed"),
        pytest.param({"ttlSecondsAfterFinished": 3600}, {"ttlSecondsAfterFinished": None}, id="removed"),
    ],
)
def test_the_ttl_may_change_once_the_job_is_accepted(
    kubectl: Kubectl, before: dict[str, Any] | None, patch: dict[str, Any]
) -> None:
    """As a Job's may: it decides when the finished job goes, not what the saga does or charges."""
    name = _accepted(kubectl, before)
    kubectl.run("patch", "aij", name, "--type=merge", "-p", json.dumps({"spec": patch}), check=True)
    assert (
        kubectl.json("get", "aij", name)["spec"].get("ttlSecondsAfterFinished")
        == patch["ttlSecondsAfterFinished"]
    )


@pytest.mark.parametrize(
    "patch",
    [
        pytest.param({"price": 1}, id="price"),
        pytest.param({"runAt": "2031-01-01T00:00:00Z"}, id="runAt-set"),
        pytest.param({"deadline": "2031-01-01T00:00:00Z"}, id="deadline-set"),
        pytest.param({"parameters": {"width": 10, "height": 10}}, id="parameters"),
        pytest.param({"retryPolicy": {"maxAttempts": 3}}, id="retryPolicy"),
        pytest.param({"input": {"url": "https://images.example/other.png"}}, id="input"),
        pytest.param({"price": 1, "ttlSecondsAfterFinished": 5}, id="price-beside-the-ttl"),
    ],
)
def test_only_the_ttl_may_change_once_the_job_is_accepted(kubectl: Kubectl, patch: dict[str, Any]) -> None:
    name = _accepted(kubectl)
    before = kubectl.json("get", "aij", name)["spec"]
    proc = kubectl.run("patch", "aij", name, "--type=merge", "-p", json.dumps({"spec": patch}))
    assert proc.returncode != 0
    assert "spec is immutable once the operator has accepted the job" in proc.stderr, proc.stderr
    assert "except ttlSecondsAfterFinished" in proc.stderr
    assert kubectl.json("get", "aij", name)["spec"] == before


def test_a_status_write_on_a_stale_resource_version_is_refused(kubectl: Kubectl, kube_api: Any) -> None:
    """``KubeWriter.patch_status(..., resource_version=)``: the write lands only on the version it
    was decided on; on the API server and in the simulator's twin alike, 409 otherwise."""
    import asyncio

    from aijobs_operator.kube import ApiException, ApiKubeWriter

    kubectl.run("apply", "-f", str(EXAMPLES[0].parent / "resize-url.yaml"), check=True)
    job = kubectl.json("get", "aij", "resize-from-url")
    seen = job["metadata"]["resourceVersion"]
    writer = ApiKubeWriter(kube_api)
    written = asyncio.run(
        writer.patch_status(kubectl.namespace, "resize-from-url", {"phase": "Pending"}, resource_version=seen)
    )
    assert written["status"]["phase"] == "Pending"
    assert written["metadata"]["resourceVersion"] != seen
    with pytest.raises(ApiException) as refused:  # decided on the version before that write
        asyncio.run(
            writer.patch_status(
                kubectl.namespace, "resize-from-url", {"phase": "Failed"}, resource_version=seen
            )
        )
    assert refused.value.status == 409
    assert kubectl.json("get", "aij", "resize-from-url")["status"]["phase"] == "Pending"


def test_a_finalizer_added_on_a_stale_copy_is_told_apart_from_one_the_api_server_refuses(
    kubectl: Kubectl, kube_api: Any
) -> None:
    """``KubeWriter.add_finalizer`` tests the copy's resourceVersion: on a copy something changed
    since, the API server refuses with a 422 that names no cause, which :func:`stale` reads as a
    race (the operator passes the job again); a refusal of the object itself (here a finalizer
    name that is no qualified name) names its cause and is not; a job gone is a 404."""
    import asyncio

    from aijobs_operator.kube import ApiException, ApiKubeWriter, stale

    kubectl.run("apply", "-f", str(EXAMPLES[0].parent / "resize-url.yaml"), check=True)
    old = kubectl.json("get", "aij", "resize-from-url")
    kubectl.run("label", "aij", "resize-from-url", "team=a", check=True)  # a change since the copy
    writer = ApiKubeWriter(kube_api)
    with pytest.raises(ApiException) as raced:
        asyncio.run(writer.add_finalizer(old, "aijobs.io/saga"))
    assert raced.value.status == 422 and stale(raced.value)
    fresh = kubectl.json("get", "aij", "resize-from-url")
    with pytest.raises(ApiException) as refused:
        asyncio.run(writer.add_finalizer(fresh, "not a finalizer!"))
    assert refused.value.status == 422 and not stale(refused.value)
    assert not kubectl.json("get", "aij", "resize-from-url")["metadata"].get("finalizers")
    kubectl.run("delete", "aij", "resize-from-url", check=True)
    with pytest.raises(ApiException) as gone:
        asyncio.run(writer.add_finalizer(fresh, "aijobs.io/saga"))
    assert gone.value.status == 404


def test_a_deletion_names_the_job_by_uid_and_spares_a_namesake(kubectl: Kubectl, kube_api: Any) -> None:
    """``KubeWriter.delete``: the TTL deletes the job it judged, never one created since under its
    name."""
    import asyncio

    from aijobs_operator.kube import ApiKubeWriter

    path = str(EXAMPLES[0].parent / "resize-url.yaml")
    kubectl.run("apply", "-f", path, check=True)
    old_uid = kubectl.json("get", "aij", "resize-from-url")["metadata"]["uid"]
    kubectl.run("delete", "aij", "resize-from-url", check=True)
    kubectl.run("apply", "-f", path, check=True)
    new_uid = kubectl.json("get", "aij", "resize-from-url")["metadata"]["uid"]
    writer = ApiKubeWriter(kube_api)
    assert asyncio.run(writer.delete(kubectl.namespace, "resize-from-url", old_uid)) is False
    assert kubectl.json("get", "aij", "resize-from-url")["metadata"]["uid"] == new_uid
    assert asyncio.run(writer.delete(kubectl.namespace, "resize-from-url", new_uid)) is True
    assert kubectl.json("get", "aij")["items"] == []
    assert asyncio.run(writer.delete(kubectl.namespace, "resize-from-url", new_uid)) is False  # gone


def test_the_jobs_stored_now_are_listed_from_the_api_server(kubectl: Kubectl, kube_api: Any) -> None:
    """``KubeWriter.job_uids``: what the auditor asks before it undoes a job it believes gone.
    Every job stored now, page after page, in every namespace; one being deleted is still there
    until its finalizer goes; one deleted is not."""
    import asyncio

    from aijobs_operator.kube import ApiKubeWriter

    uids: dict[str, str] = {}
    for name in ("listed-a", "listed-b", "listed-c"):
        job = _example("resize-url.yaml")
        job["metadata"] = {"name": name, "finalizers": ["aijobs.io/test"] if name == "listed-b" else []}
        kubectl.run("apply", "-f", "-", stdin=json.dumps(job), check=True)
        uids[name] = kubectl.json("get", "aij", name)["metadata"]["uid"]
    writer = ApiKubeWriter(kube_api)
    writer.PAGE = 2  # three jobs here (and other tests' elsewhere): several pages
    assert set(uids.values()) <= asyncio.run(writer.job_uids())

    kubectl.run("delete", "aij", "listed-a", "listed-b", "--wait=false", check=True)
    listed = asyncio.run(writer.job_uids())
    assert uids["listed-a"] not in listed
    assert {uids["listed-b"], uids["listed-c"]} <= listed  # b: its finalizer holds it
    unblock = '{"metadata":{"finalizers":null}}'
    kubectl.run("patch", "aij", "listed-b", "--type=merge", "-p", unblock, check=True)
    assert uids["listed-b"] not in asyncio.run(writer.job_uids())


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


def _account(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "aijobs.io/v1alpha1",
        "kind": "CreditAccount",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        pytest.param(_account("Acme"), "a CreditAccount's name is its account id", id="upper-case-name"),
        pytest.param(_account("a"), "a CreditAccount's name is its account id", id="one-letter-name"),
        pytest.param(_account("acme-bad1", namespaces=["Team_A"]), "spec.namespaces[0]", id="bad-namespace"),
        pytest.param(_account("acme-bad2", namespaces=["a", "a"]), "Duplicate value", id="namespace-twice"),
        pytest.param(
            _account("acme-bad3", credits=5), 'unknown field "spec.credits"', id="credits-are-no-spec"
        ),
    ],
)
def test_a_bad_credit_account_is_refused_with_a_message(
    kubectl: Kubectl, manifest: dict[str, Any], message: str
) -> None:
    proc = kubectl.run("apply", "-f", "-", stdin=json.dumps(manifest))
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert kubectl.run("get", "creditaccount", manifest["metadata"]["name"]).returncode != 0


def test_the_credit_account_example_is_accepted_and_shown_in_its_columns(kubectl: Kubectl) -> None:
    path = ROOT / "examples" / "tenancy" / "creditaccount.yaml"
    kubectl.run("apply", "-f", str(path), check=True)
    try:
        out = kubectl.run("get", "creditaccounts", "acme", "-o", "wide", check=True).stdout.splitlines()
        assert out[0].split() == [
            "NAME",
            "AVAILABLE",
            "HELD",
            "BALANCE",
            "IN-FLIGHT",
            "NAMESPACES",
            "READY",
            "REASON",
            "MESSAGE",
            "AGE",
        ]
        assert out[1].split()[:2] == ["acme", '["team-a","team-a-staging"]']
    finally:
        kubectl.run("delete", "-f", str(path), "--wait=false")


def test_kubectl_explain_teaches_the_credit_account(kubectl: Kubectl) -> None:
    out = " ".join(kubectl.run("explain", "creditaccount.spec", check=True).stdout.split())
    assert "Namespaces whose AIImageJobs may charge this account" in out


def test_the_crds_parameter_rules_are_generated_from_the_shared_schema() -> None:
    """`python -m aijobs.api.crd_rules` rewrites them; a parameter added to a pipeline without
    regenerating the CRD fails here."""
    from aijobs.api.crd_rules import rewrite

    for path in (
        ROOT / "crds" / "aijobs.io_aiimagejobs.yaml",
        ROOT / "charts/aijobs/files/aijobs.io_aiimagejobs.yaml",
    ):
        text = path.read_text()
        assert rewrite(text) == text, f"{path} is stale: run python -m aijobs.api.crd_rules"


def test_the_crds_url_pattern_is_the_one_every_service_checks() -> None:
    from aijobs.api.rules import HTTP_URL

    crd = yaml.safe_load((ROOT / "crds/aijobs.io_aiimagejobs.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["input"]["properties"]["url"]["pattern"] == HTTP_URL
