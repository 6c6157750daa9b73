"""The whole of aijobs on one machine: five services, fault proxies in front of them, the
operator and workers, against a control plane. Used by the demo, the end-to-end tests and the
fault campaign, so all three run the same thing.

The operator and the workers reach the services through fault proxies (pass-through until a
rule is set); users, admins and Main API reach them directly. A bench that measures the system
as it is deployed names no proxies (``proxied=()``): every process then reaches the services
directly, and the proxies' own CPU is not counted against the system.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client as k8s

from aijobs.kube import api_client
from aijobs.wire.tokens import TokenSigner
from aijobs_dev.controlplane.cluster import free_port
from aijobs_dev.testbed.processes import ManagedProcess, ServiceProcess, make_secrets

SERVICES = ("auth", "payment", "storage", "ai", "main")
PROXIED = ("auth", "payment", "storage", "ai", "main")


@dataclass
class Tenant:
    account: str
    user: str
    namespace: str
    token: str


@dataclass
class Stack:
    root: Path
    kubeconfig: Path
    database_url: Callable[[str], str]  # service name -> its own database
    secrets: dict[str, str] = field(default_factory=make_secrets)
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    operator_env: dict[str, str] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    proxies: dict[str, ManagedProcess] = field(default_factory=dict)
    operators: list[ManagedProcess] = field(default_factory=list)
    workers: list[ManagedProcess] = field(default_factory=list)
    seed: int = 0
    proxied: tuple[str, ...] = PROXIED  # the services the operator and workers reach through a proxy

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    # -- processes ----------------------------------------------------------------------------
    def start_services(self) -> None:
        ports = {name: free_port() for name in SERVICES}
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        common = {"AIJOBS_URL_SIGNING_KEY": self.secrets["admin"][:32]}
        extra = {
            "storage": {
                "AIJOBS_STORAGE_ROOT": str(self.root / "storage-volume"),
                "AIJOBS_PUBLIC_URL": urls["storage"],
                **common,
            },
            "main": {
                "AIJOBS_IDENTITY": "main-api",
                "AIJOBS_SECRET": self.secrets["main-api"],
                "AIJOBS_KUBECONFIG": str(self.kubeconfig),
                "AIJOBS_AUTH_URL": urls["auth"],
                "AIJOBS_STORAGE_URL": urls["storage"],
                "AIJOBS_PAYMENT_URL": urls["payment"],
                "AIJOBS_AI_URL": urls["ai"],
            },
        }
        for name in SERVICES:
            env = {**extra.get(name, {}), **self.service_env.get(name, {})}
            self.services[name] = ServiceProcess(
                name, self.database_url(name), self.secrets, self.logs, port=ports[name], env=env
            )
        for proc in self.services.values():  # start all, then wait: faster than one by one
            proc.ready, ready = None, proc.ready
            proc.start()
            proc.ready = ready
        for proc in self.services.values():
            proc.wait_ready()
        for name in self.proxied:
            self.start_proxy(name)

    def start_proxy(self, name: str) -> ManagedProcess:
        port = free_port()
        proxy = ManagedProcess(
            f"proxy-{name}",
            [
                sys.executable,
                "-m",
                "aijobs_dev.testbed.faultproxy",
                "--port",
                str(port),
                "--upstream",
                self.services[name].url,
                "--seed",
                str(self.seed),
            ],
            self.logs,
            ready=lambda: httpx.get(f"http://127.0.0.1:{port}/__faults/rules", timeout=2).is_success,
        )
        proxy.env["AIJOBS_PROXY_PORT"] = str(port)
        self.proxies[name] = proxy.start()
        return proxy

    def proxied_url(self, name: str) -> str:
        """Where the operator and workers reach ``name``: its proxy, or itself when not proxied."""
        if name not in self.proxied:
            return self.services[name].url
        return f"http://127.0.0.1:{self.proxies[name].env['AIJOBS_PROXY_PORT']}"

    def faults(self, name: str, rules: list[dict[str, Any]]) -> None:
        httpx.put(f"{self.proxied_url(name)}/__faults/rules", json=rules, timeout=5).raise_for_status()

    def fault_log(self, name: str) -> list[dict[str, Any]]:
        log: list[dict[str, Any]] = httpx.get(f"{self.proxied_url(name)}/__faults/log", timeout=5).json()
        return log

    def start_operator(self, **env: str) -> ManagedProcess:
        metrics = free_port()
        full = {
            "AIJOBS_SECRET": self.secrets["operator"],
            "AIJOBS_KUBECONFIG": str(self.kubeconfig),
            "AIJOBS_AUTH_URL": self.proxied_url("auth"),
            "AIJOBS_PAYMENT_URL": self.proxied_url("payment"),
            "AIJOBS_STORAGE_URL": self.proxied_url("storage"),
            "AIJOBS_AI_URL": self.proxied_url("ai"),
            "AIJOBS_MAIN_URL": self.proxied_url("main"),
            "AIJOBS_METRICS_PORT": str(metrics),
            "AIJOBS_FOLLOW_INTERVAL_SECONDS": "0.2",
            "AIJOBS_CALL_TIMEOUT_SECONDS": "5",
            "AIJOBS_LEASE_SECONDS": "10",  # renewed every 3.3 s: a loaded machine must not lose it
            "AIJOBS_AUDIT_INTERVAL_SECONDS": "2",
            "AIJOBS_ACCOUNT_SYNC_INTERVAL_SECONDS": "1",
            "AIJOBS_POD_NAME": f"operator-{len(self.operators)}",
            **self.operator_env,
            **env,
        }
        operator = ManagedProcess(
            f"operator-{len(self.operators)}",
            [sys.executable, "-m", "aijobs.cli", "operator"],
            self.logs,
            full,
        )
        operator.env["AIJOBS_METRICS_URL"] = f"http://127.0.0.1:{metrics}/metrics"
        self.operators.append(operator)
        return operator.start()

    def start_worker(self, **env: str) -> ManagedProcess:
        n = len(self.workers)
        full = {
            "AIJOBS_SECRET": self.secrets["worker"],
            "AIJOBS_AI_URL": self.proxied_url("ai"),
            "AIJOBS_STORAGE_URL": self.proxied_url("storage"),
            "AIJOBS_DEVICE": "cpu",
            "AIJOBS_SPOOL_DIR": str(self.root / f"spool-{n}"),
            "AIJOBS_POLL_SECONDS": "0.2",
            "AIJOBS_LEASE_SECONDS": "10",
            "AIJOBS_WORKER_ID": f"worker-{n}",
            **self.worker_env,
            **env,
        }
        worker = ManagedProcess(
            f"worker-{n}", [sys.executable, "-m", "aijobs.cli", "worker"], self.logs, full
        )
        self.workers.append(worker)
        return worker.start()

    def stop(self) -> None:
        for proc in [*self.workers, *self.operators, *self.proxies.values(), *self.services.values()]:
            proc.stop(timeout=10)

    # -- admin ----------------------------------------------------------------------------------
    def admin(self, service: str) -> httpx.Client:
        token = TokenSigner("admin", self.secrets["admin"]).token_for(service)
        return httpx.Client(
            base_url=self.services[service].url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def call(self, service: str, method: str, path: str, body: Any = None) -> Any:
        with self.admin(service) as http:
            headers = {"Idempotency-Key": uuid.uuid4().hex} if method != "GET" else {}
            response = http.request(method, path, json=body, headers=headers)
            response.raise_for_status()
            return response.json()

    def namespace(self, name: str) -> None:
        """Create a namespace (already there is fine)."""
        core = k8s.CoreV1Api(api_client(self.kubeconfig))
        try:
            core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
        except k8s.exceptions.ApiException as exc:
            if exc.status != 409:
                raise

    def tenant(
        self, account: str, credits: int, namespace: str | None = None, user: str | None = None
    ) -> Tenant:
        """A paying tenant: an account with credits, a user with a token, a namespace bound to it."""
        namespace = namespace or f"{account}-jobs"
        user = user or f"{account}-user"
        self.namespace(namespace)
        self.call("auth", "POST", "/v1/tenants", {"id": account})
        self.call("auth", "POST", "/v1/users", {"id": user, "tenant": account})
        token = self.call("auth", "POST", "/v1/tokens", {"user": user})["token"]
        self.call("auth", "POST", "/v1/bindings", {"namespace": namespace, "account": account})
        self.call("payment", "POST", "/v1/accounts", {"id": account})
        if credits:
            self.call("payment", "POST", f"/v1/accounts/{account}/top-ups", {"amount": credits})
        return Tenant(account, user, namespace, token)

    def balance(self, account: str) -> dict[str, int]:
        balance: dict[str, int] = self.call("payment", "GET", f"/v1/accounts/{account}")
        return balance

    def job_records(self, uid: str) -> dict[str, Any]:
        """What every service holds for one job (for assertions and the checker)."""
        return {
            "charges": self.call("payment", "GET", f"/v1/jobs/{uid}/charges"),
            "objects": self.call("storage", "GET", f"/v1/jobs/{uid}/objects")["items"],
            "tasks": self.call("ai", "POST", "/v1/tasks/query", {"jobIds": [uid]})["items"],
        }

    def operator_metrics(self, operator: ManagedProcess) -> str:
        return httpx.get(operator.env["AIJOBS_METRICS_URL"], timeout=5).text


def dump(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)
