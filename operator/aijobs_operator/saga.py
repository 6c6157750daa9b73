"""Names and time formats the operator's edges share. The saga's rules live in
:mod:`aijobs_operator.core` (pure functions over the typed log); this module holds only what the
engine, the steps and the auditor need to talk to Kubernetes and the services."""

from __future__ import annotations

import datetime as dt

from aijobs.api.rules import TERMINAL_PHASES
from aijobs_operator.core import idempotency_key, iso

__all__ = ["FINALIZER", "TERMINAL", "idempotency_key", "iso", "now", "parse"]

FINALIZER = "aijobs.io/saga"
TERMINAL = TERMINAL_PHASES


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
