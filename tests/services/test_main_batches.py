"""A user's batch through Main API: images uploaded into a set with the user's token, one job
over the set, its counts in the job's view, its results paged from the manifest with a signed
link per result. Main API and Storage are the real apps (:mod:`tests.services.batch_stand`)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from aijobs_services.main.batches import page_of

from tests.services import images
from tests.services.batch_stand import Stand, sha256, stand

__all__ = ["stand"]

PNG_A, PNG_B, PNG_C = images.png(color=(1, 2, 3)), images.png(color=(4, 5, 6)), images.jpeg()


def _problem(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return str(response.json()["type"]).rsplit("/", 1)[-1]


def _upload(http: httpx.Client, set_name: str, name: str, content: bytes) -> httpx.Response:
    return http.put(f"/v1/uploads/{set_name}/{name}", content=content)


def _batch(http: httpx.Client, key: str, **body: Any) -> httpx.Response:
    return http.post("/v1/batches", json={"pipeline": "grayscale", **body}, headers={"Idempotency-Key": key})


def test_an_image_uploaded_into_a_set_is_stored_once_under_the_users_account(stand: Stand) -> None:
    with stand.user("acme") as acme, stand.user("globex") as globex:
        first = _upload(acme, "cat", "a.png", PNG_A)
        assert first.status_code == 201, first.text
        assert first.json() | {"createdAt": "-"} == {
            "set": "cat",
            "name": "a.png",
            "key": "acme/cat/a.png",
            "sha256": sha256(PNG_A),
            "size": len(PNG_A),
            "contentType": "image/png",
            "width": 64,
            "height": 48,
            "createdAt": "-",
        }
        again = _upload(acme, "cat", "a.png", PNG_A)
        assert again.status_code == 200 and again.json() == first.json()
        assert _problem(_upload(acme, "cat", "a.png", PNG_B), 409) == "key-taken"
        assert _problem(_upload(acme, "cat", "b.gif", images.gif()), 415) == "unsupported-image"
        assert _problem(_upload(acme, "cat", "content", PNG_A), 422) == "reserved-name"
        assert _problem(_upload(acme, "cat", ".hidden", PNG_A), 422) == "validation-error"
        # Another account's set of the same name is its own.
        assert _upload(globex, "cat", "a.png", PNG_B).json()["key"] == "globex/cat/a.png"
        assert _problem(httpx.put(f"{stand.main_url}/v1/uploads/cat/x.png", content=PNG_A), 401)
    with stand.storage() as storage:
        listed = storage.get("/v1/objects", params={"account": "acme", "prefix": "acme/cat/"}).json()["items"]
    assert [(o["key"], o["state"], o["kind"]) for o in listed] == [("acme/cat/a.png", "committed", "input")]


def test_a_set_is_listed_by_name_page_by_page(stand: Stand) -> None:
    with stand.user("acme") as acme:
        for name, content in [("c.jpg", PNG_C), ("a.png", PNG_A), ("b.png", PNG_B)]:
            _upload(acme, "cat", name, content).raise_for_status()
        _upload(acme, "dog", "z.png", PNG_A).raise_for_status()
        first = acme.get("/v1/uploads/cat", params={"limit": 2}).json()
        rest = acme.get("/v1/uploads/cat", params={"limit": 2, "after": first["next"]}).json()
    assert [i["name"] for i in first["items"]] == ["a.png", "b.png"] and first["next"] == "b.png"
    assert [i["name"] for i in rest["items"]] == ["c.jpg"] and rest["next"] is None


def test_a_batch_is_one_job_over_the_set_priced_per_image_and_a_retry_finds_it(stand: Stand) -> None:
    with stand.user("acme") as acme:
        for name, content in [("a.png", PNG_A), ("b.png", PNG_B)]:
            _upload(acme, "cat", name, content).raise_for_status()
        made = _batch(acme, "k1", set="cat", maxFailedImages=1, parameters={})
        assert made.status_code == 201, made.text
        view = made.json()
        assert (view["pipeline"], view["price"], view["phase"], view["batch"]) == (
            "grayscale",
            1,
            "Pending",
            None,
        )
        retried = _batch(acme, "k1", set="cat", maxFailedImages=1, parameters={})
        assert retried.status_code == 200 and retried.headers["Idempotent-Replayed"] == "true"
        assert retried.json()["id"] == view["id"]
        assert _problem(_batch(acme, "k1", set="dog"), 422) == "idempotency-key-reused"
        assert _problem(_batch(acme, "k2", set="empty"), 422) == "empty-set"
        assert _problem(_batch(acme, "k3", set="cat", pipeline="teleport"), 422) == "bad-pipeline"
        assert _problem(_batch(acme, "k4", set="cat", runAt="2001-01-01T00:00:00Z"), 422) == "bad-run-at"
    assert stand.kube.created == 1
    spec = stand.kube.jobs[view["id"]]["spec"]
    assert spec["input"] == {"batch": {"prefix": "acme/cat/"}}
    assert (spec["account"], spec["price"], spec["maxFailedImages"]) == ("acme", 1, 1)


def test_a_batch_over_an_image_list_names_the_lists_object_and_a_retry_finds_it(stand: Stand) -> None:
    with stand.user("acme") as acme, stand.user("globex") as globex:
        uploaded = _upload(acme, "cat", "a.png", PNG_A)
        uploaded.raise_for_status()
        with stand.storage() as storage:
            image = storage.get(f"/v1/by-key/{uploaded.json()['key']}").json()["id"]
        text = f"{image}\nhttps://img.example.com/b.png\n{image}\n"
        listed = acme.put("/v1/lists/night", content=text, headers={"Content-Type": "text/plain"})
        assert listed.status_code == 201, listed.text
        view = listed.json()
        assert (view["name"], view["images"], view["urls"], view["sha256"]) == (
            "night",
            3,
            1,
            sha256(text.encode()),
        )
        made = _batch(acme, "k1", list="night")
        assert made.status_code == 201, made.text
        assert _batch(acme, "k1", list="night").json()["id"] == made.json()["id"]
        assert _problem(_batch(acme, "k1", list="other"), 422) == "idempotency-key-reused"
        assert _problem(_batch(acme, "k2", list="nothing-here"), 422) == "unknown-list"
        assert _problem(_batch(acme, "k3", list="night", set="cat"), 422) == "validation-error"
        assert _problem(_batch(acme, "k4"), 422) == "validation-error"
        # One account's list is no other's, by name or by the images it names.
        assert _problem(_batch(globex, "k5", list="night"), 422) == "unknown-list"
        refused = globex.put("/v1/lists/night", content=f"{image}\n", headers={"Content-Type": "text/plain"})
        assert _problem(refused, 422) == "bad-image-list" and "line 1" in refused.json()["detail"]
    assert stand.kube.created == 1
    spec = stand.kube.jobs[made.json()["id"]]["spec"]
    assert spec["input"] == {"batch": {"imageList": view["objectId"]}}


def test_a_batchs_counts_show_in_its_view_and_its_results_page_through_its_manifest(stand: Stand) -> None:
    with stand.user("acme") as acme, stand.user("globex") as globex:
        for name, content in [("a.png", PNG_A), ("b.png", PNG_B), ("c.jpg", PNG_C)]:
            _upload(acme, "cat", name, content).raise_for_status()
        job = _batch(acme, "k1", set="cat").json()["id"]
        assert _problem(acme.get(f"/v1/jobs/{job}/results"), 409) == "not-a-delivered-batch"
        stand.count(job, succeeded=1, total=3)
        counting = acme.get(f"/v1/jobs/{job}").json()
        assert (counting["phase"], counting["batch"]["succeeded"], counting["batch"]["pending"]) == (
            "Processing",
            1,
            2,
        )
        stand.deliver(job, fail=frozenset({"b.png"}))
        done = acme.get(f"/v1/jobs/{job}").json()
        assert {k: done["batch"][k] for k in ("total", "succeeded", "failed")} == {
            "total": 3,
            "succeeded": 2,
            "failed": 1,
        }
        first = acme.get(f"/v1/jobs/{job}/results", params={"limit": 2}).json()
        rest = acme.get(f"/v1/jobs/{job}/results", params={"limit": 2, "after": first["next"]}).json()
        assert _problem(globex.get(f"/v1/jobs/{job}/results"), 404) == "unknown-job"
        assert _problem(acme.get(f"/v1/jobs/{job}/results", params={"limit": 0}), 422) == "validation-error"
    lines = first["items"] + rest["items"]
    assert [(x["item"], x["key"], x["state"]) for x in lines] == [
        (0, "acme/cat/a.png", "succeeded"),
        (1, "acme/cat/b.png", "failed"),
        (2, "acme/cat/c.jpg", "succeeded"),
    ]
    assert (first["next"], rest["next"]) == (1, None)
    assert "url" not in lines[1] and "pipeline failed" in lines[1]["reason"]
    for line in (lines[0], lines[2]):
        downloaded = httpx.get(line["url"])  # a signed link: no token
        assert downloaded.status_code == 200 and sha256(downloaded.content) == line["sha256"]


def test_a_single_jobs_view_has_no_batch(stand: Stand) -> None:
    with stand.user("acme") as acme:
        made = acme.post(
            "/v1/jobs",
            data={"pipeline": "grayscale"},
            files={"file": ("a.png", PNG_A, "image/png")},
            headers={"Idempotency-Key": "single"},
        )
        assert made.status_code == 201, made.text
        assert "batch" not in acme.get(f"/v1/jobs/{made.json()['id']}").json()


@pytest.mark.parametrize(
    ("after", "limit", "items", "next_after"),
    [
        pytest.param(-1, 2, [0, 1], 1, id="first-page"),
        pytest.param(1, 2, [2, 3], None, id="last-page-exactly-full"),
        pytest.param(3, 2, [], None, id="past-the-end"),
        pytest.param(-1, 10, [0, 1, 2, 3], None, id="all-at-once"),
    ],
)
def test_results_are_paged_by_item(after: int, limit: int, items: list[int], next_after: int | None) -> None:
    lines = [{"item": i, "state": "succeeded"} for i in (3, 1, 0, 2)]
    page, following = page_of(lines, after, limit)
    assert [x["item"] for x in page] == items and following == next_after


def test_a_delay_is_counted_from_the_first_acceptance_and_a_replay_keeps_its_time(
    stand: Stand, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``delaySeconds`` (what ``aijobs submit --run-at +2h`` sends): the job runs that long after
    Main API first accepted it, and the same request an hour later (its answer lost, the
    command run again) is the same job at the same time, not a second job charged again."""
    import datetime as dt

    from aijobs_services.main import submission

    from aijobs.api.rules import RUN_AHEAD

    clock = [dt.datetime.now(dt.UTC).replace(microsecond=0)]
    monkeypatch.setattr(submission, "utcnow", lambda: clock[0])
    first_seen = clock[0]

    def job_run_at(view: dict[str, Any]) -> dt.datetime:
        return dt.datetime.fromisoformat(stand.kube.jobs[view["id"]]["spec"]["runAt"].replace("Z", "+00:00"))

    def submit_single(key: str, **form: str) -> httpx.Response:
        return acme.post(
            "/v1/jobs",
            data={"pipeline": "grayscale", **form},
            files={"file": ("a.png", PNG_A, "image/png")},
            headers={"Idempotency-Key": key},
        )

    with stand.user("acme") as acme:
        _upload(acme, "cat", "a.png", PNG_A).raise_for_status()
        made = _batch(acme, "later", set="cat", delaySeconds=7200)
        assert made.status_code == 201, made.text
        assert job_run_at(made.json()) == first_seen + dt.timedelta(hours=2)
        single = submit_single("s", delaySeconds="600")
        assert single.status_code == 201, single.text
        assert job_run_at(single.json()) == first_seen + dt.timedelta(minutes=10)

        clock[0] += dt.timedelta(hours=1)  # the same requests again, an hour on
        again = _batch(acme, "later", set="cat", delaySeconds=7200)
        assert again.status_code == 200 and again.json()["id"] == made.json()["id"]
        assert job_run_at(again.json()) == first_seen + dt.timedelta(hours=2)
        replay = submit_single("s", delaySeconds="600")
        assert replay.status_code == 200 and replay.json()["id"] == single.json()["id"]

        assert _problem(_batch(acme, "later", set="cat", delaySeconds=60), 422) == "idempotency-key-reused"
        both = _batch(acme, "both", set="cat", delaySeconds=60, runAt="2030-01-01T00:00:00Z")
        assert _problem(both, 422) == "validation-error"
        assert "at most one of runAt and delaySeconds" in both.text
        refused = submit_single("s2", delaySeconds="60", runAt="2030-01-01T00:00:00Z")
        assert _problem(refused, 422) == "validation-error"
        # One problem type, one title, whichever check refused it (the model's or Main API's own).
        assert refused.json()["title"] == both.json()["title"] == "Request validation failed"
        assert "at most one of runAt and delaySeconds" in refused.text
        too_far = int(RUN_AHEAD.total_seconds()) + 1
        assert _problem(_batch(acme, "far", set="cat", delaySeconds=too_far), 422) == "validation-error"
        assert _problem(_batch(acme, "neg", set="cat", delaySeconds=-1), 422) == "validation-error"
    assert stand.kube.created == 2
