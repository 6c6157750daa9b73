"""The service kit: what every aijobs service needs, written once.

- :mod:`.settings`: configuration from ``AIJOBS_*`` environment variables;
- :mod:`.db`: engines and sessions for PostgreSQL (psycopg 3) or SQLite, Alembic migrations;
- :mod:`.problems`: RFC 9457 problem+json errors with a stable ``type`` per kind;
- :mod:`.callers`: service-to-service authentication (HMAC-signed, short-lived tokens);
- :mod:`.idempotency`: ``Idempotency-Key`` handling, stored atomically with the business change;
- :mod:`.observability`: ``/healthz``, ``/readyz``, ``/metrics`` and request metrics;
- :mod:`.app`: the FastAPI app factory that wires the above;
- :mod:`.client`: the HTTP client other components use to call a service.
"""
