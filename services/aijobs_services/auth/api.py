"""Auth's HTTP API: the routes, their callers and what each answers; the use cases are in
:mod:`aijobs_services.auth.directory`, the bodies in :mod:`aijobs.api.auth`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from aijobs.api.auth import (
    Binding,
    BindingRequest,
    Bindings,
    ChargeAuthorized,
    IssuedToken,
    Principal,
    Tenant,
    TenantCreate,
    Tenants,
    TokenCreate,
    TokenInfo,
    TokenVerify,
    Unbound,
    User,
    UserCreate,
)
from aijobs_services.auth import directory
from aijobs_services.auth.directory import (
    InvalidToken,
    NamespaceBoundElsewhere,
    TenantExists,
    TenantNotAllowed,
    UnknownTenant,
    UnknownToken,
    UnknownUser,
    UserExists,
)
from aijobs_services.auth.models import AdminActions
from aijobs_services.auth.models import Binding as BindingRow
from aijobs_services.auth.models import Token as TokenRow
from aijobs_services.kit.admin_audit import record
from aijobs_services.kit.app import IdemStoreDep, SessionDep
from aijobs_services.kit.callers import Caller, allow
from aijobs_services.kit.fields import PathText
from aijobs_services.kit.idempotency import IdempotentRequestDep
from aijobs_services.kit.problems import documented

Admin = Annotated[Caller, Depends(allow("admin"))]
# Tenants and bindings are also what the operator makes CreditAccount objects into (who may create
# those is the cluster's RBAC: the chart's aijobs-admin role).
Provisioner = Annotated[Caller, Depends(allow("admin", "operator"))]
Verifier = Annotated[Caller, Depends(allow("main-api", "operator", "admin"))]
Reader = Annotated[Caller, Depends(allow("operator", "admin", "main-api"))]


def _token(t: TokenRow) -> TokenInfo:
    return TokenInfo(
        id=t.id,
        kind="user" if t.kind == "user" else "service",
        subject=t.subject,
        tenant=t.tenant_id,
        created_at=t.created_at,
        revoked=t.revoked_at is not None,
    )


def _binding(b: BindingRow) -> Binding:
    return Binding(namespace=b.namespace, account=b.account_id)


router = APIRouter(prefix="/v1", tags=["auth"])


@router.post(
    "/tenants",
    status_code=201,
    summary="Create a tenant (its id is its credit account)",
    response_model=Tenant,
    responses=documented(TenantExists),
)
def create_tenant(
    body: TenantCreate, who: Provisioner, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    def act(s: Session) -> tuple[int, Tenant]:
        tenant = directory.create_tenant(s, body.id)
        record(s, AdminActions, who.name, "tenant.create", tenant.id, key=idem.key)
        return 201, Tenant(id=tenant.id)

    return store.run(session, idem, act)


@router.get("/tenants", summary="Every tenant", response_model=Tenants)
def list_tenants(_: Reader, session: SessionDep) -> Tenants:
    with session.begin():
        return Tenants(items=[Tenant(id=t) for t in directory.tenants(session)])


@router.get(
    "/tenants/{tenant_id}", summary="One tenant", response_model=Tenant, responses=documented(UnknownTenant)
)
def get_tenant(tenant_id: PathText, _: Reader, session: SessionDep) -> Tenant:
    with session.begin():
        return Tenant(id=directory.tenant(session, tenant_id).id)


@router.post(
    "/users",
    status_code=201,
    summary="Create a user in a tenant",
    response_model=User,
    responses=documented(UnknownTenant, UserExists),
)
def create_user(
    body: UserCreate, who: Admin, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    def act(s: Session) -> tuple[int, User]:
        user = directory.create_user(s, body.id, body.tenant)
        record(s, AdminActions, who.name, "user.create", user.id, tenant=user.tenant_id, key=idem.key)
        return 201, User(id=user.id, tenant=user.tenant_id)

    return store.run(session, idem, act)


@router.post(
    "/tokens",
    status_code=201,
    summary="Issue an API token (shown once)",
    response_model=IssuedToken,
    responses=documented(UnknownUser),
)
def issue_token(
    body: TokenCreate, who: Admin, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    def act(s: Session) -> tuple[int, IssuedToken]:
        token, plaintext = directory.issue_token(s, user_id=body.user, service=body.service)
        subject = body.user or body.service or ""
        record(s, AdminActions, who.name, "token.issue", token.id, subject=subject, key=idem.key)
        return 201, IssuedToken(**_token(token).model_dump(), token=plaintext)

    def redact(stored: dict[str, Any]) -> dict[str, Any]:
        return {
            **stored,
            "token": None,
            "note": "the token is shown once; revoke it and issue a new one if lost",
        }

    return store.run(session, idem, act, redact=redact)


@router.post(
    "/tokens/{token_id}/revoke",
    summary="Revoke a token (idempotent)",
    response_model=TokenInfo,
    responses=documented(UnknownToken),
)
def revoke_token(
    token_id: PathText, who: Admin, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    def act(s: Session) -> tuple[int, TokenInfo]:
        token = directory.revoke_token(s, token_id)
        record(s, AdminActions, who.name, "token.revoke", token_id, key=idem.key)
        return 200, _token(token)

    return store.run(session, idem, act)


@router.post(
    "/tokens/verify",
    summary="Who presents this token? (401 if nobody valid)",
    response_model=Principal,
    responses=documented(InvalidToken),
)
def verify_token(body: TokenVerify, _: Verifier, session: SessionDep) -> Principal:
    with session.begin():
        principal = directory.verify(session, body.token)
    return Principal(
        kind="user" if principal.kind == "user" else "service",
        subject=principal.subject,
        tenant=principal.tenant,
        token_id=principal.token_id,
    )


@router.post(
    "/bindings",
    status_code=201,
    summary="Let a namespace charge an account (409 namespace-bound-elsewhere if another holds it)",
    response_model=Binding,
    responses=documented(UnknownTenant, NamespaceBoundElsewhere),
)
def bind(
    body: BindingRequest,
    who: Provisioner,
    idem: IdempotentRequestDep,
    store: IdemStoreDep,
    session: SessionDep,
) -> JSONResponse:
    def act(s: Session) -> tuple[int, Binding]:
        binding = directory.bind(s, body.namespace, body.account)
        record(s, AdminActions, who.name, "binding.create", f"{body.namespace}/{body.account}", key=idem.key)
        return 201, _binding(binding)

    return store.run(session, idem, act)


@router.delete(
    "/bindings/{namespace}/{account}",
    summary="Stop a namespace charging an account",
    response_model=Unbound,
)
def unbind(
    namespace: str,
    account: str,
    who: Provisioner,
    idem: IdempotentRequestDep,
    store: IdemStoreDep,
    session: SessionDep,
) -> JSONResponse:
    def act(s: Session) -> tuple[int, Unbound]:
        directory.unbind(s, namespace, account)
        record(s, AdminActions, who.name, "binding.delete", f"{namespace}/{account}", key=idem.key)
        return 200, Unbound(namespace=namespace, account=account)

    return store.run(session, idem, act)


@router.get("/bindings", summary="Bindings, optionally of one account or namespace", response_model=Bindings)
def list_bindings(
    _: Reader, session: SessionDep, account: str | None = None, namespace: str | None = None
) -> Bindings:
    with session.begin():
        found = directory.bindings(session, account=account, namespace=namespace)
        return Bindings(items=[_binding(b) for b in found])


@router.post(
    "/authorize-charge",
    summary="May this namespace charge this account? (403 if not)",
    response_model=ChargeAuthorized,
    responses=documented(TenantNotAllowed),
)
def authorize_charge(body: BindingRequest, _: Reader, session: SessionDep) -> ChargeAuthorized:
    with session.begin():
        directory.authorize_charge(session, body.namespace, body.account)
    return ChargeAuthorized(namespace=body.namespace, account=body.account)


@router.get("/users/{user_id}", summary="One user", response_model=User, responses=documented(UnknownUser))
def get_user(user_id: PathText, _: Reader, session: SessionDep) -> User:
    with session.begin():
        user = directory.user(session, user_id)
        return User(id=user.id, tenant=user.tenant_id)
