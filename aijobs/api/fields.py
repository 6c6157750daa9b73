"""Field types every wire model shares, so that a class of input is read the same way by every
service and said the same way in every OpenAPI document.

- :data:`Int`: an integer as JSON Schema defines one: ``8`` and ``8.0`` are the same number
  (OpenAPI 3.1's data model), so both are read as 8; ``"8"``, ``true``, ``8.5`` are refused.
- :data:`Timestamp`: a time a caller sends, any RFC 3339 date-time the schema admits (years
  0001 to 9999), turned into UTC at the door. The few that UTC itself cannot hold
  (``0001-01-01T00:00:00+01:00`` is year 0 there) are refused as ``time-out-of-range``: a rule
  of the calendar Python keeps, not a request that does not fit the schema.
- :data:`Instant`: a time a service answers, written as the services always have (ISO 8601 with
  ``+00:00``; pydantic alone would write ``Z``).
- :data:`Text`: text that reaches PostgreSQL, which cannot hold a NUL: the schema says so with a
  pattern, so a generated request and the service agree.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    PlainSerializer,
    Strict,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

__all__ = ["NO_NUL", "OUT_OF_RANGE", "Instant", "Int", "Text", "Timestamp", "integral", "to_utc"]

NO_NUL = r"^[^\x00]*$"
# The error kind of a time UTC cannot hold; the services answer it as its own problem.
OUT_OF_RANGE = "time_out_of_range"


def integral(value: Any) -> Any:
    """An integral float as its integer; anything else left for the strict integer to judge."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Bound it on the field (``n: Int = Field(ge=1)``): an alias ``Annotated[Int, Field(ge=1)]``
# still checks the bound but writes it into the schema as ``ge``, which no reader knows.
Int = Annotated[int, Strict(), BeforeValidator(integral)]


def _text_time(value: Any) -> Any:
    """A time is sent as RFC 3339 text: pydantic alone would read a number as Unix time."""
    if isinstance(value, str | dt.datetime):
        return value
    raise ValueError("must be an RFC 3339 date-time, e.g. 2030-01-01T02:00:00Z")


def to_utc(value: dt.datetime) -> dt.datetime:
    """``value`` in UTC; one without a zone is read as UTC, as every stored time is."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise PydanticCustomError(
            OUT_OF_RANGE, "{value} is outside the years 0001 to 9999 in UTC", {"value": value.isoformat()}
        ) from None


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat() if value.tzinfo else value.isoformat()


Timestamp = Annotated[
    dt.datetime,
    BeforeValidator(_text_time),
    AfterValidator(to_utc),
    PlainSerializer(_iso, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
Instant = Annotated[
    dt.datetime,
    PlainSerializer(_iso, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
Text = Annotated[str, StringConstraints(pattern=NO_NUL)]
