"""A batch named by an image list, on real parts: the user uploads the list through Main API
(object ids of their images and http(s) URLs, one per line), applies one AIImageJob naming it
with kubectl, and gets one result per line in the list's order, charged per image delivered.
Storage fetches each URL once, after the hold, from an image server the test runs on 127.0.0.2
(the one loopback address the stack's Storage may fetch from: its services listen on 127.0.0.1).
A list Storage cannot finish (a URL it refuses) fails the job naming the line, and nothing is
charged or left behind; a bad list is refused at upload, naming its line, and nothing is stored."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from aijobs_dev.testbed.stack import Stack, Tenant

from tests.e2e.conftest import Jobs, live, png, reason
from tests.e2e.test_batch import PRICE, batch


class ImageServer:
    """Serves fixed bytes by path on 127.0.0.2 and counts each GET."""

    def __init__(self, images: dict[str, bytes]) -> None:
        self.images, self.hits = images, {path: 0 for path in images}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = server.images.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                server.hits[self.path] += 1
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.base = f"http://127.0.0.2:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[ImageServer]:
    images = {"/scans/0001.png": png(18, 14, noise=True), "/scans/0002.png": png(22, 10, noise=True)}
    served = ImageServer(images)
    try:
        yield served
    finally:
        served.http.shutdown()
        served.http.server_close()


def upload_images(stack: Stack, tenant: Tenant, count: int) -> list[dict[str, Any]]:
    main = stack.services["main"].url
    stored = []
    for n in range(count):
        response = httpx.put(
            f"{main}/v1/uploads/album/img-{n}.png",
            content=png(16 + n, 12, noise=True),
            headers={"Authorization": f"Bearer {tenant.token}", "Content-Type": "image/png"},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        stored.append(response.json())
    return stored


def object_id(stack: Stack, key: str) -> str:
    found: str = stack.call("storage", "GET", f"/v1/by-key/{key}")["id"]
    return found


def put_list(stack: Stack, tenant: Tenant, name: str, text: str) -> httpx.Response:
    return httpx.put(
        f"{stack.services['main'].url}/v1/lists/{name}",
        content=text.encode(),
        headers={"Authorization": f"Bearer {tenant.token}", "Content-Type": "text/plain"},
        timeout=30,
    )


def test_a_list_of_ids_and_urls_runs_in_its_order_and_each_url_is_fetched_once(
    stack: Stack, server: ImageServer
) -> None:
    tenant = stack.tenant(f"l{uuid.uuid4().hex[:8]}", credits=100)
    jobs = Jobs(stack, tenant.namespace)
    uploads = upload_images(stack, tenant, 2)
    ids = [object_id(stack, u["key"]) for u in uploads]
    text = (
        "# two uploads and two scans, interleaved\n"
        f"{ids[1]}\n"
        f"{server.base}/scans/0001.png\n"
        "\n"
        f"  {ids[0]}  \n"
        f"{server.base}/scans/0002.png\n"
    )
    response = put_list(stack, tenant, "night", text)
    assert response.status_code == 201, response.text
    listed = response.json()
    assert (listed["images"], listed["urls"]) == (4, 2)
    assert put_list(stack, tenant, "night", text).status_code == 200  # the same list again: the same one

    jobs.apply(batch("night", tenant.account, image_list=listed["objectId"]))
    job = jobs.wait("night", timeout=240)
    status = job["status"]
    assert status["phase"] == "Delivered", json.dumps(status)[-2000:]
    assert (status["batch"]["total"], status["batch"]["succeeded"], status["batch"]["failed"]) == (4, 4, 0)
    assert status["batch"]["digest"] == listed["sha256"]  # the set is frozen by the list itself

    manifest = httpx.get(status["result"]["url"], timeout=30)
    lines = [json.loads(line) for line in manifest.text.splitlines()]
    assert [line["item"] for line in lines] == [0, 1, 2, 3]
    assert [lines[0]["input"], lines[2]["input"]] == [ids[1], ids[0]]  # the list's order, not key order
    uid = job["metadata"]["uid"]
    assert [lines[1]["key"], lines[3]["key"]] == [f"job:{uid}:input:1", f"job:{uid}:input:3"]
    with stack.admin("storage") as http:
        fetched = [http.get(f"/v1/objects/{lines[n]['input']}/content").content for n in (1, 3)]
        for line in lines:
            assert line["state"] == "succeeded", line
            result = http.get(f"/v1/objects/{line['result']}/content")
            assert hashlib.sha256(result.content).hexdigest() == line["sha256"]
    assert fetched == [server.images["/scans/0001.png"], server.images["/scans/0002.png"]]
    assert server.hits == {"/scans/0001.png": 1, "/scans/0002.png": 1}

    charges = stack.call("payment", "GET", f"/v1/jobs/{uid}/charges")
    assert charges["charged"] == 4 * PRICE
    balance = stack.balance(tenant.account)
    assert (balance["available"], balance["held"]) == (100 - 4 * PRICE, 0)


@pytest.mark.parametrize(
    ("refused", "says"),
    [
        pytest.param("http://10.1.2.3/private.png", "10.1.2.3", id="private-address"),  # never fetched
        pytest.param("{base}/scans/gone.png", "answered 404", id="gone"),  # a definite no: no retry
    ],
)
def test_a_url_storage_refuses_fails_the_batch_naming_its_line_and_costs_nothing(
    stack: Stack, server: ImageServer, refused: str, says: str
) -> None:
    tenant = stack.tenant(f"l{uuid.uuid4().hex[:8]}", credits=100)
    jobs = Jobs(stack, tenant.namespace)
    [upload] = upload_images(stack, tenant, 1)
    text = (
        f"{object_id(stack, upload['key'])}\n"
        f"{server.base}/scans/0001.png\n"
        f"{refused.format(base=server.base)}\n"
    )
    response = put_list(stack, tenant, "mixed", text)
    assert response.status_code == 201, response.text
    jobs.apply(batch("mixed", tenant.account, image_list=response.json()["objectId"]))
    job = jobs.wait("mixed", timeout=180)
    assert job["status"]["phase"] == "Failed" and reason(job) == "InputRefused", job["status"]
    assert "line 3" in job["status"]["message"] and says in job["status"]["message"], job["status"]

    uid = job["metadata"]["uid"]
    charges = stack.call("payment", "GET", f"/v1/jobs/{uid}/charges")
    assert charges["charged"] == 0 and [h["state"] for h in charges["holds"]] == ["released"]
    balance = stack.balance(tenant.account)
    assert (balance["available"], balance["held"]) == (100, 0)
    # The scan Storage did fetch belonged to the job, and went with its compensation; the user's
    # own upload, which the list only named, stays.
    assert server.hits["/scans/0001.png"] == 1
    job_objects = stack.call("storage", "GET", f"/v1/jobs/{uid}/objects")["items"]
    assert [o["key"] for o in job_objects] == [f"job:{uid}:input:1"] and live(job_objects) == []
    assert stack.call("storage", "GET", f"/v1/by-key/{upload['key']}")["state"] == "committed"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param("not an id or a url!\n", "line 1: 'not an id or a url!' is neither", id="garbage"),
        pytest.param("# only a comment\n\n", "names no image", id="empty"),
        pytest.param("ftp://example.com/a.png\n", "line 1", id="not-http"),
        pytest.param("https://example.com:99999/a.png\n", "line 1", id="port-out-of-range"),
        pytest.param("obj-nosuchobject0000000\n", "line 1: object obj-nosuchobject0000000", id="unknown-id"),
    ],
)
def test_a_bad_list_is_refused_naming_its_line_and_nothing_is_stored(
    stack: Stack, tenant: Tenant, text: str, says: str
) -> None:
    response = put_list(stack, tenant, "bad", text)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"].endswith("/bad-image-list") and says in problem["detail"], problem
    with stack.admin("storage") as http:
        assert http.get(f"/v1/by-key/list:{tenant.account}/bad").status_code == 404


def test_a_list_cannot_name_another_accounts_image(stack: Stack) -> None:
    owner = stack.tenant(f"l{uuid.uuid4().hex[:8]}", credits=10)
    other = stack.tenant(f"l{uuid.uuid4().hex[:8]}", credits=10)
    [upload] = upload_images(stack, owner, 1)
    theirs = object_id(stack, upload["key"])
    response = put_list(stack, other, "borrowed", f"{theirs}\n")
    assert response.status_code == 422, response.text
    assert f"object {theirs} is not a committed image of account {other.account}" in response.json()["detail"]

    # Nor through a list stored another way (an admin's, say): the operator checks it again,
    # and refuses it before anything is held.
    with stack.admin("storage") as http:
        stored = http.put(
            f"/v1/objects/list:{other.account}/sneaky",
            params={"account": other.account, "kind": "list", "state": "committed"},
            content=f"{theirs}\n".encode(),
            headers={"Content-Type": "text/plain"},
        )
        assert stored.status_code == 201, stored.text
    jobs = Jobs(stack, other.namespace)
    jobs.apply(batch("sneaky", other.account, image_list=stored.json()["id"]))
    job = jobs.wait("sneaky", timeout=120)
    assert job["status"]["phase"] == "Failed" and reason(job) == "ImageNotUsable", job["status"]
    assert stack.call("payment", "GET", f"/v1/jobs/{job['metadata']['uid']}/charges")["holds"] == []
