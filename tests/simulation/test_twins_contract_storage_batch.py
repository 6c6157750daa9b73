"""The storage twin answers a batch job's calls as Storage does: the listing of an account's
inputs under a key prefix (pages, order, what is left out, the batch's creation time), the
manifest (stored, replayed, refused), a job's objects paged, and an image list's calls (the list
stored and read back, its ids looked up together, its URLs fetched or refused). See
test_twins_contract.py."""

from __future__ import annotations

import datetime as dt
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aijobs_dev.simulation.twins import StorageTwin

from tests.services import images
from tests.services.conftest import Api
from tests.services.test_storage import _storage
from tests.simulation.test_twins_contract import _now, _observable, _slug, secrets

__all__ = ["secrets"]  # the fixture, shared with the other contract tests

pytestmark = pytest.mark.postgres

MANIFEST = b'{"input":"acme/cat/a-1","state":"succeeded","note":"caf\xc3\xa9"}\n'
# (key, account, kind, state, job); each stored with bytes of its own.
UPLOADS = [
    ("acme/cat/b", "acme", "input", "committed", None),
    ("acme/cat/a-1", "acme", "input", "committed", None),
    ("acme/cat/a_1", "acme", "input", "committed", None),
    ("acme/cat/A", "acme", "input", "committed", None),
    ("acme/cat/a.1", "acme", "input", "committed", None),
    ("acme/cat/g", "globex", "input", "committed", None),  # another account's
    ("acme/cat/s", "acme", "input", "staging", None),  # never committed
    ("acme/dog/x", "acme", "input", "committed", None),  # another prefix
    ("acme/cat/r", "acme", "result", "committed", "batch-1"),  # a result, not an input
    ("batch-1/out-1", "acme", "result", "committed", "batch-1"),
    ("batch-1/out-2", "acme", "result", "staging", "batch-1"),
]
PICKED = ("key", "account", "kind", "state", "jobId")


class Both:
    """One call to Storage and to its twin, as the operator makes it; their answers compared."""

    def __init__(self, real: Api, twin: StorageTwin) -> None:
        self.real, self.twin = real, twin

    def put(self, key: str, content: bytes, **params: Any) -> tuple[Any, Any]:
        query = {k: str(v) for k, v in params.items()}
        response = self.real.http.put(
            f"/v1/objects/{key}", params=query, content=content, headers=self.real.headers("operator", None)
        )
        reply = self.twin.handle("PUT", f"/v1/objects/{key}", None, None, query, content)
        return self._same(response.status_code, response.json(), reply.status, reply.body)

    def post(self, path: str, body: Any) -> tuple[Any, Any]:
        response = self.real.post(path, body, caller="operator", key=None)
        reply = self.twin.handle("POST", path, None, body, {}, b"")
        return self._same(response.status_code, response.json(), reply.status, reply.body)

    def get(self, path: str, **params: Any) -> tuple[Any, Any]:
        query = {k: str(v) for k, v in params.items()}
        response = self.real.get(path, caller="operator", params=query)
        reply = self.twin.handle("GET", path, None, None, query, b"")
        return self._same(response.status_code, response.json(), reply.status, reply.body)

    @staticmethod
    def _same(status: int, body: Any, twin_status: int, twin_body: Any) -> tuple[Any, Any]:
        assert _observable(twin_status, twin_body, PICKED) == _observable(status, body, PICKED), (
            body,
            twin_body,
        )
        if status >= 400:
            assert _slug(twin_body) == _slug(body)
        return body, twin_body


def _keys(page: Any) -> list[str]:
    return [o["key"] for o in page["items"]]


def test_the_storage_twin_lists_and_stores_a_batch_as_storage_does(
    pg_url: str, secrets: dict[str, str], tmp_path: Path
) -> None:
    twin = StorageTwin(_now)
    for api, _ in _storage(pg_url, secrets, tmp_path / "volume", max_object_bytes=2_000_000):
        both = Both(api, twin)
        for n, (key, account, kind, state, job) in enumerate(UPLOADS):
            params = {"account": account, "kind": kind, "state": state, **({"jobId": job} if job else {})}
            both.put(key, images.png(color=(n, 0, 0)), **params)
        created = dt.datetime.now(dt.UTC).isoformat()
        both.put("acme/cat/late", images.png(color=(99, 0, 0)), account="acme", state="committed")

        # The batch's set, two by two: the same keys in the same (byte) order, the same pages.
        batch = {"account": "acme", "prefix": "acme/cat/", "createdBefore": created, "limit": 2}
        pages, after = [], None
        while True:
            real, mirrored = both.get("/v1/objects", **batch, **({"after": after} if after else {}))
            assert _keys(real) == _keys(mirrored) and real["next"] == mirrored["next"]
            pages.append(_keys(real))
            after = real["next"]
            if after is None:
                break
        assert pages == [["acme/cat/A", "acme/cat/a-1"], ["acme/cat/a.1", "acme/cat/a_1"], ["acme/cat/b"]]
        later, later_twin = both.get("/v1/objects", account="acme", prefix="acme/cat/a")
        assert _keys(later) == _keys(later_twin) == ["acme/cat/a-1", "acme/cat/a.1", "acme/cat/a_1"]
        everything, everything_twin = both.get("/v1/objects", account="acme", prefix="acme/cat/")
        assert _keys(everything) == _keys(everything_twin) and "acme/cat/late" in _keys(everything)
        for bad in ({"prefix": "acme%"}, {"prefix": "acme/", "limit": 0}, {"prefix": "acme/", "limit": 1001}):
            both.get("/v1/objects", account="acme", **bad)

        # The manifest: stored as JSON lines, replayed, refused for other or non-UTF-8 bytes.
        manifest = {"account": "acme", "jobId": "batch-1", "kind": "manifest", "state": "committed"}
        stored, stored_twin = both.put("batch-1/results.jsonl", MANIFEST, **manifest)
        for answer in (stored, stored_twin):
            assert (answer["contentType"], answer["width"], answer["height"]) == (
                "application/x-ndjson",
                0,
                0,
            )
        both.put("batch-1/results.jsonl", MANIFEST, **manifest)  # the same bytes: 200
        both.put("batch-1/results.jsonl", MANIFEST + b"{}\n", **manifest)  # other bytes: 409
        both.put("batch-1/other.jsonl", b"\xff\xfe{}\n", **manifest)  # not UTF-8: 415
        both.put("batch-1/other.jsonl", MANIFEST, **{**manifest, "kind": "archive"})  # 422

        # The job's objects: all at once, or paged by id; the same objects either way.
        whole, whole_twin = both.get("/v1/jobs/batch-1/objects")
        assert sorted(_keys(whole)) == sorted(_keys(whole_twin))
        assert whole["next"] is whole_twin["next"] is None and len(whole["items"]) == 4
        seen: dict[str, list[str]] = {"real": [], "twin": []}
        sizes: dict[str, list[int]] = {"real": [], "twin": []}
        for side, answer_of in (("real", 0), ("twin", 1)):
            after = None
            while True:
                page = both.get("/v1/jobs/batch-1/objects", limit=3, **({"after": after} if after else {}))
                mine = page[answer_of]
                seen[side] += _keys(mine)
                sizes[side].append(len(mine["items"]))
                after = mine["next"]
                if after is None:
                    break
        assert sorted(seen["real"]) == sorted(seen["twin"]) == sorted(_keys(whole))
        assert sizes["real"] == sizes["twin"] == [3, 1]


@pytest.fixture
def origin() -> Iterator[str]:
    """An image server on 127.0.0.2, the one private address both sides are allowed to fetch from."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = images.png(12, 12)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.2:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


LIST = b"# scans\nobj-a\nhttps://img.example/1.png\n"


def test_the_storage_twin_answers_an_image_lists_calls_as_storage_does(
    pg_url: str, secrets: dict[str, str], tmp_path: Path, origin: str
) -> None:
    twin = StorageTwin(_now)
    twin.ingest_allow = (origin,)
    for api, _ in _storage(pg_url, secrets, tmp_path / "volume", ingest_allow_cidrs=["127.0.0.2/32"]):
        both = Both(api, twin)
        # The list: stored as text, read back byte for byte, refused when it is not UTF-8.
        listed = {"account": "acme", "kind": "list", "state": "committed"}
        stored, stored_twin = both.put("list:acme/night", LIST, **listed)
        for answer in (stored, stored_twin):
            assert (answer["contentType"], answer["width"]) == ("text/plain", 0)
        both.put("list:acme/night", LIST, **listed)  # the same bytes: 200
        both.put("list:acme/other", b"obj-a\n\xff\n", **listed)  # not UTF-8: 415
        real = api.get(f"/v1/objects/{stored['id']}/content", caller="operator")
        mirrored = twin.handle("GET", f"/v1/objects/{stored_twin['id']}/content", None, None, {}, b"")
        assert (real.status_code, real.content) == (mirrored.status, mirrored.body) == (200, LIST)

        # Its ids, looked up together: each answered as its single read, unknown ones 404.
        image, image_twin = both.put("acme/cat/a", images.png(), account="acme", state="committed")
        for ids in ([image["id"], "obj-nosuchobject000000"], []):
            real_ids = ids
            twin_ids = [image_twin["id"] if i == image["id"] else i for i in ids]
            response = api.post("/v1/bulk/lookup", {"ids": real_ids}, caller="operator", key=None)
            reply = twin.handle("POST", "/v1/bulk/lookup", None, {"ids": twin_ids}, {}, b"")
            assert response.status_code == reply.status
            if response.status_code != 200:
                assert _slug(reply.body) == _slug(response.json())
                continue
            for item, item_twin in zip(response.json()["items"], reply.body["items"], strict=True):
                assert item["status"] == item_twin["status"]
                assert _observable(item_twin["status"], item_twin["body"], PICKED) == _observable(
                    item["status"], item["body"], PICKED
                )

        # Its URLs: fetched into the job's input under the image's key, the same key again is
        # that object, a private address refused.
        fetch = {"key": "job:u1:input:1", "url": f"{origin}/1.png", "account": "acme", "jobId": "u1"}
        both.post("/v1/ingest", {**fetch, "state": "committed"})
        both.post("/v1/ingest", {**fetch, "state": "committed"})  # replayed: 200
        both.post("/v1/ingest", {**fetch, "key": "job:u1:input:2", "url": "http://10.0.0.7/x.png"})
