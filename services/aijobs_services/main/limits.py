"""How fast an account may submit jobs: a token bucket per account (pure, clock passed in).

Main API refuses a submission over the rate, or over the account's jobs in flight, with 429 and
a Retry-After, before anything is stored. The bucket lives in the replica's memory: with N
replicas an account may submit up to N times the rate (the in-flight limit, read from the API
server, holds across replicas).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["SubmissionLimiter"]


@dataclass
class SubmissionLimiter:
    per_minute: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # account -> (tokens, at)

    def take(self, account: str) -> float | None:
        """Take one submission for ``account``: None if allowed, else the seconds to wait."""
        now = self.clock()
        tokens, at = self._buckets.get(account, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.per_minute / 60.0)
        if tokens >= 1.0:
            self._buckets[account] = (tokens - 1.0, now)
            return None
        self._buckets[account] = (tokens, now)
        return (1.0 - tokens) * 60.0 / self.per_minute
