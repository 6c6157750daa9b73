"""``aijobs chaos``: fault campaigns against the local stack, checked against invariants I1-I5.

    aijobs chaos --jobs 50 --seed 7 --faults net,kill,disk
    aijobs chaos --scenario s2

A campaign submits jobs while a seeded schedule injects faults: network faults through the proxies
in front of every service (drop, delay, reset, drop-after-commit, 5xx/429, slow bodies), SIGKILL
and restart of the operator, a worker or any service, and a full disk (an account's storage
quota). Then it heals everything, waits for every job to end, and checks every job against every
service's records (:mod:`aijobs_dev.checker`). The same seed gives the same schedule.

The four scenarios of the seed document run the same way, each with the one fault it describes,
and print the story: what happened to the credits, the files, the task and each service's record.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from PIL import Image

from aijobs.api.rules import TERMINAL_PHASES
from aijobs.api.v1alpha1 import GROUP, PLURAL, VERSION
from aijobs.kube import api_client
from aijobs_dev.checker import JobView, Violation, check
from aijobs_dev.testbed.processes import ManagedProcess
from aijobs_dev.testbed.stack import SERVICES, Stack

NET_ACTIONS = ("drop", "delay", "reset", "drop-response", "status", "slow-body")
KILLABLE = ("operator", "worker", "payment", "storage", "ai", "auth", "main")


def _image(rng: random.Random, noise: int = 0) -> bytes:
    """A small gradient, or (``noise`` > 0) an incompressible ``noise`` x ``noise`` picture."""
    w, h = rng.randint(12, 40), rng.randint(12, 40)
    if noise:
        w = h = noise
        image = Image.frombytes("RGB", (w, h), rng.randbytes(w * h * 3))
    else:
        image = Image.linear_gradient("L").convert("RGB").resize((w, h))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Fault:
    at: float  # seconds from the campaign's start
    kind: str  # net | kill | disk
    target: str
    detail: dict[str, Any] = field(default_factory=dict)


def schedule(seed: int, kinds: set[str], duration: float) -> list[Fault]:
    """The campaign's faults, from its seed alone."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    t = 1.0
    while t < duration:
        kind = rng.choice(sorted(kinds - {"disk"}) or ["net"])
        if kind == "net":
            action = rng.choice(NET_ACTIONS)
            rule = {
                "action": action,
                "probability": round(rng.uniform(0.1, 0.35), 2),
                "name": f"{action}@{t:.1f}",
                "seconds": round(rng.uniform(0.5, 3.0), 1),
                "status": rng.choice([500, 502, 503, 429]),
                "method": "POST|PUT|GET",
            }
            faults.append(
                Fault(t, "net", rng.choice(SERVICES), {"rule": rule, "window": rng.uniform(1.5, 4)})
            )
        else:
            faults.append(Fault(t, "kill", rng.choice(KILLABLE), {"down": round(rng.uniform(0.3, 3.0), 1)}))
        t += rng.uniform(0.7, 2.5)
    return faults


@dataclass
class Campaign:
    stack: Stack
    seed: int
    faults_log: list[dict[str, Any]] = field(default_factory=list)
    initial: dict[str, int] = field(default_factory=dict)
    namespaces: dict[str, str] = field(default_factory=dict)
    submitted: list[tuple[str, str]] = field(default_factory=list)  # (namespace, name)
    deleted: dict[tuple[str, str], tuple[str, str, int]] = field(
        default_factory=dict
    )  # -> uid, account, price
    commit_kills: list[tuple[str, str]] = field(default_factory=list)  # (service, rule) waiting to fire
    crashes: list[str] = field(default_factory=list)  # processes that exited with no fault active
    worker_kills: int = 0  # kills of a worker so far (the schedule names no worker: they take turns)

    @property
    def custom(self) -> k8s.CustomObjectsApi:
        return k8s.CustomObjectsApi(api_client(self.stack.kubeconfig))

    def tenant(self, account: str, credits: int) -> None:
        self.stack.tenant(account, credits=credits, namespace=f"{account}-jobs")
        self.initial[account] = credits
        self.namespaces[account] = f"{account}-jobs"

    def submit(
        self,
        account: str,
        name: str,
        image: bytes,
        *,
        pipeline: str = "grayscale",
        price: int = 2,
        deadline_s: float = 90,
        params: dict[str, Any] | None = None,
        run_at_s: float | None = None,
    ) -> None:
        now = dt.datetime.now(dt.UTC)
        deadline = now + dt.timedelta(seconds=deadline_s + (run_at_s or 0))
        body: dict[str, Any] = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AIImageJob",
            "metadata": {"name": name},
            "spec": {
                "account": account,
                "pipeline": pipeline,
                "price": price,
                "parameters": params or {},
                "deadline": deadline.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "retryPolicy": {"maxAttempts": 30, "initialBackoffSeconds": 1, "maxBackoffSeconds": 5},
                "input": {"inline": {"contentType": "image/png", "data": base64.b64encode(image).decode()}},
            },
        }
        if run_at_s is not None:
            body["spec"]["runAt"] = (now + dt.timedelta(seconds=run_at_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
        namespace = self.namespaces[account]
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        self.submitted.append((namespace, name))

    def delete(self, namespace: str, name: str) -> None:
        """A user deletes a job, at whatever point of its saga it is."""
        try:
            job: Any = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except k8s.exceptions.ApiException as exc:
            if exc.status == 404:
                return
            raise
        self.deleted[(namespace, name)] = (
            job["metadata"]["uid"],
            job["spec"]["account"],
            job["spec"]["price"],
        )
        self.faults_log.append({"t": time.time(), "kind": "delete", "target": f"{namespace}/{name}"})

    def kill_at_commit(self, service: str, path: str, rng: random.Random) -> None:
        """The callee commits, its answer is dropped, and the operator is killed right then."""
        rule = f"commit-kill@{len(self.commit_kills)}"
        self.stack.faults(
            service,
            [{"action": "drop-response", "path": path, "method": "POST|PUT", "times": 1, "name": rule}],
        )
        self.commit_kills.append((service, rule))
        self.faults_log.append({"t": time.time(), "kind": "commit-kill", "target": f"{service} {path}"})

    def fire_commit_kills(self) -> Callable[[], None] | None:
        """Kill the operator as soon as a commit-kill rule has fired; returns the restart."""
        for service, rule in list(self.commit_kills):
            if any(e["rule"] == rule for e in self.stack.fault_log(service)):
                self.commit_kills.remove((service, rule))
                self.stack.faults(service, [])
                operator = self.stack.operators[-1]
                operator.kill()
                self.faults_log.append({"t": time.time(), "kind": "kill", "target": "operator@commit"})

                def restart(operator: ManagedProcess = operator) -> None:
                    operator.start()

                return restart
        return None

    # -- faults ---------------------------------------------------------------------------------
    def inject(self, fault: Fault) -> Callable[[], None]:
        """Start a fault; returns what heals it."""
        entry = {"t": time.time(), "kind": fault.kind, "target": fault.target, **fault.detail}
        self.faults_log.append(entry)
        if fault.kind == "net":
            self.stack.faults(fault.target, [fault.detail["rule"]])
            return lambda: self.stack.faults(fault.target, [])
        if fault.target == "worker":  # the workers take the kills in turn
            entry["worker"] = self.worker_kills % len(self.stack.workers)
            self.worker_kills += 1
            proc = self.stack.workers[entry["worker"]]
        else:
            proc = self._process(fault.target)
        proc.kill()

        def restart() -> None:
            proc.start()

        return restart

    def _process(self, target: str) -> ManagedProcess:
        if target == "operator":
            return self.stack.operators[-1]
        return self.stack.services[target]

    def heal_all(self) -> None:
        self.commit_kills.clear()
        for name in SERVICES:
            self.stack.faults(name, [])
        self.supervise()
        for proc in self._processes():
            if not proc.running:  # killed by a fault whose heal is still to come
                proc.start()

    def _processes(self) -> list[ManagedProcess]:
        return [*self.stack.services.values(), self.stack.operators[-1], *self.stack.workers]

    def supervise(self) -> None:
        """What Kubernetes does for a pod whose process exits: start it again. A process a fault
        killed is left to that fault's heal (a kill forgets the process); one that exited by
        itself, under faults or after them, is recorded (and fails the campaign) as well as
        started again, so the jobs can still end and be checked."""
        for proc in self._processes():
            if proc.proc is not None and not proc.running:
                code = proc.proc.returncode
                self.crashes.append(f"{proc.name} exited by itself (code {code}); see its log")
                proc.start()

    # -- reading the outcome -----------------------------------------------------------------------
    def jobs(self) -> list[dict[str, Any]]:
        found = []
        for namespace in sorted(set(self.namespaces.values())):
            listing: Any = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
            found += listing["items"]
        return found

    def wait_terminal(self, timeout: float) -> float | None:
        """Until every job left is terminal and every deleted one is gone."""
        started = time.monotonic()
        expected = len(self.submitted) - len(self.deleted)
        while time.monotonic() - started < timeout:
            self.supervise()
            jobs = self.jobs()
            phases = [(j.get("status") or {}).get("phase") for j in jobs]
            if len(jobs) == expected and all(p in TERMINAL_PHASES for p in phases):
                return time.monotonic() - started
            time.sleep(0.5)
        return None

    def unended(self, most: int = 10) -> list[str]:
        """The jobs that keep a campaign from ending, each with what its status says: one not
        terminal, one deleted that is still there (its finalizer not let go), or one submitted
        that is not there at all."""
        found = []
        jobs = self.jobs()
        listed = {(j["metadata"]["namespace"], j["metadata"]["name"]) for j in jobs}
        for namespace, name in self.submitted:
            if (namespace, name) not in listed and (namespace, name) not in self.deleted:
                found.append(f"{namespace}/{name}: missing (submitted, never deleted, not listed)")
        for job in jobs:
            meta, status = job["metadata"], job.get("status") or {}
            deleted = self.deleted.get((meta["namespace"], meta["name"]))
            still_there = deleted is not None and deleted[0] == meta["uid"]
            if status.get("phase") in TERMINAL_PHASES and not still_there:
                continue
            steps = [(s["name"], s["state"], s.get("attempts")) for s in status.get("steps") or []]
            compensations = status.get("compensations") or []
            undone = [(c["name"], c.get("state"), c.get("lastError")) for c in compensations]
            found.append(
                f"{meta['namespace']}/{meta['name']} ({meta['uid']}): phase {status.get('phase')}"
                f"{', deleted at ' + meta['deletionTimestamp'] if meta.get('deletionTimestamp') else ''}"
                f"{', deleted by the campaign' if still_there else ''}, finalizers {meta.get('finalizers')}, "
                f"message {status.get('message')!r}, steps {steps}, compensations {undone}"
            )
        return found[:most]

    def gone(self) -> list[JobView]:
        views = []
        for (namespace, name), (uid, account, price) in self.deleted.items():
            records = self.stack.job_records(uid)
            views.append(
                JobView(
                    name,
                    namespace,
                    uid,
                    account,
                    price,
                    {},
                    records["charges"]["holds"],
                    records["objects"],
                    records["tasks"],
                )
            )
        return views

    def views(self) -> list[JobView]:
        views = []
        for job in self.jobs():
            uid = job["metadata"]["uid"]
            records = self.stack.job_records(uid)
            views.append(
                JobView(
                    job["metadata"]["name"],
                    job["metadata"]["namespace"],
                    uid,
                    job["spec"]["account"],
                    job["spec"]["price"],
                    job.get("status") or {},
                    records["charges"]["holds"],
                    records["objects"],
                    records["tasks"],
                )
            )
        return views

    def proxy_faults(self) -> list[dict[str, Any]]:
        return [dict(e, service=name) for name in SERVICES for e in self.stack.fault_log(name)]


@dataclass
class Report:
    jobs: int
    outcomes: dict[str, int]
    failure_reasons: dict[str, int]
    faults: dict[str, int]
    heal_seconds: float | None
    reruns: int
    violations: list[Violation]
    touched: dict[str, list[dict[str, Any]]]
    seconds: float
    deleted: int = 0  # jobs users deleted during the campaign (checked from the services' records)
    crashes: list[str] = field(default_factory=list)
    unended: list[str] = field(default_factory=list)  # some of the jobs that kept it from ending

    @property
    def failed(self) -> bool:
        return bool(self.violations or self.crashes or self.heal_seconds is None)

    def print(self, out: Any = sys.stdout) -> None:
        w = out.write
        w(f"jobs: {self.jobs} left + {self.deleted} deleted   outcomes: {dict(self.outcomes)}   ")
        w(f"in {self.seconds:.0f}s\n")
        w(f"failure reasons: {dict(self.failure_reasons)}\n")
        w(f"faults injected: {dict(self.faults)} ({sum(self.faults.values())} in all)\n")
        heal = f"{self.heal_seconds:.1f}s" if self.heal_seconds is not None else "NOT ALL JOBS ENDED"
        w(f"from heal to every job terminal: {heal}\n")
        for job in self.unended:
            w(f"NOT ENDED: {job}\n")
        w(f"GPU re-runs (a lease expired before a result was stored): {self.reruns}\n")
        for crash in self.crashes:
            w(f"CRASH: {crash}\n")
        if not self.violations:
            w("invariants I1-I5: all hold (0 violations)\n")
            return
        w(f"VIOLATIONS: {len(self.violations)}\n")
        for v in self.violations:
            w(f"- {v.invariant} {v.job}: {v.detail}\n")
            w(f"  records: {json.dumps(v.records, default=str)[:1500]}\n")
            for fault in self.touched.get(v.job, [])[:10]:
                w(f"  fault: {fault}\n")


def _fault_kind(entry: dict[str, Any]) -> str:
    if entry["kind"] == "net" and "rule" in entry:
        return f"net:{entry['rule']['action']}"
    if entry["kind"] == "delete":
        return "delete"
    return f"{entry['kind']}:{entry['target']}"


def report(campaign: Campaign, heal: float | None, started: float) -> Report:
    views = campaign.views()
    balances = {a: campaign.stack.balance(a) for a in campaign.initial}
    ledger = campaign.stack.call("payment", "GET", "/v1/ledger/check")
    violations = check(views, balances, campaign.initial, ledger, campaign.gone())
    proxy = campaign.proxy_faults()
    touched: dict[str, list[dict[str, Any]]] = {}
    for view in views:
        key = f"{view.namespace}/{view.name}"
        touched[key] = [f for f in proxy if f.get("key") and view.uid in f["key"]]
    counts = Counter(_fault_kind(e) for e in campaign.faults_log)
    counts.update(f"fired:{f['action']}" for f in proxy)
    reasons = Counter(
        next((c["reason"] for c in v.status.get("conditions", []) if c["type"] == "Failed"), "?")
        for v in views
        if v.phase == "Failed"
    )
    return Report(
        len(views),
        dict(Counter(v.phase or "None" for v in views)),
        dict(reasons),
        dict(counts),
        heal,
        sum(t.get("reruns", 0) for v in views for t in v.tasks),
        violations,
        touched,
        time.monotonic() - started,
        len(campaign.deleted),
        list(campaign.crashes),
        campaign.unended() if heal is None else [],
    )


def run_random(campaign: Campaign, jobs: int, kinds: set[str], rng: random.Random) -> Report:
    started = time.monotonic()
    accounts = [f"chaos{i}-{campaign.seed}" for i in range(3)]
    for account in accounts:
        campaign.tenant(account, credits=jobs * 3)
    poor = f"poor-{campaign.seed}"
    campaign.tenant(poor, credits=4)  # a couple of jobs will be refused for want of credits
    duration = max(8.0, jobs * 0.25)
    plan = schedule(campaign.seed, kinds, duration)
    submit_times = sorted(rng.uniform(0, duration) for _ in range(jobs))
    pending_heals: list[tuple[float, Callable[[], None]]] = []
    next_fault = 0
    t0 = time.monotonic()
    deletions = sorted(
        (rng.uniform(0, duration + 5), i) for i in rng.sample(range(jobs), k=max(1, jobs // 20))
    )
    commit_points = [  # each step's call, by its single route or the bulk one the operator uses
        ("payment", "^/v1/(bulk/)?holds$"),
        ("storage", "^/v1/objects/job:"),
        ("ai", "^/v1/(bulk/)?tasks$"),
        ("payment", "^/v1/(holds/[^/]+/capture|bulk/captures)$"),
        ("main", "^/v1/deliveries$"),
    ]
    next_commit_kill = 2.0
    next_progress = 120.0
    for i, at in enumerate(submit_times):
        if time.monotonic() - t0 >= next_progress:  # a long campaign says how it goes
            next_progress += 120.0
            phases = Counter((j.get("status") or {}).get("phase") or "New" for j in campaign.jobs())
            print(
                f"[{time.monotonic() - t0:6.0f}s] submitted {i}, {dict(phases)}", file=sys.stderr, flush=True
            )
        while True:  # at least once per job: a loaded machine submitting late still injects
            now = time.monotonic() - t0
            while next_fault < len(plan) and plan[next_fault].at <= now:
                fault = plan[next_fault]
                heal = campaign.inject(fault)
                hold = fault.detail.get("window", fault.detail.get("down", 1.0))
                pending_heals.append((now + hold, heal))
                next_fault += 1
            if "kill" in kinds and now >= next_commit_kill and not campaign.commit_kills:
                campaign.kill_at_commit(*rng.choice(commit_points), rng)
                # Every kill makes a new operator list every job again: space them out so that a
                # long campaign measures faults, not an operator that never gets to work.
                next_commit_kill = now + rng.uniform(15, 30)
            restart = campaign.fire_commit_kills() if campaign.commit_kills else None
            if restart is not None:
                pending_heals.append((now + rng.uniform(0.3, 3.0), restart))
            while deletions and deletions[0][0] <= now and deletions[0][1] < i:
                _, victim = deletions.pop(0)
                campaign.delete(campaign.submitted[victim][0], campaign.submitted[victim][1])
            for due, heal in [h for h in pending_heals if h[0] <= now]:
                heal()
                pending_heals.remove((due, heal))
            campaign.supervise()
            if time.monotonic() - t0 >= at:
                break
            time.sleep(0.05)
        big = "disk" in kinds and i % 11 == 10  # big images all go to one account: its quota fills up
        account = accounts[0] if big else poor if i % 17 == 16 else accounts[i % len(accounts)]
        shape = rng.random()  # a far runAt (beyond a hold's life), a near one, a deadline at a step's edge
        run_at_s = 31 * 86400.0 if shape < 0.02 else rng.uniform(1, 6) if shape < 0.1 else None
        deadline_s = rng.uniform(1.0, 6.0) if 0.1 <= shape < 0.15 else 90.0
        campaign.submit(
            account,
            f"job-{i:05d}",
            _image(rng, noise=180 if big else 0),
            pipeline=rng.choice(["grayscale", "thumbnail", "sharpen"]),
            price=rng.randint(1, 3),
            run_at_s=run_at_s,
            deadline_s=deadline_s,
        )
    while next_fault < len(plan):  # every fault of the plan, however slowly the jobs went in
        fault = plan[next_fault]
        wait = fault.at - (time.monotonic() - t0)
        if wait > 0:
            campaign.supervise()
            time.sleep(min(wait, 0.05))
            continue
        heal = campaign.inject(fault)
        hold = fault.detail.get("window", fault.detail.get("down", 1.0))
        pending_heals.append((time.monotonic() - t0 + hold, heal))
        next_fault += 1
    for _, victim in deletions:  # those drawn for after the last submission
        campaign.delete(*campaign.submitted[victim])
    for _, heal in pending_heals:
        heal()
    campaign.heal_all()
    healed = campaign.wait_terminal(timeout=max(240.0, jobs * 0.12))
    time.sleep(5)  # two auditor passes, so that I5 is checked after it had its say
    found = report(campaign, healed, started)
    # What only the auditor undoes (a late commit for a job already gone) may take it two more
    # passes: judged again for up to 20 s, the last judgment standing.
    deadline = time.monotonic() + 20
    while found.violations and time.monotonic() < deadline:
        time.sleep(2)
        found = report(campaign, healed, started)
    return found


# ---------------------------------------------------------------------------------- scenarios
def _story(campaign: Campaign, name: str, account: str) -> str:
    view = next(v for v in campaign.views() if v.name == name)
    balance = campaign.stack.balance(account)
    steps = [(s["name"], s["state"], s["attempts"]) for s in view.status.get("steps", [])]
    undone = [(c["name"], c.get("lastError")) for c in view.status.get("compensations", [])]
    lines = [
        f"job {name}: {view.phase} — {view.status.get('message')}",
        f"  credits: holds {[(h['amount'], h['state']) for h in view.holds]}; "
        f"balance {balance['available']} available, {balance['held']} held "
        f"(started with {campaign.initial[account]})",
        f"  files:   {[(o['kind'], o['state']) for o in view.objects] or 'none'}",
        f"  task:    {[(t['state'], 'reruns', t['reruns']) for t in view.tasks] or 'none'}",
        f"  saga log steps: {steps}",
        f"  compensations:  {undone}",
        f"  auditor: {view.status.get('audit')}",
    ]
    return "\n".join(lines)


def _wait_job(campaign: Campaign, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = next((j for j in campaign.jobs() if j["metadata"]["name"] == name), None)
        if job and (job.get("status") or {}).get("phase") in TERMINAL_PHASES:
            return
        time.sleep(0.3)
    raise TimeoutError(f"{name} did not end in {timeout:.0f}s")


def run_scenario(campaign: Campaign, scenario: str) -> tuple[Report, str]:
    started = time.monotonic()
    rng = random.Random(campaign.seed)
    account = f"{scenario}-{campaign.seed}"
    campaign.tenant(account, credits=100)
    stack = campaign.stack
    if scenario == "s1":  # credits held, then the upload fails: storage full
        campaign.submit(account, "s1-job", _image(rng, noise=330), price=10)  # ~330 KB > the quota
        _wait_job(campaign, "s1-job")
        campaign.faults_log.append({"kind": "disk", "target": "storage", "detail": "account quota exceeded"})
    elif scenario == "s2":  # the callee commits, the response is lost, the caller retries
        stack.faults(
            "storage",
            [
                {
                    "action": "drop-response",
                    "method": "PUT",
                    "path": "^/v1/objects/job:",
                    "times": 1,
                    "name": "s2-upload",
                }
            ],
        )
        stack.faults(
            "ai",
            [
                {
                    "action": "drop-response",
                    "method": "POST",
                    "path": "^/v1/(bulk/)?tasks$",
                    "times": 1,
                    "name": "s2-schedule",
                }
            ],
        )
        campaign.faults_log += [{"kind": "net", "target": "storage"}, {"kind": "net", "target": "ai"}]
        campaign.submit(account, "s2-job", _image(rng), price=10)
        _wait_job(campaign, "s2-job")
    elif scenario == "s3":  # Storage goes down while the GPU works
        stack.faults(
            "storage",
            [{"action": "reset", "method": "PUT", "path": "^/v1/objects/result:", "name": "s3-storage-down"}],
        )
        campaign.faults_log.append({"kind": "net", "target": "storage", "detail": "down for results, 6s"})
        campaign.submit(account, "s3-job", _image(rng), price=10)
        deadline = time.monotonic() + 60
        while not stack.fault_log("storage") and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(6)  # Storage stays down a while; the result waits in the worker's spool
        stack.faults("storage", [])
        _wait_job(campaign, "s3-job")
    elif scenario == "s4":  # every service tells a different story: the auditor settles it
        campaign.submit(account, "s4-job", b"not an image at all", price=10)
        _wait_job(campaign, "s4-job")
        view = next(v for v in campaign.views() if v.name == "s4-job")
        # Plant the disagreement of the seed: Payment still holds credits for the failed job.
        stack.call("payment", "POST", "/v1/holds", {"account": account, "jobId": view.uid, "amount": 10})
        campaign.faults_log.append({"kind": "plant", "target": "payment", "detail": "a stray active hold"})
        # The auditor judged the job when it failed and judges it again when it changes: the
        # admin who hears of the disagreement asks for an audit, as `kubectl annotate` does.
        campaign.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            view.namespace,
            PLURAL,
            view.name,
            {"metadata": {"annotations": {"aijobs.io/audit-requested": str(time.time_ns())}}},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            audit = next(v for v in campaign.views() if v.name == "s4-job").status.get("audit") or {}
            if audit.get("verdict") == "repaired":
                break
            time.sleep(0.5)
    else:
        raise ValueError(f"unknown scenario {scenario!r} (s1, s2, s3, s4)")
    fired = sorted({e["rule"] for name in SERVICES for e in stack.fault_log(name)})
    for name in SERVICES:
        stack.faults(name, [])
    time.sleep(3)
    story = _story(campaign, f"{scenario}-job", account) + f"\n  faults that fired: {fired}"
    return report(campaign, 0.0, started), story


# ---------------------------------------------------------------------------------- command
def main(argv: list[str]) -> int:
    import argparse

    from aijobs.crds import install_crds
    from aijobs_dev.controlplane.cluster import ControlPlane
    from aijobs_dev.testbed.postgres import PostgresCluster, PostgresError

    parser = argparse.ArgumentParser(prog="aijobs chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", default="net,kill,disk", help="any of net, kill, disk")
    parser.add_argument("--scenario", choices=["s1", "s2", "s3", "s4"])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="aijobs-chaos-"))
    plane = ControlPlane(root / "controlplane")
    plane.start()
    pg: PostgresCluster | None = None
    try:
        pg = PostgresCluster()
        pg.start()
        database = lambda name: pg.create_database(f"{name}_{uuid.uuid4().hex[:6]}")  # noqa: E731
    except PostgresError:
        pg = None
        database = lambda name: f"sqlite:///{root}/{name}.db"  # noqa: E731
    install_crds(api_client(plane.kubeconfig))
    jobs = 0 if args.scenario else args.jobs  # the seed's scenario 1 needs the small quota
    stack = build_stack(root, plane.kubeconfig, database, args.seed, args.workers, jobs=jobs)
    try:
        campaign = Campaign(stack, args.seed)
        if args.scenario:
            result, story = run_scenario(campaign, args.scenario)
            print(f"scenario {args.scenario} (seed {args.seed})\n{story}")
        else:
            kinds = set(args.faults.split(","))
            result = run_random(campaign, args.jobs, kinds, random.Random(args.seed))
            print(f"campaign: seed {args.seed}, faults {sorted(kinds)}")
        result.print()
        return 1 if result.failed else 0
    finally:
        stack.stop()
        plane.stop()
        if pg is not None:
            pg.stop()


def build_stack(
    root: Path,
    kubeconfig: Path,
    database: Callable[[str], str],
    seed: int,
    workers: int = 2,
    jobs: int = 0,
) -> Stack:
    # The quota fills up for the account that gets the big images (a full disk, on purpose), not
    # for the others: it grows with the campaign (~4 KB per job; a small job stores < 3 KB and a
    # big image ~100 KB). A fixed 300 KB had every account full after ~1,500 deliveries of a
    # 10,000-job campaign, which then drew StorageFull for nearly every job.
    quota = max(300_000, jobs * 4_000)
    stack = Stack(
        root,
        kubeconfig,
        database,
        seed=seed,
        service_env={"storage": {"AIJOBS_ACCOUNT_QUOTA_BYTES": str(quota)}},
        operator_env={
            "AIJOBS_LEASE_NAME": f"aijobs-chaos-{uuid.uuid4().hex[:6]}",
            "AIJOBS_AUDIT_INTERVAL_SECONDS": "2",
        },
        worker_env={"AIJOBS_LEASE_SECONDS": "6"},
    )
    stack.start_services()
    stack.start_operator()
    for _ in range(workers):
        stack.start_worker()
    return stack


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
