"""``aijobs operator``: take the Lease, then let kopf watch AIImageJobs and feed the reconciler."""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import os
import socket
from typing import Any

import kopf

from aijobs.api.tenancy import ACCOUNT_PLURAL
from aijobs.api.v1alpha1 import GROUP, PLURAL, VERSION
from aijobs.health import start_probe_server
from aijobs.kube import api_client
from aijobs.wire.client import ServiceClient
from aijobs.wire.tokens import TokenSigner
from aijobs_operator.config import OperatorSettings
from aijobs_operator.engine import Reconciler, slim
from aijobs_operator.health import Vitals, tap_watch_streams
from aijobs_operator.kube import ApiKubeWriter
from aijobs_operator.leader import LeaseElector
from aijobs_operator.memory import MemorySettings, keep_small, prepare
from aijobs_operator.metrics import METRICS
from aijobs_operator.steps import Services
from aijobs_operator.tenancy import AccountSyncer
from aijobs_operator.ttl import TtlCollector

log = logging.getLogger("aijobs.operator")


def build_services(cfg: OperatorSettings) -> Services:
    signer = TokenSigner(cfg.identity, cfg.secret)

    def client(name: str, url: str) -> ServiceClient:
        return ServiceClient(name, url, signer, timeout=cfg.call_timeout_seconds)

    return Services(
        auth=client("auth", cfg.auth_url),
        payment=client("payment", cfg.payment_url),
        storage=client("storage", cfg.storage_url),
        ai=client("ai", cfg.ai_url),
        main=client("main", cfg.main_url),
    )


def registry_for(
    reconciler: Reconciler,
    extra_tasks: list[Any],
    accounts: AccountSyncer | None = None,
    vitals: Vitals | None = None,
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            return kopf.login_with_service_account(**kwargs)
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        # The reconciler writes status and posts events itself, batched; kopf only watches.
        settings.posting.enabled = False
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        if vitals is not None:  # kopf reconnects a stream silent this long; two such is dead
            vitals.silence = 2 * settings.watching.inactivity_timeout
        for factory in [reconciler.run, *extra_tasks]:
            task = asyncio.get_running_loop().create_task(factory())
            task.add_done_callback(_die_loudly)

    # The handlers are coroutines so that kopf calls them on the event loop, where the reconciler
    # runs: a plain function would run on kopf's thread pool and change the reconciler's cache
    # while the loop iterates it (a 10,000-job campaign crashed the operator that way).
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def on_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        # type is None for objects of the initial listing: treat them as added.
        reconciler.observe(type or "ADDED", slim(dict(body)))

    if accounts is not None:

        @kopf.on.event(GROUP, VERSION, ACCOUNT_PLURAL, registry=registry)
        async def on_account(type: str | None, body: kopf.Body, **_: Any) -> None:
            accounts.observe(type or "ADDED", copy.deepcopy(dict(body)))

    return registry


def _die_loudly(task: asyncio.Task[Any]) -> None:
    """A background loop of the operator ended: say why, and stop the process (a restart is
    better than an operator that watches but no longer acts)."""
    if task.cancelled():
        return
    exc = task.exception()
    log.critical("operator loop %s ended: %r", task.get_coro(), exc, exc_info=exc)
    os._exit(70)


def run(cfg: OperatorSettings | None = None) -> None:
    cfg = cfg or OperatorSettings()
    memory = MemorySettings()
    prepare(memory)  # before the first thread: the arena cap holds only for threads started later
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is too much
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if cfg.kubeconfig:
        os.environ["KUBECONFIG"] = cfg.kubeconfig
    api = api_client(cfg.kubeconfig or None)
    identity = cfg.pod_name or f"{socket.gethostname()}-{os.getpid()}"
    vitals = Vitals(cfg.lease_seconds, [PLURAL, ACCOUNT_PLURAL])
    tap_watch_streams(vitals)
    if cfg.metrics_port:  # /metrics, and the kubelet's probes: /healthz (liveness), /readyz
        start_probe_server(
            cfg.metrics_port, METRICS.registry, {"/healthz": vitals.live, "/readyz": vitals.ready}
        )
    elector = LeaseElector(api, cfg.lease_name, cfg.lease_namespace, identity, cfg.lease_seconds, vitals)
    elector.acquire()
    # One writer for the jobs, the auditor's verdicts and the accounts.
    kube = ApiKubeWriter(api)
    reconciler = Reconciler(cfg, build_services(cfg), kube)
    tasks: list[Any] = [elector.keep]
    if memory.upkeep_seconds:
        tasks.append(functools.partial(keep_small, memory))
    collector = TtlCollector(
        kube,
        lambda: list(reconciler.cache.values()),
        cfg.default_ttl_seconds_after_finished,
        reconciler.clock,
        cfg.ttl_interval_seconds,
    )
    if cfg.audit_interval_seconds > 0:
        from aijobs_operator.auditor import Auditor

        auditor = Auditor(cfg, reconciler)
        tasks.append(auditor.run)
        collector.ready = auditor.judged  # a finished job's one audit comes before its deletion
    tasks.append(collector.run)
    services = reconciler.svc
    accounts = AccountSyncer(
        services, kube, lambda: list(reconciler.cache.values()), cfg.account_sync_interval_seconds
    )
    tasks.append(accounts.run)
    registry = registry_for(reconciler, tasks, accounts, vitals)
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not cfg.namespaces,
            namespaces=cfg.namespaces,
        )
    )
