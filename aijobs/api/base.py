"""The base of every wire model: camelCase on the wire, snake_case in Python.

Requests refuse fields they do not know (a typo in a request is an error the caller should see);
answers ignore them, so a client keeps reading a newer service that added a field.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

__all__ = ["Answer", "Request"]


class Request(BaseModel):
    """A body a component sends: unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def wire(self) -> dict[str, object]:
        """The body as sent: camelCase, JSON types, in the fields' order, only the fields the
        sender set (a default is the service's to apply). The same values give the same bytes,
        which an Idempotency-Key's replay compares."""
        return self.model_dump(by_alias=True, mode="json", exclude_unset=True, exclude_none=True)


class Answer(BaseModel):
    """A body a service answers with: unknown fields ignored (the service may be newer)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")
