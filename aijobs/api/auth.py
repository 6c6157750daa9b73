"""Auth's contract: tenants, their users, API tokens, and which namespace may charge which account.

A tenant's id is its credit account's; a namespace is bound to one account at most, and a job in
it may charge only that account (``authorize-charge``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from aijobs.api.base import Answer, Request
from aijobs.api.fields import Instant, Text
from aijobs.api.rules import ACCOUNT_NAME, NAMESPACE_NAME

__all__ = [
    "Binding",
    "BindingRequest",
    "Bindings",
    "ChargeAuthorized",
    "IssuedToken",
    "Principal",
    "Tenant",
    "TenantCreate",
    "Tenants",
    "TokenCreate",
    "TokenInfo",
    "TokenVerify",
    "Unbound",
    "User",
    "UserCreate",
]

SubjectKind = Literal["user", "service"]
Name = Annotated[str, Field(min_length=2, max_length=63, pattern=ACCOUNT_NAME)]


class TenantCreate(Request):
    id: str = Field(min_length=2, max_length=63, pattern=ACCOUNT_NAME)


class Tenant(Answer):
    id: str


class Tenants(Answer):
    items: list[Tenant]


class UserCreate(Request):
    id: str = Field(min_length=2, max_length=63, pattern=ACCOUNT_NAME)
    tenant: str = Field(min_length=2, max_length=63, pattern=ACCOUNT_NAME)


class User(Answer):
    id: str
    tenant: str


class TokenCreate(Request):
    """A token for a user (who submits jobs for its tenant) or for a service identity: exactly one
    of the two, which the schema says too (``oneOf``), so that a generated request is valid."""

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["user"]}, {"required": ["service"]}]}
    )

    # Absent, not null: a null subject is refused, as the schema (a string or nothing) says.
    user: Name | SkipJsonSchema[None] = None
    service: Name | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _one_subject(self) -> TokenCreate:
        if (self.user is None) == (self.service is None):
            raise ValueError("give exactly one of user or service")
        if any(getattr(self, name) is None for name in self.model_fields_set):
            raise ValueError("user or service is a name, not null")
        return self


class TokenInfo(Answer):
    """A token as it is listed: never its secret."""

    id: str
    kind: SubjectKind
    subject: str
    tenant: str | None
    created_at: Instant
    revoked: bool


class IssuedToken(TokenInfo):
    """A token just issued. ``token`` is the secret, shown once: a replay of the same request
    answers it as null, with a ``note`` saying so."""

    token: str | None
    note: str | None = Field(default=None, exclude_if=lambda note: note is None)


class TokenVerify(Request):
    token: Text = Field(min_length=1, max_length=200)


class Principal(Answer):
    """Who presents a token."""

    kind: SubjectKind
    subject: str
    tenant: str | None
    token_id: str


class BindingRequest(Request):
    namespace: str = Field(min_length=1, max_length=63, pattern=NAMESPACE_NAME)
    account: str = Field(min_length=2, max_length=63, pattern=ACCOUNT_NAME)


class Binding(Answer):
    """Namespace ``namespace`` may charge account ``account``."""

    namespace: str
    account: str


class Bindings(Answer):
    items: list[Binding]


class Unbound(Binding):
    bound: Literal[False] = False


class ChargeAuthorized(Binding):
    allowed: Literal[True] = True
