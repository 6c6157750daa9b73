"""Fixtures every test stands on: a real kube-apiserver + etcd with the project's CRDs, a fresh
namespace per test, and a throwaway PostgreSQL cluster with a database per test."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aijobs_dev.controlplane.cluster import ControlPlane
from aijobs_dev.testbed.postgres import PostgresCluster
from kubernetes import client

from aijobs.crds import install_crds
from aijobs.kube import api_client


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane") / "plane")
    plane.start()
    try:
        install_crds(api_client(plane.kubeconfig))
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kube_api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    api = api_client(control_plane.kubeconfig)
    yield api
    api.close()


@dataclass
class Kubectl:
    """``kubectl`` against the test control plane, in one namespace."""

    kubeconfig: Path
    namespace: str

    def run(
        self, *args: str, stdin: str | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        argv = ["kubectl", f"--kubeconfig={self.kubeconfig}", f"--namespace={self.namespace}", *args]
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json", check=True).stdout)


@pytest.fixture
def namespace(kube_api: client.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    # No controller-manager runs, so the namespace only reaches Terminating; its objects are
    # removed with the whole control plane at the end of the session.
    core.delete_namespace(name)


@pytest.fixture
def kubectl(control_plane: ControlPlane, namespace: str) -> Kubectl:
    return Kubectl(control_plane.kubeconfig, namespace)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(postgres: PostgresCluster) -> Iterator[str]:
    """A SQLAlchemy URL to a fresh, empty database of its own, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)


@pytest.fixture
def listener() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A real HTTP server on loopback that answers 204 and keeps each request's headers (and its
    path, under ``path``): where an outbound call must never arrive, it proves none did."""
    hits: list[dict[str, str]] = []

    class Count(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hits.append({**dict(self.headers), "path": self.path})
            self.send_response(204)
            self.end_headers()

        do_GET = do_POST

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Count)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
