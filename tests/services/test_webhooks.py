"""Delivery webhooks go out only to public destinations (or what the operator allow-lists),
checked at every send and connected to the address that was checked: a real listener on
loopback counts the requests that reach it."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from aijobs_services.kit.db import make_engine, migrate
from aijobs_services.main.models import Delivery, Webhook
from aijobs_services.main.notify import send_due
from aijobs_services.main.service import SPEC
from aijobs_services.main.settings import MainSettings
from sqlalchemy.orm import Session

pytestmark = pytest.mark.postgres


def _deliver(engine: sa.Engine, url: str, job: str) -> None:
    now = dt.datetime.now(dt.UTC)
    with Session(engine) as session, session.begin():
        session.merge(Webhook(account="acme", url=url, secret="s" * 32, created_at=now))
        session.add(
            Delivery(
                id=job,
                namespace="ns",
                name=job,
                account="acme",
                result_url="http://x/r",
                state="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )


def _state(engine: sa.Engine, job: str) -> tuple[str, str | None]:
    with Session(engine) as session:
        delivery = session.get(Delivery, job)
        assert delivery is not None
        return delivery.state, delivery.last_error


def test_a_webhook_to_loopback_is_never_called_unless_allow_listed(
    pg_url: str, listener: tuple[str, list[dict[str, str]]]
) -> None:
    base, hits = listener
    url = f"{base}/hook"
    migrate(pg_url, SPEC.migrations)
    engine = make_engine(pg_url)
    closed = SimpleNamespace(
        state=SimpleNamespace(settings=MainSettings(service="main", database_url=pg_url))
    )
    _deliver(engine, url, "job-1")
    with Session(engine) as session:
        send_due(session, closed)  # type: ignore[arg-type]
    state, error = _state(engine, "job-1")
    assert state == "refused" and "127.0.0.1" in (error or "")
    assert hits == []  # the listener works (below), so nothing was sent
    allowed = SimpleNamespace(
        state=SimpleNamespace(
            settings=MainSettings(service="main", database_url=pg_url, outbound_allow_cidrs=["127.0.0.0/8"])
        )
    )
    _deliver(engine, url, "job-2")
    with Session(engine) as session:
        send_due(session, allowed)  # type: ignore[arg-type]
    assert _state(engine, "job-2")[0] == "sent"
    assert len(hits) == 1 and hits[0]["X-Aijobs-Delivery"] == "job-2"
    assert hits[0]["Host"] == url.split("/")[2]
    engine.dispose()
