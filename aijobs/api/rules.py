"""Values every part of aijobs must agree on, defined once: the services, the operator, the
worker, the CRD's pydantic twin and the simulator's twins import them from here."""

from __future__ import annotations

import datetime as dt

__all__ = [
    "ACCOUNT_NAME",
    "DEFAULT_BACKOFF",
    "MAX_HOLD",
    "SERVICE_URLS",
    "TERMINAL_PHASES",
]

# An account (tenant) name: a DNS label, as a namespace's name is.
ACCOUNT_NAME = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"

# Payment's longest hold: credits can't be reserved for longer, so neither can a job wait longer.
MAX_HOLD = dt.timedelta(days=30)

# The phases a job ends in.
TERMINAL_PHASES = ("Delivered", "Failed")

# Default retry policy of a step: (max attempts, initial backoff s, max backoff s).
DEFAULT_BACKOFF = (10, 1, 60)

# Where each service listens by default on one machine (the demo, the README's examples).
SERVICE_URLS = {
    "payment": "http://127.0.0.1:8101",
    "auth": "http://127.0.0.1:8102",
    "storage": "http://127.0.0.1:8103",
    "ai": "http://127.0.0.1:8104",
    "main": "http://127.0.0.1:8105",
}
