"""The operator's Prometheus metrics (served by ``aijobs operator`` on its metrics port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from aijobs.consistency import FINDING_KINDS
from aijobs_operator.saga import SAGA

# The reasons a job is compensated for that a person watches for (others appear when they happen).
COMPENSATION_REASONS = (
    "Deleted",
    "DeadlineExceeded",
    "InsufficientCredits",
    "StorageFull",
    "ProcessingFailed",
    "InputUndecodable",
    "StepError",
)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Gauge("aijobs_jobs", "Jobs known to the operator, by phase", ["phase"], registry=r)
        self.step_seconds = Histogram(
            "aijobs_saga_step_duration_seconds",
            "Time of one attempt of a saga step",
            ["step", "outcome"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.retries = Counter(
            "aijobs_saga_retries_total",
            "Step attempts retried after an unknown outcome",
            ["step"],
            registry=r,
        )
        self.compensations = Counter(
            "aijobs_saga_compensations_total", "Jobs compensated, by reason", ["reason"], registry=r
        )
        self.past_deadline = Counter(
            "aijobs_saga_deadline_exceeded_total", "Jobs that ran past their deadline", registry=r
        )
        self.outcomes = Counter(
            "aijobs_jobs_finished_total", "Jobs that reached a final phase", ["phase"], registry=r
        )
        self.api_writes = Counter(
            "aijobs_operator_api_writes_total", "Writes to the Kubernetes API", ["kind"], registry=r
        )
        self.event_failures = Counter(
            "aijobs_operator_event_failures_total", "Events that could not be posted", registry=r
        )
        self.follow_requests = Counter(
            "aijobs_operator_task_queries_total", "Bulk task-state reads", registry=r
        )
        self.audit = Counter(
            "aijobs_audit_findings_total",
            "Auditor findings, by kind and what was done",
            ["kind", "action"],
            registry=r,
        )
        self.credits = Counter(
            "aijobs_credits_total",
            "Credits moved by jobs that ended: charged for a delivery, returned by a released hold",
            ["movement"],
            registry=r,
        )
        self.leader = Gauge("aijobs_operator_leader", "1 while this replica holds the Lease", registry=r)
        # Every series a dashboard panel shows exists from the start (at 0): rate() and increase()
        # then answer 0 rather than nothing before the first event.
        for step in SAGA.names:
            self.retries.labels(step)
            for outcome in ("ok", "failed", "unknown", "error"):
                self.step_seconds.labels(step, outcome)
        for reason in COMPENSATION_REASONS:
            self.compensations.labels(reason)
        for kind in FINDING_KINDS:
            for action in ("reported", "repaired"):
                self.audit.labels(kind, action)
        for movement in ("charged", "returned"):
            self.credits.labels(movement)
        for phase in ("Delivered", "Failed"):
            self.outcomes.labels(phase)


METRICS = OperatorMetrics()
