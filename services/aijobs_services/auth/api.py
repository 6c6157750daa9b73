"""Auth's HTTP API."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import Field, model_validator
from sqlalchemy.orm import Session

from aijobs.api.rules import ACCOUNT_NAME
from aijobs_services.auth import directory
from aijobs_services.auth.models import AdminActions, Binding, Tenant, Token, User
from aijobs_services.kit.admin_audit import record
from aijobs_services.kit.app import CamelModel, IdemStoreDep, SessionDep
from aijobs_services.kit.callers import Caller, allow
from aijobs_services.kit.idempotency import IdempotentRequestDep
from aijobs_services.kit.problems import NotFound

NAME = ACCOUNT_NAME
Admin = Annotated[Caller, Depends(allow("admin"))]
# Tenants and bindings are also what the operator makes CreditAccount objects into (who may create
# those is the cluster's RBAC: the chart's aijobs-admin role).
Provisioner = Annotated[Caller, Depends(allow("admin", "operator"))]
Verifier = Annotated[Caller, Depends(allow("main-api", "operator", "admin"))]
Reader = Annotated[Caller, Depends(allow("operator", "admin", "main-api"))]


class TenantCreate(CamelModel):
    id: str = Field(min_length=2, max_length=63, pattern=NAME)


class UserCreate(CamelModel):
    id: str = Field(min_length=2, max_length=63, pattern=NAME)
    tenant: str = Field(min_length=2, max_length=63, pattern=NAME)


class TokenCreate(CamelModel):
    user: str | None = Field(default=None, min_length=2, max_length=63, pattern=NAME)
    service: str | None = Field(default=None, min_length=2, max_length=63, pattern=NAME)

    @model_validator(mode="after")
    def _one_subject(self) -> TokenCreate:
        if (self.user is None) == (self.service is None):
            raise ValueError("give exactly one of user or service")
        return self


class TokenVerify(CamelModel):
    token: str = Field(min_length=1, max_length=200)


class BindingBody(CamelModel):
    namespace: str = Field(min_length=1, max_length=63, pattern=NAME)
    account: str = Field(min_length=2, max_length=63, pattern=NAME)


def _token(t: Token) -> dict[str, Any]:
    return {
        "id": t.id,
        "kind": t.kind,
        "subject": t.subject,
        "tenant": t.tenant_id,
        "createdAt": t.created_at.isoformat(),
        "revoked": t.revoked_at is not None,
    }


def _binding(b: Binding) -> dict[str, Any]:
    return {"namespace": b.namespace, "account": b.account_id}


router = APIRouter(prefix="/v1", tags=["auth"])


@router.post("/tenants", status_code=201, summary="Create a tenant (its id is its credit account)")
def create_tenant(
    body: TenantCreate, who: Provisioner, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    def act(s: Session) -> tuple[int, Any]:
        tenant = directory.create_tenant(s, body.id)
        record(s, AdminActions, who.name, "tenant.create", tenant.id, key=idem.key)
        return 201, {"id": tenant.id}

    return store.run(session, idem, act)


@router.get("/tenants", summary="Every tenant")
def list_tenants(_: Reader, session: SessionDep) -> dict[str, Any]:
    with session.begin():
        return {"items": [{"id": t} for t in session.scalars(sa.select(Tenant.id).order_by(Tenant.id))]}


@router.get("/tenants/{tenant_id}", summary="One tenant")
def get_tenant(tenant_id: str, _: Reader, session: SessionDep) -> dict[str, Any]:
    with session.begin():
        if session.get(Tenant, tenant_id) is None:
            raise NotFound(f"no tenant {tenant_id!r}", slug="unknown-tenant", title="Unknown tenant")
        return {"id": tenant_id}


@router.post("/users", status_code=201, summary="Create a user in a tenant")
def create_user(
    body: UserCreate, who: Admin, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    def act(s: Session) -> tuple[int, Any]:
        user = directory.create_user(s, body.id, body.tenant)
        record(s, AdminActions, who.name, "user.create", user.id, tenant=user.tenant_id, key=idem.key)
        return 201, {"id": user.id, "tenant": user.tenant_id}

    return store.run(session, idem, act)


@router.post("/tokens", status_code=201, summary="Issue an API token (shown once)")
def issue_token(
    body: TokenCreate, who: Admin, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    def act(s: Session) -> tuple[int, Any]:
        token, plaintext = directory.issue_token(s, user_id=body.user, service=body.service)
        subject = body.user or body.service or ""
        record(s, AdminActions, who.name, "token.issue", token.id, subject=subject, key=idem.key)
        return 201, {**_token(token), "token": plaintext}

    def redact(stored: dict[str, Any]) -> dict[str, Any]:
        return {
            **stored,
            "token": None,
            "note": "the token is shown once; revoke it and issue a new one if lost",
        }

    return store.run(session, idem, act, redact=redact)


@router.post("/tokens/{token_id}/revoke", summary="Revoke a token (idempotent)")
def revoke_token(
    token_id: str, who: Admin, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    def act(s: Session) -> tuple[int, Any]:
        token = directory.revoke_token(s, token_id)
        record(s, AdminActions, who.name, "token.revoke", token_id, key=idem.key)
        return 200, _token(token)

    return store.run(session, idem, act)


@router.post("/tokens/verify", summary="Who presents this token? (401 if nobody valid)")
def verify_token(body: TokenVerify, _: Verifier, session: SessionDep) -> dict[str, Any]:
    with session.begin():
        principal = directory.verify(session, body.token)
    return {
        "kind": principal.kind,
        "subject": principal.subject,
        "tenant": principal.tenant,
        "tokenId": principal.token_id,
    }


@router.post(
    "/bindings",
    status_code=201,
    summary="Let a namespace charge an account (409 namespace-bound-elsewhere if another holds it)",
)
def bind(
    body: BindingBody, who: Provisioner, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    def act(s: Session) -> tuple[int, Any]:
        binding = directory.bind(s, body.namespace, body.account)
        record(s, AdminActions, who.name, "binding.create", f"{body.namespace}/{body.account}", key=idem.key)
        return 201, _binding(binding)

    return store.run(session, idem, act)


@router.delete("/bindings/{namespace}/{account}", summary="Stop a namespace charging an account")
def unbind(
    namespace: str,
    account: str,
    who: Provisioner,
    idem: IdempotentRequestDep,
    store: IdemStoreDep,
    session: SessionDep,
) -> JSONResponse:
    def act(s: Session) -> tuple[int, Any]:
        directory.unbind(s, namespace, account)
        record(s, AdminActions, who.name, "binding.delete", f"{namespace}/{account}", key=idem.key)
        return 200, {"namespace": namespace, "account": account, "bound": False}

    return store.run(session, idem, act)


@router.get("/bindings", summary="Bindings, optionally of one account or namespace")
def list_bindings(
    _: Reader, session: SessionDep, account: str | None = None, namespace: str | None = None
) -> dict[str, Any]:
    stmt = sa.select(Binding).order_by(Binding.namespace, Binding.account_id)
    if account:
        stmt = stmt.where(Binding.account_id == account)
    if namespace:
        stmt = stmt.where(Binding.namespace == namespace)
    with session.begin():
        return {"items": [_binding(b) for b in session.scalars(stmt)]}


@router.post("/authorize-charge", summary="May this namespace charge this account? (403 if not)")
def authorize_charge(body: BindingBody, _: Reader, session: SessionDep) -> dict[str, Any]:
    with session.begin():
        directory.authorize_charge(session, body.namespace, body.account)
    return {"namespace": body.namespace, "account": body.account, "allowed": True}


@router.get("/users/{user_id}", summary="One user")
def get_user(user_id: str, _: Reader, session: SessionDep) -> dict[str, Any]:
    with session.begin():
        user = session.get(User, user_id)
        if user is None:
            raise NotFound(f"no user {user_id!r}", slug="unknown-user", title="Unknown user")
        return {"id": user.id, "tenant": user.tenant_id}
