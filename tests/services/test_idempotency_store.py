"""The idempotency store's decisions, on SQLite, with a clock the test moves: when a request
acts, when it gets the first answer back, when its key is refused, and when a key is free again."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aijobs_services.kit.db import make_engine, make_sessionmaker
from aijobs_services.kit.idempotency import (
    Answer,
    IdempotencyStore,
    IdempotentRequest,
    KeyInProgress,
    KeyReused,
    Outcome,
    idempotency_table,
)
from aijobs_services.kit.problems import Conflict, Problem, Unprocessable
from sqlalchemy.orm import Session, sessionmaker

RETENTION = dt.timedelta(hours=1)
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now


@dataclass(frozen=True)
class Send:
    """One request with an Idempotency-Key, ``at`` seconds after the first, and how its use
    case ends: it answers, refuses (a 409 it raises) or fails (a 500)."""

    body: str = "a"
    at: float = 0
    caller: str = "operator"
    key: str = "k"
    ends: str = "answers"


@dataclass
class World:
    store: IdempotencyStore
    sessions: sessionmaker[Session]
    clock: Clock
    effects: sa.Table
    replays: list[str]

    def request(self, send: Send) -> IdempotentRequest:
        return IdempotentRequest(send.caller, send.key, f"fingerprint-of-{send.body}", "POST /v1/things")

    def act(self, send: Send) -> Any:
        def action(session: Session) -> Outcome:
            session.execute(self.effects.insert().values(body=send.body))
            if send.ends == "refuses":
                raise Conflict("the thing is final")
            if send.ends == "fails":
                raise Problem("the database went away")
            return 201, {"body": send.body}

        return action

    def send(self, send: Send) -> tuple[str, Answer | None]:
        self.clock.now = START + dt.timedelta(seconds=send.at)
        with self.sessions() as session:
            try:
                answer = self.store.once(session, self.request(send), self.act(send))
            except KeyReused:
                return "reused", None
            except KeyInProgress:
                return "in-progress", None
            except Problem:
                return "failed", None
        return ("replayed" if answer.replayed else "acted"), answer

    def effect_count(self) -> int:
        with self.sessions() as session:
            return len(session.execute(sa.select(self.effects)).all())


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    meta = sa.MetaData()
    table = idempotency_table(meta)
    effects = sa.Table(
        "effects", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("body", sa.Text)
    )
    engine = make_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    meta.create_all(engine)
    clock, replays = Clock(), list[str]()
    yield World(
        IdempotencyStore(table, RETENTION, replays.append, clock),
        make_sessionmaker(engine),
        clock,
        effects,
        replays,
    )
    engine.dispose()


HOUR = RETENTION.total_seconds()

CASES = [  # the requests sent, what the store decided for each, how often the use case acted
    pytest.param([Send(), Send(at=10)], ["acted", "replayed"], 1, id="a-retry-replays"),
    pytest.param([Send(body="a"), Send(body="b", at=1)], ["acted", "reused"], 1, id="other-body-refused"),
    pytest.param([Send(caller="operator"), Send(caller="admin")], ["acted", "acted"], 2, id="key-per-caller"),
    pytest.param([Send(key="k1"), Send(key="k2")], ["acted", "acted"], 2, id="two-keys-act-twice"),
    pytest.param([Send(), Send(at=HOUR - 1)], ["acted", "replayed"], 1, id="before-expiry-replays"),
    pytest.param([Send(), Send(at=HOUR)], ["acted", "acted"], 2, id="expired-acts-again"),
    pytest.param(
        [Send(body="a"), Send(body="b", at=HOUR)], ["acted", "acted"], 2, id="expired-takes-new-body"
    ),
    pytest.param([Send(ends="refuses"), Send(at=5)], ["acted", "replayed"], 0, id="refusal-kept-undone"),
    pytest.param([Send(ends="fails"), Send(at=5)], ["failed", "acted"], 1, id="failure-keeps-nothing"),
]


@pytest.mark.parametrize(("sends", "decisions", "effects"), CASES)
def test_the_store_decides_from_key_body_caller_and_the_clock_it_is_given(
    world: World, sends: list[Send], decisions: list[str], effects: int
) -> None:
    results = [world.send(send) for send in sends]
    assert [decision for decision, _ in results] == decisions
    assert world.effect_count() == effects
    answers = [answer for _, answer in results if answer is not None]
    for first, replay in itertools.pairwise(answers):
        if replay.replayed:  # the same status, body and type as the first time
            assert (replay.status, replay.body, replay.media_type) == (
                first.status,
                first.body,
                first.media_type,
            )
    assert len(world.replays) == decisions.count("replayed")


def test_a_refusal_is_replayed_as_the_problem_it_was(world: World) -> None:
    _, first = world.send(Send(ends="refuses"))
    assert first is not None and first.status == 409 and first.media_type == "application/problem+json"
    assert first.body["type"].endswith("/conflict") and first.body["instance"] == "/v1/things"


def test_a_key_whose_first_request_has_not_finished_is_in_progress(world: World) -> None:
    with world.sessions() as session, session.begin():
        session.execute(
            world.store.table.insert().values(
                caller="operator",
                key="k",
                fingerprint="fingerprint-of-a",
                route="POST /v1/things",
                created_at=START,
                expires_at=START + RETENTION,
            )
        )
    assert world.send(Send(at=1)) == ("in-progress", None)
    assert world.effect_count() == 0


def test_the_stored_copy_is_redacted_but_the_first_answer_is_whole(world: World) -> None:
    with world.sessions() as session:
        first = world.store.once(
            session, world.request(Send()), world.act(Send()), redact=lambda body: {**body, "body": "***"}
        )
    assert first.body == {"body": "a"}
    assert world.send(Send(at=1))[1] == Answer(201, {"body": "***"}, "application/json", replayed=True)


def test_the_sweep_forgets_only_keys_past_their_retention(world: World) -> None:
    world.send(Send(key="old"))
    world.send(Send(key="new", at=HOUR / 2))
    world.clock.now = START + RETENTION
    with world.sessions() as session:
        assert world.store.sweep(session) == 1
    with world.sessions() as session:
        assert [row.key for row in session.execute(sa.select(world.store.table))] == ["new"]


def test_the_http_adapter_marks_replays_and_turns_refused_keys_into_problems(world: World) -> None:
    send = Send()
    with world.sessions() as session:
        first = world.store.run(session, world.request(send), world.act(send))
    with world.sessions() as session:
        again = world.store.run(session, world.request(send), world.act(send))
    assert (first.status_code, "idempotent-replayed" in first.headers) == (201, False)
    assert (again.status_code, again.headers["idempotent-replayed"]) == (201, "true")
    assert json.loads(bytes(again.body)) == json.loads(bytes(first.body)) == {"body": "a"}
    other = Send(body="b")
    with world.sessions() as session, pytest.raises(Unprocessable) as reused:
        world.store.run(session, world.request(other), world.act(other))
    assert reused.value.slug == "idempotency-key-reused"
