"""Deterministic simulation of the saga under fault schedules (FoundationDB's and TigerBeetle's
VOPR idea, for aijobs).

The operator's real code — the job engine and its steps (:class:`aijobs_operator.engine.Reconciler`),
the CreditAccount reconciler (:class:`aijobs_operator.tenancy.AccountSyncer`), the auditor
(:class:`aijobs_operator.auditor.Auditor`), the real :class:`~aijobs.wire.client.ServiceClient`
and its error sorting — runs against in-memory twins of the five services and of the API server
(one :class:`~aijobs_operator.kube.KubeWriter` for jobs and CreditAccounts), on a virtual
clock, in one event loop with no real I/O. Every source of nondeterminism — the clock, which job
is woken, which watch event arrives and when, which call fails and how, when the operator crashes,
when a user deletes a job, when the GPU worker finishes — is drawn from one seeded generator, so a
seed replays exactly.

Faults a schedule may draw (each with a probability the seed also draws):

- the operator **crashes** at any await point: before a service call, after the callee committed
  but before the answer arrived, before or after a status write (it then restarts from what the
  API server holds, as a new process would);
- a request or its answer is **lost** (a timeout), the callee answers 503 or 429, before or after
  committing;
- the user **deletes** the job at any moment; the clock **jumps** past the deadline at any step;
- watch events arrive **late, twice or out of order**; the operator is woken at random (in a
  schedule without this fault, only as its engine wakes it: the watch, the follower, its writes'
  answers, its timers on the virtual clock; so a job that nothing wakes again stays as it is);
- the disk is **full**; the GPU task **fails**; the account is **short** of credits;
- an admin **edits** a CreditAccount (lets a contested namespace go, or lists it again),
  **deletes** one or re-creates it; jobs run in namespaces bound to their account, in one two
  accounts list (only its holder's may charge), and in one no account lists;
- a finished job's records are **damaged** behind the operator's back (a stray hold, a capture
  undone, an orphan object or task, a capture undone while AI disowns the task), and the auditor
  runs its pass at random moments, under the same crashes and lost answers as the steps;
- a restarted operator's cache fills **slowly** (a cold restart: some jobs reach it only later),
  and the operator's other work goes on **while the auditor's pass awaits** Payment (a job may
  capture, deliver, be deleted and go after the auditor read the holds).

After the schedule, faults heal and the world runs until every job is terminal or gone (its
operator woken only as the engine wakes it: the watch, the follower, its writes' answers and its
timers, which run on the virtual clock; a job nothing wakes again stays unfinished), the
auditor makes one more pass, and an independent checker (:mod:`aijobs_dev.simulation.check`)
tests I1-I5, tenancy and the auditor's repairs from what the twins hold.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from aijobs_operator.auditor import Auditor
from aijobs_operator.config import OperatorSettings
from aijobs_operator.engine import Reconciler
from aijobs_operator.kube import JOBS, ApiException, KubeWriter, Resource
from aijobs_operator.steps import Services
from aijobs_operator.tenancy import AccountSyncer, jobs_in_flight

from aijobs.api import auth as auth_wire
from aijobs.api import payment as payment_wire
from aijobs.api.base import Answer
from aijobs.api.payment import HoldState
from aijobs.api.rules import MAX_HOLD, TERMINAL_PHASES
from aijobs.api.tenancy import ACCOUNT_FINALIZER
from aijobs.wire.client import ServiceClient, ServiceError
from aijobs.wire.tokens import TokenSigner
from aijobs_dev.simulation.twins import (
    Account,
    AITwin,
    AuthTwin,
    Hold,
    MainTwin,
    PaymentTwin,
    Reply,
    StorageTwin,
    Task,
    Twin,
)
from aijobs_dev.simulation.twins.base import _parts

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
    damage: float = 0.0
    accounts: float = 0.0
    wake: float = 0.0

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
            damage=p(0.8),
            accounts=p(0.6),
            # Half the schedules: the engine's own wake-ups only. The others keep most of the
            # random passes every schedule had before this fault was one (each a chance for a
            # crash or a deletion mid-pass).
            wake=rng.choice([0.0, rng.uniform(0.3, 1.0)]),
        )


# The share of batch jobs that name their images in an image list rather than by a key prefix.
LIST_BATCHES = 0.5

# The share of operator restarts after which the new process's cache fills slowly: half its jobs
# reach it only later, through the watch, so its first passes (the auditor's too) run without
# them. Drawn from a random stream of its own, so the schedules' other draws stay as they were.
COLD_RESTARTS = 0.3
# After a cold restart, the chance at each step that its list hands over the next job it owes.
COLD_LISTING = 0.02

# Rounds of passes over what the engine queued, with no time passing, before the world moves on.
WAKE_ROUNDS = 100
# The share of audit passes (before faults heal) during which the operator's other work goes on:
# between the auditor's read of the holds and its look at its cache, a few rounds of passes,
# watch events and the worker run, as they do beside the auditor in one process, and a user who
# waits for a job to finish deletes it (a job can capture, deliver and go within one audit pass).
# Whether a pass is interleaved, and for how long, is drawn from a stream of its own; what runs
# meanwhile draws from the schedule's, so a schedule with an interleave goes on differently.
AUDIT_INTERLEAVED = 0.3


@dataclass
class SimJob:
    uid: str
    namespace: str
    account: str
    name: str
    price: int
    spec: dict[str, Any]
    created_at: dt.datetime
    deleted_at: dt.datetime | None = None
    images: int = 0  # a batch job's images (0: a single-image job)


@dataclass(frozen=True)
class Damage:
    """What the world did behind the operator's back to a finished job (as a lost call, a bug
    elsewhere or a person with database access would), for the auditor to find. ``kind`` names
    what the auditor must do: release a stray hold, capture a lost capture, delete an orphan
    object, cancel an orphan task; or, for ``doubtful-capture`` (a lost capture whose task AI
    says failed), nothing but report it: the log alone does not justify moving that money."""

    uid: str
    kind: str
    target: str  # the hold, object or task id
    at: dt.datetime


@dataclass(frozen=True)
class MoneyMove:
    """A hold the auditor settled (its Idempotency-Key says so), with what the world held at that
    moment: the checker judges whether the saga log and the services justified it."""

    uid: str
    action: str  # captured | released
    hold: str
    phase: str | None  # the job's phase in the API server then ("Gone": deleted)
    evidence: bool  # AI said the task succeeded and Storage held its result, committed
    other_captured: bool  # another hold of the job was captured already


# The CreditAccounts of every schedule: "lab" is listed by both (contested: whoever binds first
# holds it), "stray" by neither. Jobs are put in each namespace and name either account.
ACCOUNT_NAMESPACES = {"acme": ["team", "lab"], "globex": ["ops", "lab"]}
NAMESPACES = ("team", "ops", "lab", "stray")


class TenancyAuth(AuthTwin):
    """Auth with the tenants and namespace bindings the CreditAccount reconciler reads and
    changes (its routes, rules and wire models as ``services/aijobs_services/auth`` has them),
    keeping a log of every binding made or removed for the checker."""

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        super().__init__(clock)
        self.tenants: set[str] = set()
        self.binding_log: list[tuple[dt.datetime, str, str, str]] = []  # (when, bind|unbind, ns, account)

    def route(self, method: str, path: str) -> tuple[Callable[..., Reply], tuple[str, ...]] | None:
        p = _parts(path)
        if (method, p) == ("POST", ["tenants"]):
            return self.create_tenant, ()
        if method == "GET" and len(p) == 2 and p[0] == "tenants":
            return self.get_tenant, (p[1],)
        if (method, p) == ("GET", ["bindings"]):
            return self.list_bindings, ()
        if (method, p) == ("POST", ["bindings"]):
            return self.bind, ()
        if method == "DELETE" and len(p) == 3 and p[0] == "bindings":
            return self.unbind, (p[1], p[2])
        return super().route(method, path)

    def create_tenant(self, *, body: Any, **_: Any) -> Reply:
        tenant = auth_wire.TenantCreate.model_validate(body).id
        if tenant in self.tenants:
            return Reply.problem(409, "tenant-exists", f"tenant {tenant!r} already exists")
        self.tenants.add(tenant)
        return _answer(201, auth_wire.Tenant(id=tenant))

    def get_tenant(self, tenant: str, **_: Any) -> Reply:
        if tenant not in self.tenants:
            return Reply.problem(404, "unknown-tenant", f"no tenant {tenant!r}")
        return _answer(200, auth_wire.Tenant(id=tenant))

    def list_bindings(self, *, params: dict[str, str], **_: Any) -> Reply:
        items = [
            auth_wire.Binding(namespace=ns, account=account)
            for ns, account in sorted(self.bindings)
            if params.get("account", account) == account and params.get("namespace", ns) == ns
        ]
        return _answer(200, auth_wire.Bindings(items=items))

    def holder(self, namespace: str) -> str | None:
        return next((account for ns, account in sorted(self.bindings) if ns == namespace), None)

    def bind(self, *, body: Any, **_: Any) -> Reply:
        asked = auth_wire.BindingRequest.model_validate(body)
        if asked.account not in self.tenants:
            return Reply.problem(404, "unknown-tenant", f"no tenant {asked.account!r}")
        holder = self.holder(asked.namespace)
        if holder is not None and holder != asked.account:  # one account per namespace
            return Reply.problem(
                409,
                "namespace-bound-elsewhere",
                f"namespace {asked.namespace!r} is bound to account {holder!r}",
                namespace=asked.namespace,
                account=asked.account,
                heldBy=holder,
            )
        if holder is None:
            self.bindings.add((asked.namespace, asked.account))
            self.binding_log.append((self.clock(), "bind", asked.namespace, asked.account))
        return _answer(201, auth_wire.Binding(namespace=asked.namespace, account=asked.account))

    def unbind(self, namespace: str, account: str, **_: Any) -> Reply:
        if (namespace, account) in self.bindings:
            self.bindings.discard((namespace, account))
            self.binding_log.append((self.clock(), "unbind", namespace, account))
        return _answer(200, auth_wire.Unbound(namespace=namespace, account=account))


class AccountsPayment(PaymentTwin):
    """Payment with the account routes the CreditAccount reconciler calls (opening one, reading
    its balances), as ``services/aijobs_services/payment`` answers them."""

    def route(self, method: str, path: str) -> tuple[Callable[..., Reply], tuple[str, ...]] | None:
        p = _parts(path)
        if (method, p) == ("POST", ["accounts"]):
            return self.open_account, ()
        if method == "GET" and len(p) == 2 and p[0] == "accounts":
            return self.get_account, (p[1],)
        return super().route(method, path)

    def open_account(self, *, body: Any, **_: Any) -> Reply:
        account = payment_wire.AccountCreate.model_validate(body).id
        if account in self.accounts:
            return Reply.problem(409, "account-exists", f"account {account!r} already exists")
        self.accounts[account] = Account()
        return self.get_account(account, status=201)

    def get_account(self, account_id: str, status: int = 200, **_: Any) -> Reply:
        account = self.accounts.get(account_id)
        if account is None:
            return Reply.problem(404, "unknown-account", f"no account {account_id!r}")
        balance = account.available + account.held
        answer = payment_wire.Account(
            id=account_id, available=account.available, held=account.held, balance=balance
        )
        return _answer(status, answer)


class ObjectDeletingStorage(StorageTwin):
    """Storage with ``POST /v1/objects/{id}/delete`` (the auditor deletes one orphan object; the
    saga deletes a job's objects all at once)."""

    def route(self, method: str, path: str) -> tuple[Callable[..., Reply], tuple[str, ...]] | None:
        p = _parts(path)
        if method == "POST" and len(p) == 3 and p[0] == "objects" and p[2] == "delete":
            return self.delete_object, (p[1],)
        return super().route(method, path)

    def delete_object(self, object_id: str, **_: Any) -> Reply:
        obj = self.objects.get(object_id)
        if obj is None:
            return Reply.problem(404, "unknown-object", f"no object {object_id!r}")
        obj.state = "deleted"
        return self.get(object_id)


def _answer(status: int, answer: Answer) -> Reply:
    return Reply(status, answer.model_dump(by_alias=True, mode="json"))


class KubeTwin:
    """The API server as the operator's :class:`~aijobs_operator.kube.KubeWriter` sees it: objects
    with resource versions, status patches, finalizers, deletion, and a watch stream of the jobs.
    Jobs are kept by (namespace, name), CreditAccounts (cluster-scoped) by name."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.accounts: dict[str, dict[str, Any]] = {}
        self.rv = 0
        self.watch: list[tuple[str, dict[str, Any]]] = []
        self.events: list[tuple[str, str, str]] = []

    def _bump(self, body: dict[str, Any], kind: str = "MODIFIED") -> dict[str, Any]:
        self.rv += 1
        body["metadata"]["resourceVersion"] = str(self.rv)
        if "namespace" in body["metadata"]:  # the operator's watch of jobs; accounts are read whole
            self.watch.append((kind, _clone(body)))
        clone: dict[str, Any] = _clone(body)
        return clone

    def create(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", self.world.now().strftime("%Y-%m-%dT%H:%M:%SZ"))
        if "namespace" in meta:
            self.objects[(meta["namespace"], meta["name"])] = body
        else:
            self.accounts[meta["name"]] = body
        self._bump(body, "ADDED")

    def _forget(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        if "namespace" in meta:
            del self.objects[(meta["namespace"], meta["name"])]
            self.watch.append(("DELETED", _clone(body)))
            self.world.gone.add(meta["uid"])
        else:
            del self.accounts[meta["name"]]

    def request_deletion(self, namespace: str | None, name: str) -> None:
        """``kubectl delete``: the object goes now, or once its finalizers are removed."""
        body = self._find(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        if not body["metadata"].get("finalizers"):
            self._forget(body)
            return
        body["metadata"]["deletionTimestamp"] = self.world.now().strftime("%Y-%m-%dT%H:%M:%SZ")
        self._bump(body)

    def edit_spec(self, name: str, spec: dict[str, Any]) -> None:
        """A person edits a CreditAccount (``kubectl apply``): a new generation."""
        body = self.accounts[name]
        body["spec"] = spec
        body["metadata"]["generation"] += 1
        self._bump(body)

    def _find(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.accounts.get(name) if namespace is None else self.objects.get((namespace, name))

    def _get(self, namespace: str | None, name: str) -> dict[str, Any]:
        body = self._find(namespace, name)
        if body is None:
            raise ApiException(status=404, reason="Not Found")
        return body

    @staticmethod
    def _where(meta: dict[str, Any], resource: Resource) -> str | None:
        return meta["namespace"] if resource.namespaced else None

    async def patch_status(
        self,
        namespace: str | None,
        name: str,
        status: dict[str, Any],
        resource: Resource = JOBS,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        self.world.maybe_crash(f"before writing the status of {resource.kind} {name}")
        body = self._get(namespace if resource.namespaced else None, name)
        if resource_version is not None and body["metadata"]["resourceVersion"] != resource_version:
            raise ApiException(status=409, reason="Conflict: the object has been modified")
        merged = {**(body.get("status") or {}), **_clone(status)}
        body["status"] = merged
        self.world.writes += 1
        out = self._bump(body)
        self.world.maybe_crash(f"after writing the status of {resource.kind} {name}")
        return out

    async def delete(self, namespace: str | None, name: str, uid: str, resource: Resource = JOBS) -> bool:
        self.world.maybe_crash(f"before deleting {resource.kind} {name}")
        body = self._find(namespace if resource.namespaced else None, name)
        if body is None or body["metadata"]["uid"] != uid:
            return False
        self.world.writes += 1
        self.request_deletion(namespace if resource.namespaced else None, name)
        return True

    async def add_finalizer(
        self, body: dict[str, Any], finalizer: str, resource: Resource = JOBS
    ) -> dict[str, Any]:
        self.world.maybe_crash("before adding the finalizer")
        stored = self._get(self._where(body["metadata"], resource), body["metadata"]["name"])
        if stored["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"]:
            self.world.say(f"adding the finalizer of {body['metadata']['name']}: refused, a stale copy")
            raise ApiException(status=422, reason="the resourceVersion test failed")
        stored["metadata"].setdefault("finalizers", []).append(finalizer)
        return self._bump(stored)

    async def remove_finalizer(self, body: dict[str, Any], finalizer: str, resource: Resource = JOBS) -> None:
        self.world.maybe_crash("before removing the finalizer")
        meta = body["metadata"]
        stored = self._find(self._where(meta, resource), meta["name"])
        if stored is None or finalizer not in (stored["metadata"].get("finalizers") or []):
            return
        stored["metadata"]["finalizers"].remove(finalizer)
        if stored["metadata"].get("deletionTimestamp") and not stored["metadata"]["finalizers"]:
            self._forget(stored)
        else:
            self._bump(stored)

    async def event(
        self, body: dict[str, Any], type_: str, reason: str, message: str, resource: Resource = JOBS
    ) -> None:
        self.events.append((body["metadata"]["name"], reason, message))

    async def job_uids(self) -> set[str]:
        return {body["metadata"]["uid"] for body in self.objects.values()}


@functools.cache
def _base_settings() -> OperatorSettings:
    return OperatorSettings(
        secret="sim-secret-0123456789abcdef-0123456789",  # noqa: S106 - a twin checks no token
        download_link_seconds=3600,
        metrics_port=0,
        # Batches here have a few images: pages of two make their listings span pages, as a
        # real batch's do at 1,000 (the page boundaries are where a set could change).
        batch_page_size=2,
    )


def _finished(body: dict[str, Any]) -> bool:
    return (body.get("status") or {}).get("phase") in TERMINAL_PHASES and not body["metadata"].get(
        "deletionTimestamp"
    )


class _Auditor(Auditor):
    """The operator's auditor, with the world's other work going on while it awaits Payment."""

    def __init__(self, cfg: OperatorSettings, operator: Reconciler, world: World) -> None:
        super().__init__(cfg, operator)
        self.world = world

    async def held_jobs(self) -> set[str]:
        held = await super().held_jobs()
        await self.world.meanwhile(self)
        return held

    async def clean_up_gone(self, uid: str) -> str:
        if any(h.job_id == uid and h.state == "captured" for h in self.world.payment.holds.values()):
            self.world.fire("gone-charged", uid)  # charged, then gone before the auditor looked
        return await super().clean_up_gone(uid)


class World:
    """One schedule: a few jobs, the twins, the operator, and the seeded fault injector."""

    def __init__(self, seed: int, faults: Faults | None = None, jobs: int | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.cold = random.Random(f"{seed}-cold")  # which restarts are cold (COLD_RESTARTS)
        self.interleave = random.Random(f"{seed}-interleave")  # AUDIT_INTERLEAVED
        self._restarts = 0
        # The jobs a cold restart's list has yet to hand the new process: (key, uid).
        self.unlisted: list[tuple[tuple[str, str], str]] = []
        self.faults = faults if faults is not None else Faults.draw(self.rng)
        self.clock = T0 + dt.timedelta(seconds=self.rng.randrange(0, 86400))
        self.healed = False
        self._passing: tuple[str, str] | None = None  # the job a pass is running over
        self.story: list[str] = []
        self.writes = 0
        self.gone: set[str] = set()
        self.fired: dict[str, int] = {}
        self.verdicts: dict[str, str] = {}  # job uid -> the auditor's latest verdict on it
        self.auth = TenancyAuth(self.now)
        self.payment = AccountsPayment(self.now)
        self.storage = ObjectDeletingStorage(self.now)
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
        self.damage: list[Damage] = []
        self.manifests: dict[str, bytes] = {}  # a batch's result manifest by object id
        # Money damage the auditor had not settled before the daily recheck came round.
        self.unsettled_before_recheck: list[Damage] = []
        self.money_moves: list[MoneyMove] = []
        self._make_jobs(jobs if jobs is not None else self.rng.randint(1, 3))
        self.operator, self.auditor, self.syncer = self._start_operator()

    # -- the world ----------------------------------------------------------------------------
    def now(self) -> dt.datetime:
        return self.clock

    def seconds(self) -> float:
        """The operator's timers' clock: seconds on the virtual clock. Its jumps are time that
        passed for the timers too (a process paused, a machine suspended); a wall-clock step
        that ``time.monotonic`` does not see would only make a timer late, never lose it."""
        return (self.clock - T0).total_seconds()

    def say(self, line: str) -> None:
        self.story.append(f"[{self.seconds():9.1f}s] {line}")

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
        """The CreditAccounts (their Payment accounts topped up by an admin beforehand), then
        ``n`` jobs, most in a namespace that may charge the account they name, some not."""
        placed = []
        for _ in range(n):
            if self.rng.random() < 0.75:
                namespace = self.rng.choice(["team", "ops", "lab"])
                account = "globex" if namespace == "ops" else "acme"
                if namespace == "lab":
                    account = self.rng.choice(["acme", "globex"])  # only the holder's may charge
            else:
                namespace, account = self.rng.choice(NAMESPACES), self.rng.choice(["acme", "globex"])
            # One job in four is a batch of 1 to 6 images, priced per image.
            images = self.rng.randint(1, 6) if self.rng.random() < 0.25 else 0
            placed.append((namespace, account, self.rng.randint(1, 20), images))
        short = self.rng.random() < 0.15
        # The CreditAccounts were applied, and synced, before the jobs: each has its tenant, the
        # namespaces it lists are bound to it, and "lab" to one of the two (the first to sync).
        lab = self.rng.choice(sorted(ACCOUNT_NAMESPACES))
        for account, namespaces in ACCOUNT_NAMESPACES.items():
            self.auth.tenants.add(account)
            for namespace in namespaces:
                if namespace != "lab" or account == lab:
                    self.auth.bindings.add((namespace, account))
                    self.auth.binding_log.append((self.clock, "bind", namespace, account))
            credits = sum(price * max(1, images) for _, named, price, images in placed if named == account)
            if short and placed and placed[0][1] == account:
                credits -= placed[0][2]
            self.payment.accounts[account] = Account(available=credits)
            self.kube.create(
                {
                    "apiVersion": "aijobs.io/v1alpha1",
                    "kind": "CreditAccount",
                    "metadata": {
                        "name": account,
                        "uid": f"{self.seed:x}-account-{account}",
                        "finalizers": [ACCOUNT_FINALIZER],
                    },
                    "spec": {"namespaces": list(namespaces)},
                }
            )
        for i, (namespace, account, price, images) in enumerate(placed):
            uid = f"{self.seed:x}-uid-{i}"
            source: dict[str, Any] = {"inline": {"contentType": "image/png", "data": PNG}}
            if images:
                # The user uploaded the set before creating the job; one image in five is one
                # the pipeline will refuse (the task fails: it costs nothing).
                prefix = f"{account}/set-{i}/"
                stored = []
                for k in range(images):
                    name = f"img-{k}-bad.png" if self.rng.random() < 0.2 else f"img-{k}.png"
                    reply = self.storage.store(
                        f"{prefix}{name}", account, None, "input", f"img-{uid}-{k}".encode()
                    )
                    stored.append(reply.body["id"])
                source = {"batch": {"prefix": prefix}}
                # Half the batches name their images in an image list instead: some by object id,
                # some by URL (fetched by Storage once the batch is paid for; now and then one it
                # refuses, which fails the batch and compensates what was fetched). Drawn from a
                # generator of their own, so the schedules' other draws stay what they were.
                named = random.Random(f"{self.seed}-list-{i}")
                if named.random() < LIST_BATCHES:
                    lines = [
                        (
                            f"http://10.0.0.{k}/scan.png"
                            if named.random() < 0.15
                            else f"https://img.example/{uid}/{k}.png"
                        )
                        if named.random() < 0.3
                        else object_id
                        for k, object_id in enumerate(stored)
                    ]
                    text = "# the user's list\n" + "".join(line + "\n" for line in lines)
                    listed = self.storage.store(
                        f"list:{account}/set-{i}", account, None, "list", text.encode()
                    )
                    source = {"batch": {"imageList": listed.body["id"]}}
            spec: dict[str, Any] = {
                "account": account,
                "input": source,
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
            if images and self.rng.random() < 0.5:
                spec["maxFailedImages"] = self.rng.choice([0, 0, 1])
            job = SimJob(uid, namespace, account, f"job-{i}", price, spec, self.clock, images=images)
            self.jobs.append(job)
            self.kube.create(
                {
                    "apiVersion": "aijobs.io/v1alpha1",
                    "kind": "AIImageJob",
                    "metadata": {"name": job.name, "namespace": namespace, "uid": uid},
                    "spec": spec,
                }
            )
            self.say(f"created {namespace}/{job.name} price {price} spec {json.dumps(spec)[:160]}")

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
            key = request.headers.get("idempotency-key")
            audited = self._audited_hold(service, key, request.url.path)
            before = audited.state if audited is not None else None
            skipped: dict[int, str] = {}  # bulk items (by place: key) never carried to the service
            bulk = request.url.path.startswith("/v1/bulk/") and isinstance(body, dict)
            if bulk and isinstance(body, dict) and "items" in body and self.chance(error):  # a write
                # Some items fail before the service commits them, or after: each of those
                # callers sees its own unknown outcome and retries under its key.
                items = body["items"]
                skipped = {n: item["key"] for n, item in enumerate(items) if self.rng.random() < 0.3}
                body = {"items": [item for n, item in enumerate(items) if n not in skipped]}
                self.fire("bulk-items-unknown", f"{where}: {len(skipped)} of {len(items)} not carried")
            reply: Reply = (
                twin.handle(request.method, request.url.path, key, body, params, raw)
                if not skipped or (body or {}).get("items")
                else Reply(200, {"items": []})  # none carried: the service saw nothing
            )
            if skipped or (
                request.url.path.startswith("/v1/bulk/") and reply.status == 200 and self.chance(error)
            ):
                reply = self._bulk_unknown(reply, skipped)
            if audited is not None and audited.state != before and audited.state in ("captured", "released"):
                self._moved(audited.job_id, str(audited.state), audited.id)
            self.storage.disk_full = False
            if service == "storage" and params.get("kind") == "manifest" and reply.status < 300:
                self.manifests[reply.body["id"]] = raw  # the twin keeps no bytes; the checker reads these
            self.say(f"{where} key={request.headers.get('idempotency-key')} -> {reply.status}")
            self.maybe_crash(f"after {where} committed, before its answer")
            self._delete_mid_pass()
            if self.chance(lose):
                self.fire("lose-answer", where)
                raise httpx.ReadTimeout("simulated: answer lost", request=request)
            if self.chance(error):
                self.fire("error-after", where)
                return httpx.Response(503, json={"detail": "simulated"})
            if isinstance(reply.body, bytes):  # an object's content
                return httpx.Response(reply.status, content=reply.body)
            return httpx.Response(reply.status, json=reply.body)

        return httpx.MockTransport(handle)

    def _bulk_unknown(self, reply: Reply, skipped: dict[int, str]) -> Reply:
        """A bulk answer with the items at ``skipped`` (never sent on) and some of the others
        (committed, their answer lost) answered 503: unknown outcomes, item by item."""
        answered = iter(reply.body["items"])
        unknown = {"type": "about:blank", "title": "simulated", "status": 503}
        items = []
        for n in range(len(reply.body["items"]) + len(skipped)):
            if n in skipped:
                items.append({"key": skipped[n], "status": 503, "replayed": False, "body": unknown})
                continue
            item = next(answered)
            if not skipped and self.rng.random() < 0.3:
                self.fire("bulk-items-unknown", f"answer of committed item {item['key']} lost")
                item = {**item, "status": 503, "body": unknown}
            items.append(item)
        return Reply(200, {"items": items})

    def _audited_hold(self, service: str, key: str | None, path: str) -> Hold | None:
        """The hold an auditor's repair is about to settle, if this call is one."""
        if service != "payment" or key is None or ":audit-" not in key:
            return None
        parts = path.split("/")  # /v1/holds/{id}/capture|release
        return self.payment.holds.get(parts[3]) if len(parts) == 5 and parts[2] == "holds" else None

    def _moved(self, uid: str, state: str, hold_id: str) -> None:
        job = next(j for j in self.jobs if j.uid == uid)
        body = self.kube.objects.get((job.namespace, job.name))
        task = next((t for t in self.ai.tasks.values() if t.job_id == uid), None)
        result = self.storage.objects.get(task.result_object_id or "") if task is not None else None
        succeeded = task is not None and task.state == "succeeded"
        evidence = succeeded and result is not None and result.state == "committed"
        others = [h for h in self.payment.holds.values() if h.job_id == uid and h.id != hold_id]
        move = MoneyMove(
            uid,
            state,
            hold_id,
            "Gone"  # its finalizer went: nothing of it is left in Kubernetes
            if body is None or body["metadata"]["uid"] != uid
            else (body.get("status") or {}).get("phase"),
            evidence,
            any(h.state == "captured" for h in others),
        )
        self.money_moves.append(move)
        self.say(f"auditor {state} {hold_id} of {job.name}")

    def _start_operator(self) -> tuple[Reconciler, Auditor, AccountSyncer]:
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
        kube: KubeWriter = self.kube
        operator = Reconciler(self.cfg, services, kube, clock=self.now, monotonic=self.seconds)
        self.kube.watch.clear()
        # A new process lists before it watches; with many jobs that takes a while, and its
        # passes (the auditor's too) may run before every job is in its cache (a cold restart).
        cold = self._restarts > 0 and not self.healed and self.cold.random() < COLD_RESTARTS
        self.unlisted = []
        for key, body in self.kube.objects.items():
            if cold and self.cold.random() < 0.5:
                self.unlisted.append((key, body["metadata"]["uid"]))
            else:
                operator.observe("ADDED", _clone(body))
        if self.unlisted:
            self.fire("cold-restart", f"{len(self.unlisted)} job(s) reach the new process's cache later")
        self._restarts += 1
        syncer = AccountSyncer(
            services,
            kube,
            lambda: list(operator.cache.values()),
            interval=3600,
            clock=self.now,
            fresh_key=lambda: f"sim-{self.rng.getrandbits(48):012x}",
        )
        for body in self.kube.accounts.values():
            syncer.observe("ADDED", _clone(body))
        return operator, _Auditor(self.cfg, operator, self), syncer

    def _restart(self) -> None:
        """A new operator process; often after a while down (past a deadline, a hold's expiry)."""
        if self.rng.random() < 0.5:
            down = self.rng.choice([5, 60, 600, 3600, 86400])
            self.clock += dt.timedelta(seconds=down)
            self.say(f"operator down for {down}s")
        self.say("operator restarts")
        self.operator, self.auditor, self.syncer = self._start_operator()

    # -- the schedule -------------------------------------------------------------------------
    def _delete(self, namespace: str, name: str, kind: str) -> None:
        self.fire(kind, name)
        for job in self.jobs:
            if job.name == name and job.deleted_at is None:
                job.deleted_at = self.clock
                body = self.kube.objects.get((namespace, name)) or {}
                if job.images and (body.get("status") or {}).get("phase") in ("Scheduled", "Processed"):
                    self.fire("delete-batch-mid-run", name)  # images running, some maybe done
        self.kube.request_deletion(namespace, name)

    def _delete_mid_pass(self) -> None:
        """A person deletes the job while a pass over it awaits a service: the pass's next write
        finds the job changed (its first one is refused), as on a real API server."""
        key = self._passing
        body = self.kube.objects.get(key) if key is not None else None
        if key is None or body is None or body["metadata"].get("deletionTimestamp"):
            return
        if body["metadata"]["uid"] in {d.uid for d in self.damage}:
            return
        if self.chance(self.faults.delete / 8):
            self._delete(*key, "delete-mid-pass")

    async def _pass(self, key: tuple[str, str]) -> None:
        self.say(f"pass {key[1]}")
        self._passing = key
        try:
            await self.operator.reconcile(key)
        except Crash:
            self._restart()
        except ApiException as exc:  # the engine's worker logs any exception and retries after
            self.say(f"pass {key[1]} failed: API {exc.status}")  # 5 s; here any other fails the
            self.operator.later(key, 5.0)  # schedule, as a bug
        finally:
            self._passing = None

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
                key = f"job:{task.job_id}:result" + ("" if task.item is None else f":{task.item}")
                if task.cancel_requested:
                    if self.rng.random() < 0.5:  # it stored its result before it heard of the cancel
                        self.storage.store(key, task.account, task.job_id, "result", b"late")
                        self.fire("late-result", task.id)
                    task.state = "cancelled"
                elif self.chance(self.faults.task_fails):
                    self.fire("task-fails", task.id)
                    task.state, task.error = "failed", "simulated: the model failed"
                elif (source := self.storage.objects.get(task.input_object_id)) and source.key.endswith(
                    "-bad.png"
                ):
                    task.state, task.error = "failed", "the input is not a decodable image"
                else:
                    input_obj = self.storage.objects.get(task.input_object_id)
                    account = input_obj.account if input_obj else task.account
                    reply = self.storage.store(
                        key,
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

    async def _watch_and_drain(self, watch: bool = True) -> None:
        if watch:
            self._deliver_watch()
        self.operator.wake_due()  # the timers up on the virtual clock
        await self._pass_queued()  # what the watch and the timers queued runs now

    async def _pass_queued(self, whole_watch: bool = False) -> None:
        """Pass each job the engine has queued, until none is (with ``whole_watch``, every watch
        event and timer up is taken in before each round). Bounded: a job that queues itself
        again on every pass with no time passing would otherwise hold the simulation forever;
        the world moves on, and a job that so never ends is the checker's (I4)."""
        for _ in range(WAKE_ROUNDS):
            if whole_watch:
                while self.kube.watch:
                    self._deliver_watch()
                self.operator.wake_due()
            keys = self.operator.drain()
            if not keys:
                return
            for key in keys:
                await self._pass(key)
        self.say(f"the operator still wakes jobs after {WAKE_ROUNDS} rounds with no time passing")

    def _delete_one(self, keys: list[tuple[str, str]]) -> None:
        damaged = {d.uid for d in self.damage}  # a person is looking into those: left alone
        keys = [k for k in keys if self.kube.objects[k]["metadata"]["uid"] not in damaged]
        if keys:
            self._delete(*self.rng.choice(keys), "delete")

    async def step(self) -> None:
        if self.unlisted and self.cold.random() < COLD_LISTING:
            self._list_late()
        r = self.rng.random()
        keys = list(self.kube.objects)
        if r < 0.3 and keys:
            if self.chance(self.faults.wake):  # a job woken for no reason of the engine's
                key = self.rng.choice(keys)
                self.fire("wake-at-random", key[1])
                await self._pass(key)
            else:  # the engine's own wake-ups: its timers
                await self._watch_and_drain(watch=False)
        elif r < 0.5:
            await self._watch_and_drain()
        elif r < 0.65:
            self._work()
        elif r < 0.72:
            try:
                await self.operator.follow()
            except Crash:
                self._restart()
            except Exception as exc:
                self.say(f"follow failed: {exc}")
        elif r < 0.76 and keys and self.chance(self.faults.delete):
            self._delete_one(keys)
        elif r < 0.78 and self.chance(self.faults.jump):
            jump = self.rng.choice([30, 300, 3600, 86400, 40 * 86400])
            self.fire("clock-jump", f"+{jump}s")
            self.clock += dt.timedelta(seconds=jump)
        elif r < 0.8:
            await self._account_event()
        elif r < 0.815:
            await self._audit()
        elif r < 0.9 and self.chance(self.faults.damage):
            self._damage()
        else:
            self.clock += dt.timedelta(seconds=self.rng.choice([0.1, 0.5, 1, 2, 5, 15]))

    # -- the CreditAccount reconciler, the auditor, and what they answer for ------------------
    async def _sync(self, name: str) -> None:
        """One pass of the CreditAccount reconciler over ``name``, as a watch event triggers it."""
        body = self.kube.accounts.get(name)
        if body is None:
            return
        self.syncer.observe("MODIFIED", _clone(body))
        in_flight = jobs_in_flight(self.operator.cache.values()).get(name, 0)
        self.say(f"sync account {name}")
        try:
            await self.syncer.sync(_clone(body), in_flight)
        except Crash:
            self._restart()
        except (ServiceError, ApiException) as exc:  # said in its status; the next pass retries
            self.say(f"sync account {name} failed: {exc}")

    async def _account_event(self) -> None:
        """An admin edits a CreditAccount (a namespace let go of, or taken up) or deletes it, or
        re-creates a deleted one; then the reconciler syncs it (and now and then one that did
        not change, as its periodic pass does)."""
        name = self.rng.choice(sorted(ACCOUNT_NAMESPACES))
        if not self.chance(self.faults.accounts):
            if self.rng.random() < 0.25:
                await self._sync(name)
            return
        body = self.kube.accounts.get(name)
        if body is None:
            self.fire("account-recreated", name)
            self.kube.create(
                {
                    "apiVersion": "aijobs.io/v1alpha1",
                    "kind": "CreditAccount",
                    "metadata": {"name": name, "uid": f"{self.seed:x}-account-{name}-{self.kube.rv}"},
                    "spec": {"namespaces": list(ACCOUNT_NAMESPACES[name])},
                }
            )
        elif body["metadata"].get("deletionTimestamp"):
            pass  # its deletion is under way: nothing to edit
        elif self.rng.random() < 0.75:
            namespaces = list(body["spec"]["namespaces"])
            namespaces = (
                [n for n in namespaces if n != "lab"] if "lab" in namespaces else [*namespaces, "lab"]
            )
            self.fire("account-edited", f"{name} now lists {namespaces}")
            self.kube.edit_spec(name, {"namespaces": namespaces})
        else:
            self.fire("account-deleted", name)
            self.kube.request_deletion(None, name)
        await self._sync(name)

    async def meanwhile(self, auditor: Auditor) -> None:
        """While ``auditor`` awaits Payment, the rest of its process and the world go on for a
        few rounds (see AUDIT_INTERLEAVED): the worker, a user's deletion, the watch, passes over
        the jobs, and a user who waited for a job deleting it once it finished. A crash among
        them is the whole process's: it ends the auditor's pass too."""
        if self.healed or auditor is not self.auditor or self.interleave.random() >= AUDIT_INTERLEAVED:
            return
        rounds = self.interleave.randint(1, 4)
        self.fire("audit-interleaved", f"{rounds} round(s)")
        unfinished = {key for key, body in self.kube.objects.items() if not _finished(body)}
        for _ in range(rounds):
            self._work()
            keys = list(self.kube.objects)
            if keys and self.chance(self.faults.delete):
                self._delete_one(keys)
            while self.kube.watch:
                await self._watch_and_drain()
            for key in list(self.kube.objects):
                if self.rng.random() < 0.5 and self.chance(self.faults.wake):
                    self.fire("wake-at-random", key[1])
                    await self._pass(key)
            await self._watch_and_drain(watch=False)  # and what the engine wakes
            for key in sorted(unfinished & set(self.kube.objects)):
                if _finished(self.kube.objects[key]) and self.interleave.random() < 0.5:
                    unfinished.discard(key)
                    self._delete(*key, "delete-when-finished")  # `kubectl wait`, then delete
            if self.auditor is not auditor:
                raise Crash("beside the auditor")  # already restarted: the pass dies with its process
        while self.kube.watch:  # what the last round's passes changed reaches the cache
            await self._watch_and_drain()
        if self.auditor is not auditor:
            raise Crash("beside the auditor")

    async def _audit(self) -> set[str]:
        """One pass of the auditor; the verdicts it reached."""
        self.say("audit pass")
        auditor = self.auditor
        try:
            verdicts = await auditor.audit_pass()
        except Crash:
            if self.auditor is auditor:  # else its process already restarted, beside it
                self._restart()
            return set()
        for uid, verdict in sorted(verdicts.items()):
            self.say(f"audit {uid}: {verdict}")
        # What the auditor concluded, by job: a consistent verdict is not written to the job
        # (no API write when nothing disagrees), so the checker reads it here.
        self.verdicts.update(verdicts)
        return set(verdicts.values())

    def _damage(self) -> None:
        """Change a finished job's records behind the operator's back (see :class:`Damage`)."""
        if self.rng.random() < 0.25 and self._late_commits():
            return
        finished = [
            (job, body)
            for job in self.jobs
            if (body := self.kube.objects.get((job.namespace, job.name))) is not None
            and not body["metadata"].get("deletionTimestamp")
            and (body.get("status") or {}).get("phase") in TERMINAL_PHASES
        ]
        if not finished:
            return
        job, body = self.rng.choice(finished)
        if any(d.uid == job.uid and d.kind == "doubtful-capture" for d in self.damage):
            return  # left for a person: what else happens to it, the auditor can't tell apart
        delivered = body["status"]["phase"] == "Delivered"
        kinds = (
            ["lost-capture", "stray-hold", "orphan-object", "doubtful-capture"]
            if delivered
            else [
                "stray-hold",
                "orphan-object",
                "orphan-task",
            ]
        )
        if job.images:
            # A batch's capture is partial, its amount the log's: a lost one is for a person
            # (reported, never repaired), so a batch is damaged only where the auditor repairs.
            shipped = bool(body["status"].get("result"))  # past maxFailedImages it ends Failed, delivered
            kinds = ["stray-hold"] if shipped else ["stray-hold", "orphan-object", "orphan-task"]
        kind = self.rng.choice(kinds)
        holds = [h for h in self.payment.holds.values() if h.job_id == job.uid]
        task = next((t for t in self.ai.tasks.values() if t.job_id == job.uid), None)
        account = self.payment.accounts[job.account]
        target: str | None = None
        if kind in ("lost-capture", "doubtful-capture"):
            captured = [h for h in holds if h.state == "captured"]
            if not captured or (kind == "doubtful-capture" and task is None):
                return
            if any(
                d.uid == job.uid and (kind == "doubtful-capture" or "capture" in d.kind) for d in self.damage
            ):
                return  # a doubtful capture comes alone: beside other damage, no log could tell
            hold = captured[0]
            hold.state, hold.settled_at, hold.captured_amount = HoldState.ACTIVE, None, 0
            # Past any clock jump or skip to a far runAt: the auditor, not the clock, settles it.
            hold.expires_at = self.clock + dt.timedelta(days=3650)
            account.revenue -= hold.amount
            account.held += hold.amount
            if kind == "doubtful-capture" and task is not None:
                task.state = "failed"  # AI no longer vouches for the result: no evidence
            target = hold.id
        elif kind == "stray-hold":
            if account.available < job.price:
                return
            # Only the auditor releases it within a schedule.
            target = self._place_hold(job, self.clock + MAX_HOLD).id
        elif kind == "orphan-object":
            n = len(self.damage)
            reply = self.storage.store(
                f"job:{job.uid}:orphan-{n}", job.account, job.uid, "result", f"orphan-{n}".encode()
            )
            target = reply.body["id"]
        elif kind == "orphan-task":
            if task is not None:
                return
            orphan = Task(
                self.ai.new_id("task"),
                job.uid,
                job.account,
                "resize",
                {},
                "none",
                run_at=self.clock + dt.timedelta(days=365),
                updated_at=self.clock,
            )
            self.ai.tasks[orphan.id] = orphan
            target = orphan.id
        if target is None:
            return
        self.damage.append(Damage(job.uid, kind, target, self.clock))
        self.fire(f"damage:{kind}", f"{target} of {job.name}")

    def _place_hold(self, job: SimJob, expires_at: dt.datetime) -> Hold:
        """An active hold of the job's price on its account, made behind the operator's back."""
        hold = Hold(
            self.payment.new_id("hold"),
            job.account,
            job.uid,
            job.price,
            HoldState.ACTIVE,
            expires_at,
            self.clock,
        )
        self.payment.holds[hold.id] = hold
        account = self.payment.accounts[job.account]
        account.available -= job.price
        account.held += job.price
        return hold

    def _late_commits(self) -> bool:
        """Requests that commit after their job is gone (delayed on the way, or sent by a pass that
        did not know of the deletion): the first hold, input and task of a job whose compensation
        found nothing to undo and whose finalizer went, so its saga will never run again. Only the
        auditor can undo them. (A late request for a job that had committed its calls before
        replays them under the same keys: nothing new.)"""
        gone = [
            job
            for job in self.jobs
            if job.deleted_at is not None
            and (
                (body := self.kube.objects.get((job.namespace, job.name))) is None
                or body["metadata"]["uid"] != job.uid
            )
            and not any(h.job_id == job.uid for h in self.payment.holds.values())
            and not any(o.job_id == job.uid for o in self.storage.objects.values())
            and not any(t.job_id == job.uid for t in self.ai.tasks.values())
            and not any(d.uid == job.uid for d in self.damage)
        ]
        if not gone:
            return False
        job = self.rng.choice(gone)
        account = self.payment.accounts[job.account]
        if account.available < job.price:
            return False
        # Past any clock jump or skip to a far runAt, as a lost capture's: the auditor finds a late
        # commit while its hold is active (an expired one gave the credits back by itself).
        hold = self._place_hold(job, self.clock + dt.timedelta(days=3650))
        reply = self.storage.store(f"job:{job.uid}:input", job.account, job.uid, "input", b"late-input")
        task = Task(
            self.ai.new_id("task"),
            job.uid,
            job.account,
            "resize",
            {},
            reply.body["id"],
            run_at=self.clock + dt.timedelta(days=365),
            updated_at=self.clock,
        )
        self.ai.tasks[task.id] = task
        placed = [("gone-hold", hold.id), ("gone-object", reply.body["id"]), ("gone-task", task.id)]
        for kind, target in placed:
            self.damage.append(Damage(job.uid, kind, target, self.clock))
        self.fire("late-commit-after-gone", f"{', '.join(t for _, t in placed)} of {job.name}")
        return True

    def settled(self) -> bool:
        for body in self.kube.objects.values():
            if (body.get("status") or {}).get("phase") not in TERMINAL_PHASES:
                return False
            if body["metadata"].get("deletionTimestamp"):
                return False
        return not any(body["metadata"].get("deletionTimestamp") for body in self.kube.accounts.values())

    async def run(self, steps: int = 64, heal_rounds: int = 400) -> None:
        for _ in range(steps):
            await self.step()
        self.healed = True
        self.say("--- faults heal ---")
        await self._heal(heal_rounds)
        # With no fault left, the auditor repairs what it may; a stray hold beside a capture it
        # made is released on its next pass. Damage to money after a job's audit (an active hold
        # of a finished job) is found on the next passes, since each reads what Payment holds;
        # other damage (an orphan object or task) by the periodic recheck, once the clock has
        # gone round to it.
        await self._audit_rounds()
        self.unsettled_before_recheck = [
            d
            for d in self.damage
            if d.kind in ("stray-hold", "lost-capture", "gone-hold")
            and self.payment.holds[d.target].state == "active"
        ]
        self.clock += dt.timedelta(seconds=self.cfg.audit_recheck_seconds)
        await self._audit_rounds()

    async def _audit_rounds(self) -> None:
        for _ in range(4):
            # A job gone before this process started is taken for gone on its second pass.
            if "repaired" not in await self._audit() and not self.auditor.suspects:
                break
            self._stop_cancelled()

    def _stop_cancelled(self) -> None:
        """A running task whose cancel was asked stops before the next pass, as a worker hears it
        at its next heartbeat (it may store its result first)."""
        for task in self.ai.tasks.values():
            if task.state == "running" and task.cancel_requested:
                if self.rng.random() < 0.5:
                    key = f"job:{task.job_id}:result" + ("" if task.item is None else f":{task.item}")
                    self.storage.store(key, task.account, task.job_id, "result", b"late")
                    self.fire("late-result", task.id)
                task.state, task.updated_at = "cancelled", self.clock

    def _list_late(self, everything: bool = False) -> None:
        """A cold restart's list goes on: the next job it owes reaches the cache now (as the
        API server stores it now, if it is still there), or every one it owes."""
        while self.unlisted:
            key, uid = self.unlisted.pop(0)
            body = self.kube.objects.get(key)
            if body is not None and body["metadata"]["uid"] == uid:
                self.operator.observe("ADDED", _clone(body))
            if not everything:
                return

    async def _heal(self, heal_rounds: int) -> None:
        """The world runs on with no fault until every job is terminal or gone. The operator is
        woken only as its engine wakes it: by the watch, by the follower, by its own write's
        answer, by its timers (on the virtual clock). No job is passed only because it is
        there, so a job that nothing wakes again stays as it is, and the checker finds it (I4)."""
        self._list_late(everything=True)
        for _ in range(heal_rounds):
            if self.settled():
                return
            for name, body in sorted(self.kube.accounts.items()):
                meta = body["metadata"]
                if meta.get("deletionTimestamp") or meta["generation"] != (body.get("status") or {}).get(
                    "observedGeneration", meta["generation"]
                ):
                    await self._sync(name)
            self._work()
            self.payment.sweep()
            await self.operator.follow()  # the follower runs on, as in production
            timer = await self._run_woken()
            step = self.rng.choice([1, 5, 30, 300])
            self.clock += dt.timedelta(seconds=step)
            later = [
                t.run_at for t in self.ai.tasks.values() if t.state == "scheduled" and t.run_at > self.clock
            ]
            if later and self.rng.random() < 0.3:  # nothing happens until a runAt: skip to it
                self.clock = min(later)
            elif timer is not None and timer > step and self.rng.random() < 0.3:  # or to a timer
                self.clock += dt.timedelta(seconds=timer - step)

    async def _run_woken(self) -> float | None:
        """Pass each job the engine has queued (by the watch, its writes, its timers up now),
        until none is; say in how many seconds the next timer is up (None: none is set)."""
        await self._pass_queued(whole_watch=True)
        return self.operator.wake_due()

    def run_sync(self, steps: int = 64) -> None:
        logging.getLogger("aijobs.operator").setLevel(logging.CRITICAL)
        asyncio.run(self.run(steps))
