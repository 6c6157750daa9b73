"""Run many seeded schedules and report violations of I1-I5, T1 and A1-A3 (``make test`` runs a
fixed budget; ``bench/simulate.py`` runs long campaigns)."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aijobs_dev.simulation.check import Violation, check
from aijobs_dev.simulation.world import Faults, World

__all__ = ["Campaign", "minimal", "replay", "run_range", "simulate"]


@dataclass
class Campaign:
    schedules: int = 0
    jobs: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    audit_moves: Counter[str] = field(default_factory=Counter)  # holds the auditor captured/released
    failing: dict[int, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    def merge(self, other: Campaign) -> None:
        self.schedules += other.schedules
        self.jobs += other.jobs
        self.outcomes.update(other.outcomes)
        self.faults.update(other.faults)
        self.audit_moves.update(other.audit_moves)
        self.failing.update(other.failing)


def run_one(seed: int, faults: Faults | None = None) -> tuple[World, list[Violation]]:
    world = World(seed, faults)
    world.run_sync()
    return world, check(world)


def run_range(start: int, count: int) -> Campaign:
    campaign = Campaign()
    for seed in range(start, start + count):
        world, violations = run_one(seed)
        campaign.schedules += 1
        campaign.jobs += len(world.jobs)
        campaign.faults.update(world.fired)
        campaign.audit_moves.update(move.action for move in world.money_moves)
        for job in world.jobs:
            body = world.kube.objects.get((job.namespace, job.name))
            phase = (body.get("status") or {}).get("phase") if body else "gone"
            campaign.outcomes[str(phase)] += 1
            if job.images:
                ending = _batch_ending(body)
                campaign.outcomes[f"batch:{ending}"] += 1
                if "imageList" in job.spec["input"]["batch"]:  # named by an image list
                    campaign.outcomes[f"list-batch:{ending}"] += 1
                    if _reason(body) == "InputRefused":
                        campaign.outcomes["list-batch:url-refused"] += 1
        if violations:
            campaign.failing[seed] = [str(v) for v in violations]
    return campaign


def _reason(body: dict[str, Any] | None) -> str | None:
    conditions = ((body or {}).get("status") or {}).get("conditions", [])
    return next((c.get("reason") for c in conditions if c["type"] == "Failed"), None)


def _batch_ending(body: dict[str, Any] | None) -> str:
    """How a batch job ended: gone, Failed with nothing delivered, Delivered with every image or
    only some, or Failed past its maxFailedImages with what succeeded delivered."""
    if body is None:
        return "gone"
    status = body.get("status") or {}
    batch = status.get("batch") or {}
    if status.get("phase") == "Delivered":
        return "delivered-all" if batch.get("succeeded") == batch.get("total") else "delivered-some"
    return "failed-delivered-some" if status.get("result") else "failed-nothing"


def simulate(schedules: int, start: int = 0, processes: int = 2) -> Campaign:
    started = time.perf_counter()
    total = Campaign()
    chunk = max(1, min(2000, schedules // max(1, processes * 4)))
    starts = list(range(start, start + schedules, chunk))
    counts = [min(chunk, start + schedules - s) for s in starts]
    if processes <= 1:
        for s, c in zip(starts, counts, strict=True):
            total.merge(run_range(s, c))
    else:
        with ProcessPoolExecutor(processes) as pool:
            for part in pool.map(run_range, starts, counts):
                total.merge(part)
    total.seconds = time.perf_counter() - started
    return total


def replay(seed: int) -> str:
    """The story of one schedule: what happened, which faults fired, what the checker found."""
    world, violations = run_one(seed)
    lines = [f"seed {seed}: faults {world.faults}", *world.story]
    lines += [f"VIOLATION {v}" for v in violations] or ["no violation"]
    return "\n".join(lines)


def minimal(seed: int) -> str:
    """A failing seed's shortest story: turn each kind of fault off in turn, keeping it off while
    the schedule still fails, then tell what is left (the same seed, fewer kinds of fault)."""
    world, violations = run_one(seed)
    if not violations:
        return f"seed {seed}: no violation"
    faults = world.faults
    for kind in dataclasses.fields(Faults):
        if getattr(faults, kind.name) == 0:
            continue
        fewer = dataclasses.replace(faults, **{kind.name: 0.0})
        trial, found = run_one(seed, fewer)
        if found and len(trial.story) <= len(world.story):
            world, violations, faults = trial, found, fewer
    lines = [f"seed {seed}, minimal faults {faults}", *world.story]
    return "\n".join([*lines, *(f"VIOLATION {v}" for v in violations)])
