"""Field types for what callers send, shared by every service so that a class of bad input is
refused the same way everywhere, as a 422 that names the field, never a 500 from deep inside:

- :data:`Timestamp`: a time with its zone, turned into UTC at the door; one that UTC, the
  database or the arithmetic after it cannot hold (``0001-01-01T00:00:00+01:00`` is year 0 in
  UTC) is refused. A time without a zone is read as UTC, as every stored time is.
- :data:`MAX_ROW_ID`: the bound of every id a caller may send, what the database's 64-bit
  columns hold (a query for id 2**63 overflowed the driver).

Booleans and integers in bodies are pydantic's ``StrictBool`` and ``StrictInt``: ``"yes"`` is not
true and ``"8"`` is not a number (``tests/services/test_inputs.py`` checks every route for it).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import AfterValidator

__all__ = ["EARLIEST", "LATEST", "MAX_ROW_ID", "Timestamp", "to_utc"]

# A year of room at the top for what is added to a time later (a hold's life, a retry's delay).
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
MAX_ROW_ID = 2**63 - 1


def to_utc(value: dt.datetime) -> dt.datetime:
    """``value`` in UTC, or ValueError (which pydantic reports as a 422 naming the field)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    try:
        utc = value.astimezone(dt.UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise ValueError(
            f"must be a time from {EARLIEST:%Y-%m-%dT%H:%M:%SZ} to before {LATEST:%Y-%m-%dT%H:%M:%SZ}, "
            "with a zone (e.g. 2030-01-01T02:00:00Z)"
        )
    return utc


Timestamp = Annotated[dt.datetime, AfterValidator(to_utc)]
