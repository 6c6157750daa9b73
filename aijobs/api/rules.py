"""Values every part of aijobs must agree on, defined once: the services, the operator, the
worker, the CRD's pydantic twin and the simulator's twins import them from here."""

from __future__ import annotations

import datetime as dt

__all__ = [
    "ACCOUNT_NAME",
    "DEFAULT_BACKOFF",
    "HTTP_URL",
    "HTTP_URL_PORTABLE",
    "MAX_BATCH_IMAGES",
    "MAX_HOLD",
    "NAMESPACE_NAME",
    "OBJECT_NAME",
    "RUN_AHEAD",
    "SERVICE_URLS",
    "TERMINAL_PHASES",
]

# An account (tenant) name: a DNS label, as a namespace's name is.
ACCOUNT_NAME = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
NAMESPACE_NAME = ACCOUNT_NAME  # at most 63 characters
# A custom object's name (an AIImageJob's): a DNS subdomain, at most 253 characters.
OBJECT_NAME = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$"

# An image or webhook URL as every entrance takes it (the CRD's pattern, the services' models):
# http(s), a host name or a bracketed IPv6 address, an optional port, no user-info, no spaces.
# What a pattern can't say (a port over 65535, an IPv6 literal that is not an address) the
# services' parser (kit.outbound) and the CRD's CEL rules refuse.
HTTP_URL = r"^https?://(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?(?:[/?#]\S*)?$"
# The same pattern as the API server (Go's RE2) reads it, spelled so that every engine reads it
# alike: ``\S`` is ASCII to RE2 but Unicode to Python, Rust (pydantic) and a schema's ECMA
# readers (``\x85`` is a space to some and not to others). NUL, which PostgreSQL cannot store,
# is refused too. The services' models and their OpenAPI say this one.
HTTP_URL_PORTABLE = HTTP_URL.replace("\\S", "[^\\x00\\t\\n\\f\\r ]")

# Payment's longest hold: credits can't be reserved for longer, so neither can a job wait longer.
MAX_HOLD = dt.timedelta(days=30)
# How far ahead Main API lets a job be asked to run: its hold must cover the wait, the run and
# the deadline after it.
RUN_AHEAD = MAX_HOLD - dt.timedelta(hours=2)

# The most images one batch job may name (DESIGN.md §6): its tasks, its manifest's lines.
MAX_BATCH_IMAGES = 100_000

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
