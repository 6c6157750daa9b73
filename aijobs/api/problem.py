"""The error body every service answers with: RFC 9457 problem details.

Clients branch on ``type`` (a stable URI ending in the kind's slug); ``detail`` says what happened
this time. Services add members of their own (``errors`` for a validation failure, ``heldBy`` for
a namespace bound elsewhere, ``taskId`` for a job that has a task): they are kept, not refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "PROBLEM_BASE",
    "PROBLEM_JSON",
    "ProblemDetails",
    "ProblemKind",
    "by_slug",
    "problem_type",
    "slug_of",
]

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://aijobs.io/problems/"


def problem_type(slug: str) -> str:
    return PROBLEM_BASE + slug


def slug_of(type_: str) -> str:
    return type_.rsplit("/", 1)[-1]


class ProblemDetails(BaseModel):
    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field(description="https://aijobs.io/problems/<slug>: what kind of error, to branch on")
    title: str = Field(description="The kind's fixed, human-readable summary")
    status: int = Field(description="The HTTP status, repeated")
    detail: str = Field(description="What happened this time")
    instance: str | None = Field(default=None, description="The path that answered")


@dataclass(frozen=True)
class ProblemKind:
    """A refusal a service answers with, as ``application/problem+json``: clients branch on the
    slug. A service's domain errors name their slug; its table of kinds gives status and title."""

    status: int
    slug: str
    title: str


def by_slug(*kinds: ProblemKind) -> dict[str, ProblemKind]:
    return {k.slug: k for k in kinds}
