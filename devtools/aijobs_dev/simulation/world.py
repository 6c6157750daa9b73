"""Deterministic simulation of the saga under fault schedules (FoundationDB's and TigerBeetle's
VOPR idea, for aijobs).

The operator's real engine and step code (:class:`aijobs_operator.engine.Reconciler`, the real
:class:`~aijobs.wire.client.ServiceClient` and its error sorting) run against in-memory
twins of the five services and of the API server, on a virtual clock, in one event loop with no
real I/O. Every source of nondeterminism — the clock, which job is woken, which watch event
arrives and when, which call fails and how, when the operator crashes, when a user deletes a job,
when the GPU worker finishes — is drawn from one seeded generator, so a seed replays exactly.

Faults a schedule may draw (each with a probability the seed also draws):

- the operator **crashes** at any await point: before a service call, after the callee committed
  but before the answer arrived, before or after a status write (it then restarts from what the
  API server holds, as a new process would);
- a request or its answer is **lost** (a timeout), the callee answers 503 or 429, before or after
  committing;
- the user **deletes** the job at any moment; the clock **jumps** past the deadline at any step;
- watch events arrive **late, twice or out of order**; the operator is woken at random;
- the disk is **full**; the GPU task **fails**; the account is **short** of credits.

After the schedule, faults heal and the world runs until every job is terminal or gone; then an
independent checker (:mod:`aijobs_dev.simulation.check`) tests I1-I5 from what the twins hold.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import json
import logging
import random
from dataclasses import dataclass
from typing import Any

import httpx
from aijobs_operator.config import OperatorSettings
from aijobs_operator.engine import Reconciler
from aijobs_operator.kube import ApiException
from aijobs_operator.steps import Services

from aijobs.api.rules import TERMINAL_PHASES
from aijobs.wire.client import ServiceClient
from aijobs.wire.tokens import TokenSigner
from aijobs_dev.simulation.twins import AITwin, AuthTwin, MainTwin, PaymentTwin, Reply, StorageTwin, Twin

__all__ = ["Crash", "Faults", "World"]

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"sim" * 8).decode()


def _clone(value: Any) -> Any:
    """A deep copy of JSON data (several times faster than copy.deepcopy)."""
    return json.loads(json.dumps(value))


class Crash(BaseException):
    """The operator process dies here. A BaseException, so no ``except Exception`` in the engine
    can swallow it, as none can swallow SIGKILL."""


@dataclass(frozen=True)
class Faults:
    """How likely each fault is in one schedule (drawn from the seed)."""

    crash: float = 0.0
    lose: float = 0.0
    error: float = 0.0
    delete: float = 0.0
    jump: float = 0.0
    watch: float = 0.0
    disk_full: float = 0.0
    task_fails: float = 0.0

    @classmethod
    def draw(cls, rng: random.Random) -> Faults:
        def p(hi: float) -> float:
            return rng.choice([0.0, rng.uniform(0, hi)])

        return cls(
            crash=p(0.15),
            lose=p(0.3),
            error=p(0.3),
            delete=p(0.3),
            jump=p(0.08),
            watch=p(0.5),
            disk_full=p(0.2),
            task_fails=p(0.3),
        )


@dataclass
class SimJob:
    uid: str
    namespace: str
    name: str
    price: int
    spec: dict[str, Any]
    deleted_at: dt.datetime | None = None


class KubeTwin:
    """The API server as the operator's :class:`~aijobs_operator.kube.KubeWriter` sees it: objects
    with resource versions, status patches, finalizers, deletion, and a watch stream."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.rv = 0
        self.watch: list[tuple[str, dict[str, Any]]] = []
        self.events: list[tuple[str, str, str]] = []

    def _bump(self, body: dict[str, Any], kind: str = "MODIFIED") -> dict[str, Any]:
        self.rv += 1
        body["metadata"]["resourceVersion"] = str(self.rv)
        self.watch.append((kind, _clone(body)))
        clone: dict[str, Any] = _clone(body)
        return clone

    def create(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", self.world.now().strftime("%Y-%m-%dT%H:%M:%SZ"))
        self.objects[(meta["namespace"], meta["name"])] = body
        self._bump(body, "ADDED")

    def delete(self, namespace: str, name: str) -> None:
        body = self.objects.get((namespace, name))
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        if not body["metadata"].get("finalizers"):
            del self.objects[(namespace, name)]
            self.watch.append(("DELETED", _clone(body)))
            return
        body["metadata"]["deletionTimestamp"] = self.world.now().strftime("%Y-%m-%dT%H:%M:%SZ")
        self._bump(body)

    def _get(self, namespace: str, name: str) -> dict[str, Any]:
        body = self.objects.get((namespace, name))
        if body is None:
            raise ApiException(status=404, reason="Not Found")
        return body

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.world.maybe_crash("before writing the status")
        body = self._get(namespace, name)
        merged = {**(body.get("status") or {}), **_clone(status)}
        body["status"] = merged
        self.world.writes += 1
        out = self._bump(body)
        self.world.maybe_crash("after writing the status")
        return out

    async def add_finalizer(self, body: dict[str, Any], finalizer: str) -> dict[str, Any]:
        self.world.maybe_crash("before adding the finalizer")
        stored = self._get(body["metadata"]["namespace"], body["metadata"]["name"])
        if stored["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"]:
            raise ApiException(status=422, reason="the resourceVersion test failed")
        stored["metadata"].setdefault("finalizers", []).append(finalizer)
        return self._bump(stored)

    async def remove_finalizer(self, body: dict[str, Any], finalizer: str) -> None:
        self.world.maybe_crash("before removing the finalizer")
        meta = body["metadata"]
        stored = self.objects.get((meta["namespace"], meta["name"]))
        if stored is None or finalizer not in (stored["metadata"].get("finalizers") or []):
            return
        stored["metadata"]["finalizers"].remove(finalizer)
        if stored["metadata"].get("deletionTimestamp") and not stored["metadata"]["finalizers"]:
            del self.objects[(meta["namespace"], meta["name"])]
            self.watch.append(("DELETED", _clone(stored)))
            self.world.gone.add(meta["uid"])
        else:
            self._bump(stored)

    async def event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((body["metadata"]["name"], reason, message))


@functools.cache
def _base_settings() -> OperatorSettings:
    return OperatorSettings(
        secret="sim-secret-0123456789abcdef-0123456789",  # noqa: S106 - a twin checks no token
        download_link_seconds=3600,
        metrics_port=0,
    )


class World:
    """One schedule: a few jobs, the twins, the operator, and the seeded fault injector."""

    def __init__(self, seed: int, faults: Faults | None = None, jobs: int | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults if faults is not None else Faults.draw(self.rng)
        self.clock = T0 + dt.timedelta(seconds=self.rng.randrange(0, 86400))
        self.healed = False
        self.story: list[str] = []
        self.writes = 0
        self.gone: set[str] = set()
        self.fired: dict[str, int] = {}
        self.auth = AuthTwin(self.now)
        self.payment = PaymentTwin(self.now)
        self.storage = StorageTwin(self.now)
        self.ai = AITwin(self.now)
        self.main = MainTwin(self.now)
        self.twins: dict[str, Twin] = {
            "auth": self.auth,
            "payment": self.payment,
            "storage": self.storage,
            "ai": self.ai,
            "main": self.main,
        }
        self.kube = KubeTwin(self)
        self.cfg = _base_settings().model_copy(
            update={
                "default_deadline_seconds": self.rng.choice([60, 3600, 3600]),
                "hold_grace_seconds": self.rng.choice([0, 60, 3600]),
            }
        )
        self.jobs: list[SimJob] = []
        self._make_jobs(jobs if jobs is not None else self.rng.randint(1, 3))
        self.operator = self._start_operator()

    # -- the world ----------------------------------------------------------------------------
    def now(self) -> dt.datetime:
        return self.clock

    def say(self, line: str) -> None:
        self.story.append(f"[{(self.clock - T0).total_seconds():9.1f}s] {line}")

    def fire(self, kind: str, where: str) -> None:
        self.fired[kind] = self.fired.get(kind, 0) + 1
        self.say(f"FAULT {kind}: {where}")

    def chance(self, p: float) -> bool:
        return not self.healed and p > 0 and self.rng.random() < p

    def maybe_crash(self, where: str) -> None:
        if self.chance(self.faults.crash / 3):
            self.fire("crash", where)
            raise Crash(where)

    def _make_jobs(self, n: int) -> None:
        account, namespace = "acme", "team"
        self.auth.bindings.add((namespace, account))
        prices = [self.rng.randint(1, 20) for _ in range(n)]
        from aijobs_dev.simulation.twins import Account

        short = self.rng.random() < 0.15
        self.payment.accounts[account] = Account(available=sum(prices) - (prices[0] if short else 0))
        for i, price in enumerate(prices):
            uid = f"{self.seed:x}-uid-{i}"
            spec: dict[str, Any] = {
                "account": account,
                "input": {"inline": {"contentType": "image/png", "data": PNG}},
                "pipeline": "resize",
                "parameters": {"width": 2, "height": 2},
                "price": price,
                "retryPolicy": {
                    "maxAttempts": self.rng.choice([1, 3, 10]),
                    "initialBackoffSeconds": self.rng.choice([1, 5]),
                    "maxBackoffSeconds": self.rng.choice([10, 60]),
                },
            }
            shape = self.rng.random()
            if shape < 0.15:  # a runAt near or beyond what a hold can cover
                days = self.rng.choice([1, 29, 30, 31, 45])
                spec["runAt"] = (self.clock + dt.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
            elif shape < 0.3:  # a deadline at a step's edge
                spec["deadline"] = (self.clock + dt.timedelta(seconds=self.rng.randint(1, 40))).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                )
            job = SimJob(uid, namespace, f"job-{i}", price, spec)
            self.jobs.append(job)
            self.kube.create(
                {
                    "apiVersion": "aijobs.io/v1alpha1",
                    "kind": "AIImageJob",
                    "metadata": {"name": job.name, "namespace": namespace, "uid": uid},
                    "spec": spec,
                }
            )
            self.say(f"created {job.name} price {price} spec {json.dumps(spec)[:160]}")

    # -- the operator and its edges -----------------------------------------------------------
    def _transport(self, service: str) -> httpx.MockTransport:
        twin = self.twins[service]

        def handle(request: httpx.Request) -> httpx.Response:
            where = f"{service} {request.method} {request.url.path}"
            lose, error = self.faults.lose / 2, self.faults.error / 2
            self.maybe_crash(f"before {where}")
            if self.chance(lose):
                self.fire("lose-request", where)
                raise httpx.ConnectError("simulated: request lost", request=request)
            if self.chance(error):
                self.fire("error-before", where)
                return httpx.Response(self.rng.choice([503, 429, 500]), json={"detail": "simulated"})
            content = request.content
            body = (
                json.loads(content)
                if content and request.headers.get("content-type") == "application/json"
                else None
            )
            params = dict(request.url.params)
            raw = b"" if body is not None else content
            if service == "storage" and self.chance(self.faults.disk_full):
                self.storage.disk_full = True
                self.fire("disk-full", where)
            self.payment.sweep()
            reply: Reply = twin.handle(
                request.method, request.url.path, request.headers.get("idempotency-key"), body, params, raw
            )
            self.storage.disk_full = False
            self.say(f"{where} key={request.headers.get('idempotency-key')} -> {reply.status}")
            self.maybe_crash(f"after {where} committed, before its answer")
            if self.chance(lose):
                self.fire("lose-answer", where)
                raise httpx.ReadTimeout("simulated: answer lost", request=request)
            if self.chance(error):
                self.fire("error-after", where)
                return httpx.Response(503, json={"detail": "simulated"})
            return httpx.Response(reply.status, json=reply.body)

        return httpx.MockTransport(handle)

    def _start_operator(self) -> Reconciler:
        signer = TokenSigner("operator", self.cfg.secret)

        def client(name: str) -> ServiceClient:
            return ServiceClient(name, f"http://{name}", signer, transport=self._transport(name))

        services = Services(
            auth=client("auth"),
            payment=client("payment"),
            storage=client("storage"),
            ai=client("ai"),
            main=client("main"),
        )
        operator = Reconciler(self.cfg, services, self.kube, clock=self.now)  # type: ignore[arg-type]
        for body in self.kube.objects.values():  # a new process lists before it watches
            operator.observe("ADDED", _clone(body))
        self.kube.watch.clear()
        return operator

    def _restart(self) -> None:
        """A new operator process; often after a while down (past a deadline, a hold's expiry)."""
        if self.rng.random() < 0.5:
            down = self.rng.choice([5, 60, 600, 3600, 86400])
            self.clock += dt.timedelta(seconds=down)
            self.say(f"operator down for {down}s")
        self.say("operator restarts")
        self.operator = self._start_operator()

    # -- the schedule -------------------------------------------------------------------------
    async def _pass(self, key: tuple[str, str]) -> None:
        self.say(f"pass {key[1]}")
        try:
            await self.operator.reconcile(key)
        except Crash:
            self._restart()
        except ApiException as exc:  # the engine's worker logs it and retries later
            self.say(f"pass {key[1]} failed: API {exc.status}")
        self.operator._running.discard(key)

    def _deliver_watch(self) -> None:
        if not self.kube.watch:
            return
        if self.chance(self.faults.watch):
            i = self.rng.randrange(len(self.kube.watch))  # out of order
            kind, body = self.kube.watch[i]
            if self.rng.random() < 0.5:
                self.kube.watch.pop(i)  # else: it arrives again later (twice)
            self.fire(
                "watch-disorder",
                f"{kind} {body['metadata']['name']} rv {body['metadata']['resourceVersion']}",
            )
        else:
            kind, body = self.kube.watch.pop(0)
        self.operator.observe(kind, body)

    def _work(self) -> None:
        """The GPU worker: a due task starts; a running one finishes (or fails, or sees its cancel)."""
        for task in self.ai.tasks.values():
            if task.state == "scheduled" and task.run_at <= self.clock and self.rng.random() < 0.5:
                task.state, task.updated_at = "running", self.clock
                self.say(f"worker starts {task.id}")
            elif task.state == "running" and self.rng.random() < 0.5:
                if task.cancel_requested:
                    if self.rng.random() < 0.5:  # it stored its result before it heard of the cancel
                        self.storage.store(
                            f"job:{task.job_id}:result", task.account, task.job_id, "result", b"late"
                        )
                    task.state = "cancelled"
                elif self.chance(self.faults.task_fails):
                    self.fire("task-fails", task.id)
                    task.state, task.error = "failed", "simulated: the model failed"
                else:
                    input_obj = self.storage.objects.get(task.input_object_id)
                    account = input_obj.account if input_obj else task.account
                    reply = self.storage.store(
                        f"job:{task.job_id}:result",
                        account,
                        task.job_id,
                        "result",
                        f"result-{task.id}".encode(),
                    )
                    if reply.status >= 300:
                        continue  # the worker keeps it spooled and tries again
                    task.state, task.result_object_id = "succeeded", reply.body["id"]
                self.say(f"worker ends {task.id}: {task.state}")
                task.updated_at = self.clock

    async def step(self) -> None:
        r = self.rng.random()
        keys = list(self.kube.objects)
        if r < 0.3 and keys:
            await self._pass(self.rng.choice(keys))
        elif r < 0.5:
            self._deliver_watch()
            while self.operator._queued:  # what the watch queued runs now
                key = self.operator._queue.get_nowait()
                self.operator._queued.discard(key)
                await self._pass(key)
        elif r < 0.65:
            self._work()
        elif r < 0.72:
            try:
                await self.operator._follow()
            except Crash:
                self._restart()
            except Exception as exc:
                self.say(f"follow failed: {exc}")
        elif r < 0.76 and keys and self.chance(self.faults.delete):
            ns, name = self.rng.choice(keys)
            self.fire("delete", name)
            for job in self.jobs:
                if job.name == name and job.deleted_at is None:
                    job.deleted_at = self.clock
            self.kube.delete(ns, name)
        elif r < 0.78 and self.chance(self.faults.jump):
            jump = self.rng.choice([30, 300, 3600, 86400, 40 * 86400])
            self.fire("clock-jump", f"+{jump}s")
            self.clock += dt.timedelta(seconds=jump)
        else:
            self.clock += dt.timedelta(seconds=self.rng.choice([0.1, 0.5, 1, 2, 5, 15]))

    def settled(self) -> bool:
        for body in self.kube.objects.values():
            if (body.get("status") or {}).get("phase") not in TERMINAL_PHASES:
                return False
            if body["metadata"].get("deletionTimestamp"):
                return False
        return True

    async def run(self, steps: int = 64, heal_rounds: int = 400) -> None:
        for _ in range(steps):
            await self.step()
        self.healed = True
        self.say("--- faults heal ---")
        for _ in range(heal_rounds):
            if self.settled():
                return
            self._work()
            self.payment.sweep()
            while self.kube.watch:
                self._deliver_watch()
            for key in list(self.kube.objects):
                await self._pass(key)
            self.clock += dt.timedelta(seconds=self.rng.choice([1, 5, 30, 300]))
            later = [
                t.run_at for t in self.ai.tasks.values() if t.state == "scheduled" and t.run_at > self.clock
            ]
            if later and self.rng.random() < 0.3:  # nothing happens until a runAt: skip to it
                self.clock = min(later)

    def run_sync(self, steps: int = 64) -> None:
        logging.getLogger("aijobs.operator").setLevel(logging.CRITICAL)
        asyncio.run(self.run(steps))
