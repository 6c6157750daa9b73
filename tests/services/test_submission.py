"""Main API's submission use case, checked without a network or a database: what an order must
look like before anything is stored or created."""

from __future__ import annotations

import datetime as dt

import pytest
from aijobs_services.kit.problems import Unprocessable
from aijobs_services.main.submission import parse, parse_run_at

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param("2026-W48-5T12:00:00Z", "RFC 3339", id="iso-week-date"),
        pytest.param("20261128T120000Z", "RFC 3339", id="basic-format"),
        pytest.param("2026-11-28T12:00:00", "RFC 3339", id="no-zone"),
        pytest.param("2026-11-28 12:00:00Z", "RFC 3339", id="space-separator"),
        pytest.param("2026-02-30T12:00:00Z", "not a valid time", id="no-such-day"),
        pytest.param("2026-11-27T10:00:00Z", "in the past", id="past"),
        pytest.param("2026-12-30T12:00:00Z", "too far ahead", id="beyond-a-holds-life"),
        pytest.param("9999-12-31T23:59:59Z", "too far ahead", id="year-9999"),
    ],
)
def test_a_run_at_the_crd_or_a_hold_would_refuse_is_refused_first(text: str, says: str) -> None:
    with pytest.raises(Unprocessable) as refused:
        parse_run_at(text, NOW)
    assert says in str(refused.value.detail)


@pytest.mark.parametrize(
    "text", ["2026-11-28T12:00:00Z", "2026-11-28T12:00:00.5+02:00", "2026-12-20T00:00:00-05:00"]
)
def test_a_good_run_at_is_taken(text: str) -> None:
    assert parse_run_at(text, NOW) > NOW


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        pytest.param({"parameters": "[1]"}, "JSON object", id="parameters-not-an-object"),
        pytest.param({"parameters": "[" * 50_000}, "JSON object", id="parameters-nested-50000-deep"),
        pytest.param({"pipeline": "teleport"}, "pipeline", id="unknown-pipeline"),
        pytest.param({"url": "ftp://x/y.png", "has_file": False}, "http(s)", id="not-http"),
        pytest.param({"url": "https://x/y.png"}, "exactly one", id="file-and-url"),
        pytest.param({"has_file": False}, "exactly one", id="neither"),
    ],
)
def test_a_bad_order_is_refused_with_the_field_named(fields: dict[str, object], says: str) -> None:
    args: dict[str, object] = {
        "pipeline": "grayscale",
        "parameters": "{}",
        "run_at": None,
        "url": None,
        "has_file": True,
        **fields,
    }
    with pytest.raises(Unprocessable) as refused:
        parse(**args)  # type: ignore[arg-type]
    assert says in str(refused.value.detail)


def test_an_account_submitting_too_fast_is_told_when_to_come_back() -> None:
    from aijobs_services.main.limits import SubmissionLimiter

    now = [0.0]
    limiter = SubmissionLimiter(per_minute=60, burst=3, clock=lambda: now[0])
    assert [limiter.take("acme") for _ in range(3)] == [None, None, None]  # the burst
    wait = limiter.take("acme")
    assert wait is not None and 0.9 <= wait <= 1.0  # one a second at 60 a minute
    assert limiter.take("globex") is None  # accounts do not share a bucket
    now[0] += 1.0
    assert limiter.take("acme") is None
