"""Fixtures every test stands on: a real kube-apiserver + etcd with the project's CRDs, a fresh
namespace per test, and a throwaway PostgreSQL cluster with a database per test.

A test that stands on one of these is marked for it here, from the fixtures it uses (directly or
through others), so that `make check` (`-m "not postgres and not controlplane and not cluster"`)
leaves it out without anyone having to remember a marker. A test that starts a PostgreSQL cluster
or a control plane by itself, without a fixture, must carry the marker by hand: one that does not
fails, in either tier, saying so."""

from __future__ import annotations

import http.server
import importlib.util
import json
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aijobs_dev.controlplane.cluster import ControlPlane
from aijobs_dev.testbed.postgres import PostgresCluster
from kubernetes import client

from aijobs.crds import install_crds
from aijobs.kube import api_client

ROOT = Path(__file__).resolve().parents[1]

# The fixtures that start something slow, and the marker each gives the tests that use it.
# `bare_plane` (tests/chart) starts a control plane of its own, without the CRDs.
NEEDS = {"postgres": "postgres", "control_plane": "controlplane", "bare_plane": "controlplane"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for mark in sorted({NEEDS[name] for name in used & NEEDS.keys()}):
            item.add_marker(mark)


# The test being run (its setup, call and teardown), for the guard below to read its markers.
_running: list[pytest.Item] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[object]:
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


def _only_when_marked(start: Callable[..., None], mark: str, what: str) -> Callable[..., None]:
    def guarded(self: object, *args: Any, **kwargs: Any) -> None:
        if _running and _running[-1].get_closest_marker(mark) is None:
            pytest.fail(
                f"{_running[-1].nodeid} starts {what} but is not marked `{mark}`: use the fixture "
                f"(tests/conftest.py), or mark it, so that `make check` leaves it out",
                pytrace=False,
            )
        start(self, *args, **kwargs)

    return guarded


@pytest.fixture(scope="session", autouse=True)
def _slow_starts_are_marked() -> Iterator[None]:
    """An unmarked test that starts PostgreSQL or a control plane in this process fails, naming the
    marker it lacks. One started by a command the test runs is out of sight: mark that test by hand."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            PostgresCluster, "start", _only_when_marked(PostgresCluster.start, "postgres", "PostgreSQL")
        )
        patch.setattr(
            ControlPlane, "start", _only_when_marked(ControlPlane.start, "controlplane", "a control plane")
        )
        yield


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


@pytest.fixture(scope="session")
def runtime_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel the images install, built as the Dockerfile builds it: from the folders that run
    (no devtools/), and without its dependencies, as `pip wheel --no-deps`."""
    src = tmp_path_factory.mktemp("wheel-src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("aijobs", "operator", "services", "gpu_worker", "crds"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    # Without isolation where the environment can build it (no download); Python >= 3.12 venvs
    # have no setuptools, and pip then fetches the build backend as it would for a user.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", "out", "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    [wheel] = (src / "out").glob("*.whl")
    return wheel
