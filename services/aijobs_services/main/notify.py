"""Delivery notifications: an outbox in Main API's database, sent to each account's webhook,
signed (HMAC-SHA256 over the body), retried with backoff, idempotent by delivery id (the
receiver sees the same ``X-Aijobs-Delivery`` id on every retry)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import random

import httpx
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.orm import Session

from aijobs_services.kit import outbound
from aijobs_services.kit.db import utcnow
from aijobs_services.main.models import Delivery, Webhook


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send_due(session: Session, app: FastAPI, limit: int = 50) -> int:
    max_attempts: int = app.state.settings.webhook_max_attempts
    allow = outbound.networks(app.state.settings.outbound_allow_cidrs)
    now = utcnow()
    with session.begin():
        due = list(
            session.scalars(
                sa.select(Delivery)
                .where(Delivery.state == "pending", Delivery.next_attempt_at <= now)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        sent = 0
        for delivery in due:
            hook = session.get(Webhook, delivery.account)
            if hook is None:
                delivery.state = "no-webhook"
                continue
            body = json.dumps(
                {
                    "deliveryId": delivery.id,
                    "job": delivery.name,
                    "namespace": delivery.namespace,
                    "account": delivery.account,
                    "resultUrl": delivery.result_url,
                }
            ).encode()
            headers = {
                "Content-Type": "application/json",
                "X-Aijobs-Delivery": delivery.id,
                "X-Aijobs-Signature": sign(hook.secret, body),
            }
            delivery.attempts += 1
            try:
                # Checked at every send, not only when set: DNS may have changed since.
                destination = outbound.check(hook.url, allow)
            except outbound.DestinationRefused as exc:
                delivery.state, delivery.last_error = "refused", str(exc.detail)  # never retried
                continue
            url, host, extensions = destination.request()
            try:
                with httpx.Client(timeout=5, follow_redirects=False) as client:
                    response = client.post(url, content=body, headers=headers | host, extensions=extensions)
                ok, error = response.is_success, f"answered {response.status_code}"
            except httpx.HTTPError as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"
            if ok:
                delivery.state, delivery.sent_at = "sent", utcnow()
                sent += 1
            elif delivery.attempts >= max_attempts:
                delivery.state, delivery.last_error = "gave-up", error
            else:
                backoff = min(3600.0, 2.0**delivery.attempts) * random.uniform(0.5, 1.0)
                delivery.last_error = error
                delivery.next_attempt_at = utcnow() + dt.timedelta(seconds=backoff)
    return sent
