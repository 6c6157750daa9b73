"""`pip install .` is a light client: `aijobs submit`, `aijobs jobs` and `aijobs admin` need httpx,
pydantic, pyyaml, pyjwt and the Kubernetes client only; the operator, the services and the worker
bring their own dependencies as extras, which the images install (docker/requirements.py)."""

from __future__ import annotations

import email.parser
import http.server
import json
import os
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from aijobs.api.v1alpha1 import PIPELINES

ROOT = Path(__file__).resolve().parents[2]
CLIENT = {"httpx", "kubernetes", "pydantic", "pyjwt", "pyyaml", "sniffio"}
# What a client must never pull in: the web framework, the database, the operator's framework,
# the worker's numerics, the metrics library, and every part built on the contract.
HEAVY = [
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "psycopg",
    "alembic",
    "argon2",
    "kopf",
    "torch",
    "numpy",
    "safetensors",
    "pynvml",
    "prometheus_client",
    "PIL",
    "aijobs_services",
    "aijobs_operator",
    "aijobs_worker",
    "aijobs_dev",
]
# Runs `aijobs ARGV...` with a finder in front of every other one that refuses HEAVY: the command
# fails with the name of the first heavy module it reaches.
BLOCKED_RUN = """
import sys
from importlib.abc import MetaPathFinder

HEAVY = set(sys.argv[1].split())

class Refuse(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"the client imported {name}")
        return None

sys.meta_path.insert(0, Refuse())
from aijobs.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


def _client(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, " ".join(HEAVY), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def _requires(wheel: Path) -> list[Requirement]:
    archive = zipfile.ZipFile(wheel)
    [metadata] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    message = email.parser.Parser().parsestr(archive.read(metadata).decode())
    return [Requirement(line) for line in message.get_all("Requires-Dist") or []]


def _names(requires: list[Requirement], extra: str | None) -> set[str]:
    """The distributions pip installs for ``pip install aijobs`` (``extra`` None) or for what
    ``aijobs[extra]`` adds."""
    if extra is None:
        return {canonicalize_name(r.name) for r in requires if r.marker is None}
    return {
        canonicalize_name(r.name)
        for r in requires
        if r.marker is not None and r.marker.evaluate({"extra": extra})
    }


def test_pip_install_brings_only_the_clients_dependencies(runtime_wheel: Path) -> None:
    assert _names(_requires(runtime_wheel), None) == CLIENT


@pytest.mark.parametrize(
    ("extra", "brings"),
    [
        pytest.param("operator", {"kopf", "prometheus-client"}, id="operator"),
        pytest.param("services", {"fastapi", "uvicorn", "sqlalchemy", "psycopg", "alembic"}, id="services"),
        pytest.param("worker", {"numpy", "safetensors", "nvidia-ml-py", "pillow"}, id="worker"),
        pytest.param("torch", {"torch"}, id="torch"),
        pytest.param("dev", {"pytest", "ruff", "mypy", "schemathesis"}, id="dev"),
    ],
)
def test_each_part_brings_its_dependencies_as_an_extra(
    runtime_wheel: Path, extra: str, brings: set[str]
) -> None:
    assert brings <= _names(_requires(runtime_wheel), extra)


@pytest.mark.parametrize(
    ("extras", "has", "lacks"),
    [
        pytest.param(
            ["operator", "services"],
            {"kopf", "fastapi", "psycopg"},
            {"torch", "numpy", "pytest"},
            id="aijobs",
        ),
        pytest.param(
            ["worker", "torch"], {"torch", "numpy", "httpx"}, {"fastapi", "kopf", "sqlalchemy"}, id="worker"
        ),
    ],
)
def test_each_image_installs_exactly_its_extras(extras: list[str], has: set[str], lacks: set[str]) -> None:
    """The Dockerfile's two Python images, from the requirements its build writes."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"requirements.py /src/pyproject.toml {' '.join(extras)} >" in dockerfile
    proc = subprocess.run(
        [sys.executable, "docker/requirements.py", "pyproject.toml", *extras],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    installed = {canonicalize_name(Requirement(line).name) for line in proc.stdout.split()}
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    expected = CLIENT | {canonicalize_name(Requirement(r).name) for x in extras for r in optional[x]}
    assert installed == expected
    assert has <= installed and not lacks & installed


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--help"], id="aijobs"),
        pytest.param(["submit", "--help"], id="submit"),
    ],
)
def test_the_client_commands_explain_themselves_without_the_heavy_parts(argv: list[str]) -> None:
    """Building the parser imports every console module (admin and jobs included)."""
    proc = _client(*argv)
    assert proc.returncode == 0, proc.stderr
    assert "usage: aijobs" in proc.stdout


@pytest.fixture
def refusing_main() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A Main API on loopback that refuses every call with a problem, and keeps each request's
    method, path and Authorization header."""
    seen: list[dict[str, str]] = []

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(
                {"call": f"{self.command} {self.path}", "auth": self.headers.get("Authorization", "")}
            )
            body = json.dumps({"type": "about:blank", "title": "Unauthorized", "status": 401}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_a_submission_reaches_main_and_says_its_refusal_without_the_heavy_parts(
    refusing_main: tuple[str, list[dict[str, str]]], tmp_path: Path
) -> None:
    url, seen = refusing_main
    image = tmp_path / "cat.png"
    image.write_bytes(b"not checked by the client")
    # No configuration file: the environment names Main API and the token (an empty AIJOBS_CONFIG
    # is unset, in case the person running the tests has one).
    env = {"AIJOBS_MAIN_URL": url, "AIJOBS_TOKEN": "a-user-token", "AIJOBS_CONFIG": ""}
    proc = _client(
        "submit", str(image), "--pipeline", PIPELINES[0], env={**env, "XDG_CONFIG_HOME": str(tmp_path)}
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "401 Unauthorized" in proc.stderr
    assert seen == [{"call": "POST /v1/jobs", "auth": "Bearer a-user-token"}]
