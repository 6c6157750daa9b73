"""Schemathesis, a fuzzer nobody here wrote, against each service's own OpenAPI.

Each service runs as a real process over HTTP on PostgreSQL (Main API with the four others and
a kube-apiserver behind it, as the end-to-end tests run it). Every generated request is sent as
each caller the route admits (its ``x-callers``) and as one it does not, and every answer goes
through Schemathesis's default checks: no server error, a documented status, content type and
body schema, invalid data refused, authentication not ignored. Its check that valid data is
accepted is replaced by a stricter reading of the same promise
(:func:`refused_only_for_rules_beyond_the_schema`): a schema-valid request may be refused for a
rule no schema can say, never as one that does not fit the schema. Where the schema declares links
(or Schemathesis infers them), a stateful run follows them.

Run one service with ``-k payment`` (``storage``, ``auth``, ``main``; ``-k "ai and not main"``).
The example count is bounded so that the five take a few minutes together.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aijobs_dev.controlplane.cluster import ControlPlane, free_port
from aijobs_dev.testbed.postgres import PostgresCluster
from aijobs_dev.testbed.processes import CALLER_NAMES, ServiceProcess, make_secrets
from aijobs_dev.testbed.stack import Stack
from aijobs_services.kit.app import create_app
from aijobs_services.kit.callers import Allow
from aijobs_services.kit.idempotency import MAX_KEY_LENGTH
from aijobs_services.kit.problems import PROBLEM_JSON, problem_type
from aijobs_services.registry import spec
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.errors import NoLinksFound
from schemathesis.generation.stateful.state_machine import APIStateMachine
from schemathesis.specs.openapi.schemas import OpenApiSchema

from aijobs.wire.tokens import TokenSigner

SERVICES = ("payment", "ai", "storage", "auth", "main")
EXAMPLES = 12  # per operation and generation mode (positive, negative); the coverage phase adds its own
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # a failure found once is found again on the next run
    database=None,
    suppress_health_check=list(HealthCheck),
)

STATEFUL = settings(FUZZ, max_examples=8, stateful_step_count=6)
# Main API stands on a kube-apiserver (its jobs are custom objects), the others on PostgreSQL only.
PARAMS = [pytest.param(name, marks=[pytest.mark.controlplane] if name == "main" else []) for name in SERVICES]


@dataclass
class Running:
    """One service under test, and the credentials of everyone who may call it."""

    service: str
    url: str
    secrets: dict[str, str]
    user_token: str = ""  # Main API's users
    processes: list[Any] = field(default_factory=list)

    def service_token(self, caller: str) -> str:
        return f"Bearer {TokenSigner(caller, self.secrets[caller]).token_for(self.service)}"


def _alone(name: str, postgres: PostgresCluster, root: Path) -> Running:
    secrets = make_secrets()
    port = free_port()
    env = {}
    if name == "storage":
        env = {
            "AIJOBS_STORAGE_ROOT": str(root / "blobs"),
            "AIJOBS_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "AIJOBS_URL_SIGNING_KEY": secrets["admin"][:32],
        }
    database = postgres.create_database(f"fuzz_{name}_{uuid.uuid4().hex[:8]}")
    proc = ServiceProcess(name, database, secrets, root / "logs", port=port, env=env).start()
    return Running(name, proc.url, secrets, processes=[proc])


def _main(postgres: PostgresCluster, root: Path, control_plane: ControlPlane) -> Running:
    suffix = uuid.uuid4().hex[:8]
    stack = Stack(root, control_plane.kubeconfig, lambda n: postgres.create_database(f"fuzz_{n}_{suffix}"))
    stack.start_services()
    tenant = stack.tenant(f"fuzz{suffix}", credits=1_000_000)
    return Running("main", stack.services["main"].url, stack.secrets, tenant.token, processes=[stack])


@pytest.fixture(scope="module", params=PARAMS)
def running(
    request: pytest.FixtureRequest, postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    name: str = request.param
    root = tmp_path_factory.mktemp(f"fuzz-{name}")
    if name == "main":
        service = _main(postgres, root, request.getfixturevalue("control_plane"))
    else:
        service = _alone(name, postgres, root)
    yield service
    for proc in service.processes:
        proc.stop()


@pytest.fixture
def api_schema(request: pytest.FixtureRequest, running: Running) -> OpenApiSchema:
    # Schemathesis 4.32 renames the test node per operation through ``_nodeid``, which pytest
    # 9.2 no longer has: give it the attribute it reads (reporting only).
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid
    schema = schemathesis.openapi.from_url(f"{running.url}/openapi.json")
    # Credentials are the test's to choose (see _as): a generated Authorization would be overridden.
    schema.config.generation.update(with_security_parameters=False)
    # Replaced by refused_only_for_rules_beyond_the_schema, below.
    schema.config.checks.positive_data_acceptance.enabled = False
    return schema


# The problems that mean "your request does not fit the schema": answered to a request that does,
# they would make the schema a lie.
DOES_NOT_FIT = {problem_type("validation-error"), problem_type("malformed-json")}


@schemathesis.check
def refused_only_for_rules_beyond_the_schema(ctx: Any, response: Any, case: Case[Any]) -> bool | None:
    """A schema-valid request may still be refused, for the state it meets (a missing account,
    a settled hold, too few credits) or for a rule no schema can say (an expiry in the future, a
    URL whose host is public, bytes that are an image): with a status the route documents, as
    problem+json, and never as a request that does not fit the schema."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code < 400:
        return None
    if case.method.upper() != case.operation.method.upper():  # a method the route does not serve
        return None
    label = f"{case.operation.label} answered {response.status_code} to a schema-valid request"
    documented_statuses = set(case.operation.definition.raw.get("responses", {}))
    if str(response.status_code) not in documented_statuses:
        raise AssertionError(f"{label}, a status it does not document")
    content_type = (response.headers.get("content-type") or [""])[0].split(";")[0].strip()
    if content_type != PROBLEM_JSON:
        raise AssertionError(f"{label} as {content_type!r}, not {PROBLEM_JSON}")
    kind = json.loads(response.content).get("type")
    if kind in DOES_NOT_FIT:
        raise AssertionError(f"{label} as {kind}: the schema admits what the service refuses")
    return None


def _is_user_route(case: Case[Any]) -> bool:
    """Main API's user routes take the user's API token: as an ``authorization`` header
    parameter, or under a security scheme other than the kit's service token."""
    raw = case.operation.definition.raw
    header = any(
        p.get("in") == "header" and p.get("name", "").lower() == "authorization"
        for p in raw.get("parameters", [])
    )
    schemes = {name for requirement in raw.get("security", []) for name in requirement}
    return header or bool(schemes - {"serviceToken"})


def _as(case: Case[Any], authorization: str) -> dict[str, str]:
    """Headers that present ``authorization``, replacing any the case generated, and a fresh
    Idempotency-Key where the case has a valid one: generated keys repeat ("0", "00"...), and a
    key sent again with another body is rightly refused."""
    case.headers.pop("Authorization", None)  # a case-insensitive dict
    key = case.headers.get("Idempotency-Key")
    if (
        isinstance(key, str)
        and key.strip()
        and key.isascii()
        and key.isprintable()
        and len(key) <= MAX_KEY_LENGTH
    ):
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
    return {"Authorization": authorization}


def _callers(case: Case[Any], running: Running) -> tuple[list[str], list[str]]:
    """The credentials that may call this operation, and one that may not (if any)."""
    if _is_user_route(case):
        return [f"Bearer {running.user_token}"], [running.service_token("admin")]
    admitted = case.operation.definition.raw.get("x-callers")
    if admitted is None:  # public: health, readiness, queue depth
        return [], []
    allow = Allow(*admitted)
    may = [running.service_token(c) for c in CALLER_NAMES if "*" in admitted or allow.admits(c)]
    may_not = [running.service_token(c) for c in CALLER_NAMES if "*" not in admitted and not allow.admits(c)]
    return may, may_not[:1]


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@FUZZ
def test_every_answer_matches_the_openapi_for_callers_admitted_and_refused(
    case: Case[Any], running: Running
) -> None:
    may, may_not = _callers(case, running)
    if not may and not may_not:
        case.call_and_validate()
        return
    for authorization in may:
        case.call_and_validate(headers=_as(case, authorization))
    for authorization in may_not:
        refused = case.call_and_validate(headers=_as(case, authorization))
        # A well-formed request is refused for who sends it; a malformed one may be refused first
        # for what it is (a missing Idempotency-Key, an unsupported method): never served.
        well_formed = case.meta is None or case.meta.generation.mode.is_positive
        if well_formed and case.method.upper() == case.operation.method.upper():
            assert refused.status_code in (401, 403), (
                f"{case.operation.label} answered {refused.status_code} to a caller it does not admit"
            )
        else:
            assert refused.status_code >= 400, f"{case.operation.label} served a caller it does not admit"


def test_linked_operations_hold_together_across_calls(api_schema: OpenApiSchema, running: Running) -> None:
    """Follow the links the schema declares (or Schemathesis infers), as the first admitted caller."""
    machine_base: type[APIStateMachine] = api_schema.as_state_machine()

    class Machine(machine_base):  # type: ignore[valid-type, misc]
        def get_call_kwargs(self, case: Case[Any]) -> dict[str, Any]:
            may, _ = _callers(case, running)
            return {"headers": _as(case, may[0])} if may else {}

    try:
        Machine.run(settings=STATEFUL)
    except NoLinksFound as exc:  # nothing to follow: the per-operation test covers it alone
        pytest.skip(str(exc).splitlines()[0])


def _in_memory(name: str, tmp_path: Path) -> FastAPI:
    """The service's app as it would serve, on a database it never opens: enough for its OpenAPI
    and for answers the kit gives before any route runs."""
    service = spec(name)
    extra: dict[str, Any] = {}
    if name == "main":  # a client for an API server that is never called
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                    "users": [{"name": "u", "user": {"token": "t"}}],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                }
            )
        )
        extra["kubeconfig"] = str(kubeconfig)
    settings = service.settings_class(
        service=name,
        database_url=f"sqlite:///{tmp_path / 'never.db'}",
        callers=make_secrets(),
        migrate_on_start=False,
        sweep_interval_seconds=0,
        **extra,
    )
    return create_app(service, settings)


@pytest.mark.parametrize("name", SERVICES)
def test_every_error_a_route_can_answer_is_documented_as_problem_json(name: str, tmp_path: Path) -> None:
    doc = _in_memory(name, tmp_path).openapi()
    assert not {"HTTPValidationError", "ValidationError"} & set(doc["components"]["schemas"])
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            responses = operation["responses"]
            errors = {status: r for status, r in responses.items() if status.isdigit() and int(status) >= 400}
            assert {status: set(r["content"]) for status, r in errors.items()} == {
                status: {PROBLEM_JSON} for status in errors
            }, where
            assert "500" in errors, where
            if "x-callers" in operation:
                assert operation["security"] == [{"serviceToken": []}] and "401" in errors, where
            if "requestBody" in operation and "application/json" in operation["requestBody"]["content"]:
                assert {"400", "413", "422"} <= set(errors), where


def test_a_wrong_method_names_every_method_the_path_serves(tmp_path: Path) -> None:
    with TestClient(_in_memory("payment", tmp_path)) as http:
        listed_and_opened = http.request("DELETE", "/v1/accounts")
        one_route = http.request("DELETE", "/v1/holds/h-1/capture")
    assert listed_and_opened.status_code == 405
    assert listed_and_opened.headers["allow"] == "GET, POST"
    assert listed_and_opened.headers["content-type"] == PROBLEM_JSON
    assert one_route.headers["allow"] == "POST"
