"""Main API and Storage served over HTTP in this process, for a user's batch: the real apps on
SQLite (each on its own loopback port, so that signed links and the console work as deployed),
Auth answered by a small fake (a token names its user), the Kubernetes API by an in-memory
one, and the operator's part played by :meth:`Stand.deliver`, which leaves a batch as the
operator's deliver step does (results stored, a manifest of JSON lines, counts in the status).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from aijobs_dev.controlplane.cluster import free_port
from aijobs_services.kit.app import create_app
from aijobs_services.main import api as main_api
from aijobs_services.main.settings import MainSettings
from aijobs_services.registry import spec
from aijobs_services.storage.settings import StorageSettings
from kubernetes.client.exceptions import ApiException

from aijobs.api import imagelist
from aijobs.wire.client import ServiceClient
from aijobs.wire.tokens import TokenSigner
from tests.services import images

NAMESPACE = "acme-jobs"
KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
    "users": [{"name": "u", "user": {"token": "t"}}],
    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
    "current-context": "x",
}


class Kube:
    """The API server's AIImageJobs of one namespace, in memory; ``created`` counts creations."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.created = 0
        self.lock = threading.Lock()

    def get_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, name: str) -> Any:
        with self.lock:
            if name not in self.jobs:
                raise ApiException(status=404)
            return json.loads(json.dumps(self.jobs[name]))

    def list_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, **kw: Any) -> Any:
        with self.lock:
            return {"items": json.loads(json.dumps(list(self.jobs.values()))), "metadata": {}}

    def create_namespaced_custom_object(
        self, group: str, version: str, ns: str, plural: str, body: Any
    ) -> Any:
        with self.lock:
            if body["metadata"]["name"] in self.jobs:
                raise ApiException(status=409)
            body["metadata"] |= {
                "namespace": ns,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            self.jobs[body["metadata"]["name"]] = body
            self.created += 1
            return body


def _fake_auth(users: dict[str, tuple[str, str]]) -> httpx.MockTransport:
    """Auth as Main API calls it: a user's token verified, the account's namespace bound."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/tokens/verify":
            token = json.loads(request.content)["token"]
            if token not in users:
                return httpx.Response(401, json={"type": "x/unauthenticated", "detail": "unknown token"})
            user, tenant = users[token]
            return httpx.Response(
                200, json={"kind": "user", "subject": user, "tenant": tenant, "tokenId": "t"}
            )
        account = request.url.params["account"]
        return httpx.Response(200, json={"items": [{"namespace": NAMESPACE, "account": account}]})

    return httpx.MockTransport(handle)


def _serve(app: Any, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the app did not start serving"
        time.sleep(0.02)  # polling the server's own flag, bounded by the deadline
    return server, thread


@dataclass
class Stand:
    main_url: str
    storage_url: str
    secrets: dict[str, str]
    kube: Kube
    tokens: dict[str, str] = field(default_factory=dict)  # account -> its user's token
    puts: list[str] = field(default_factory=list)  # every key Main API stored into a set

    def user(self, account: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.main_url, headers={"Authorization": f"Bearer {self.tokens[account]}"}, timeout=30
        )

    def storage(self) -> httpx.Client:
        token = TokenSigner("operator", self.secrets["operator"]).token_for("storage")
        return httpx.Client(
            base_url=self.storage_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def _inputs(
        self, http: httpx.Client, uid: str, account: str, source: dict[str, str]
    ) -> list[tuple[str, dict[str, Any]]]:
        """The batch's images, each with the name ``fail`` knows it by: a set's by key, in key
        order; an image list's in its order, each URL stored as the operator's upload step
        would have Storage fetch it (an image of the stand's, under the job's key for it)."""
        if "prefix" in source:
            params = {"account": account, "prefix": source["prefix"], "limit": 1000}
            found = http.get("/v1/objects", params=params).json()["items"]
            return [(obj["key"].rsplit("/", 1)[-1], obj) for obj in found]
        text = http.get(f"/v1/objects/{source['imageList']}/content").text
        inputs = []
        for entry in imagelist.parse(text):
            if entry.object_id is not None:
                obj = http.get(f"/v1/objects/{entry.object_id}").json()
                inputs.append((obj["key"].rsplit("/", 1)[-1], obj))
                continue
            fetched = http.put(
                f"/v1/objects/job:{uid}:input:{entry.item}",
                params={"account": account, "state": "committed", "jobId": uid},
                content=images.png(9, 9, (entry.item % 256, 1, 1)),
            ).json()
            inputs.append((str(entry.url).rsplit("/", 1)[-1], fetched))
        return inputs

    def deliver(
        self, name: str, *, fail: frozenset[str] = frozenset(), max_failed: int | None = None
    ) -> None:
        """Do what the operator does for the batch job ``name``: one task per image of its set
        (those named in ``fail`` fail), results stored, the manifest stored and linked."""
        job = self.kube.jobs[name]
        uid, account, source = (
            job["metadata"]["uid"],
            job["spec"]["account"],
            job["spec"]["input"]["batch"],
        )
        with self.storage() as http:
            inputs = self._inputs(http, uid, account, source)
            lines: list[dict[str, Any]] = []
            for item, (named, obj) in enumerate(inputs):
                line: dict[str, Any] = {"item": item, "key": obj["key"], "input": obj["id"]}
                if named in fail:
                    line |= {"state": "failed", "reason": "the pipeline failed: broken image"}
                else:
                    result = images.png(8, 8, (item % 256, 7, 7))
                    stored = http.put(
                        f"/v1/objects/{uid}/result-{item}",
                        params={"account": account, "kind": "result", "state": "committed", "jobId": uid},
                        content=result,
                    ).json()
                    line |= {"state": "succeeded", "result": stored["id"], "sha256": stored["sha256"]}
                    line["size"] = stored["size"]
                lines.append(line)
            body = "".join(json.dumps(x, sort_keys=True) + "\n" for x in lines).encode()
            manifest = http.put(
                f"/v1/objects/{uid}/manifest",
                params={"account": account, "kind": "manifest", "state": "committed", "jobId": uid},
                content=body,
            ).json()
            link = http.post(f"/v1/objects/{manifest['id']}/download-url", json={}).json()
        failed = sum(x["state"] == "failed" for x in lines)
        total = len(lines)
        with self.kube.lock:
            job["status"] = {
                "phase": "Failed" if max_failed is not None and failed > max_failed else "Delivered",
                "batch": {
                    "total": total,
                    "succeeded": total - failed,
                    "failed": failed,
                    "cancelled": 0,
                    "pending": 0,
                    "progress": f"{total}/{total}",
                    "failures": [
                        {"item": x["item"], "input": x["key"], "reason": x["reason"]}
                        for x in lines
                        if x["state"] == "failed"
                    ][:10],
                },
                "result": {"objectId": manifest["id"], "sha256": manifest["sha256"], "url": link["url"]},
            }

    def count(self, name: str, succeeded: int, total: int) -> None:
        """The operator's counts while the batch runs."""
        with self.kube.lock:
            self.kube.jobs[name]["status"] = {
                "phase": "Processing",
                "batch": {"total": total, "succeeded": succeeded, "pending": total - succeeded},
            }


class _CountingPuts(httpx.AsyncBaseTransport):
    """Main API's transport to Storage, noting each image stored into a set."""

    def __init__(self, puts: list[str]) -> None:
        self.inner, self.puts = httpx.AsyncHTTPTransport(), puts

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and request.url.params.get("kind") == "input":
            self.puts.append(request.url.path.removeprefix("/v1/objects/"))
        return await self.inner.handle_async_request(request)


@pytest.fixture
def stand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stand]:
    from aijobs_dev.testbed.processes import make_secrets

    secrets = make_secrets()
    storage_port, main_port = free_port(), free_port()
    storage_url, main_url = f"http://127.0.0.1:{storage_port}", f"http://127.0.0.1:{main_port}"
    storage_app = create_app(
        spec("storage"),
        StorageSettings(
            service="storage",
            database_url=f"sqlite:///{tmp_path / 'storage.db'}",
            callers=secrets,
            storage_root=str(tmp_path / "volume"),
            sweep_interval_seconds=0,
            url_signing_key="k" * 32,
            public_url=storage_url,
            max_object_bytes=2_000_000,
        ),
    )
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps(KUBECONFIG))
    main_app = create_app(
        spec("main"),
        MainSettings(
            service="main",
            database_url=f"sqlite:///{tmp_path / 'main.db'}",
            callers=secrets,
            sweep_interval_seconds=0,
            kubeconfig=str(kubeconfig),
            storage_url=storage_url,
        ),
    )
    kube = Kube()
    stand = Stand(main_url, storage_url, secrets, kube)
    stand.tokens = {"acme": "aij_acme", "globex": "aij_globex"}
    signer = TokenSigner("main-api", secrets["main-api"])
    main_app.state.clients["auth"] = ServiceClient(
        "auth",
        "http://auth",
        signer,
        transport=_fake_auth({"aij_acme": ("u-acme", "acme"), "aij_globex": ("u-globex", "globex")}),
    )
    main_app.state.clients["storage"] = ServiceClient(
        "storage", storage_url, signer, transport=_CountingPuts(stand.puts)
    )
    monkeypatch.setattr(main_api, "_custom", lambda request: kube)
    servers = [_serve(storage_app, storage_port), _serve(main_app, main_port)]
    yield stand
    for server, thread in reversed(servers):
        server.should_exit = True
        thread.join(timeout=30)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
