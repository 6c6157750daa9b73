"""Field types for what callers send, shared by every service so that a class of bad input is
refused the same way everywhere, never as a 500 from deep inside.

The wire's own types (:data:`Int`, :data:`Timestamp`, :data:`Instant`, :data:`Text`) are
:mod:`aijobs.api.fields`', re-exported here for the services; what is the database's alone is
here:

- :data:`PathText`: an id in a path, :data:`Text`'s rule said as a path parameter's.
- :data:`MAX_ROW_ID`: the bound of every id a caller may send, what the database's 64-bit
  columns hold (a query for id 2**63 overflowed the driver).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from aijobs.api.fields import NO_NUL, OUT_OF_RANGE, Instant, Int, Text, Timestamp, to_utc

__all__ = [
    "MAX_ROW_ID",
    "NO_NUL",
    "OUT_OF_RANGE",
    "Instant",
    "Int",
    "PathText",
    "Text",
    "Timestamp",
    "to_utc",
]

MAX_ROW_ID = 2**63 - 1
# An id in a URL's path, which a query takes to PostgreSQL: no NUL, as :data:`Text`.
PathText = Annotated[str, Path(pattern=NO_NUL)]
