"""Auth's use cases: tenants, users, tokens and namespace bindings."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aijobs_services.auth.models import Binding, Tenant, Token, User
from aijobs_services.kit.db import utcnow
from aijobs_services.kit.problems import Conflict, Forbidden, NotFound, Unauthenticated, Unprocessable

TOKEN_PREFIX = "aij"  # noqa: S105 - a public prefix, not a secret
# OWASP's minimum Argon2id setting: slow enough for a leaked table, ~10 ms per verification.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


class InvalidToken(Unauthenticated):
    slug, title = "invalid-token", "Invalid token"


class TenantNotAllowed(Forbidden):
    slug, title = "tenant-not-allowed", "This namespace may not charge that account"


class UnknownTenant(NotFound):
    slug, title = "unknown-tenant", "Unknown tenant"


class UnknownUser(NotFound):
    slug, title = "unknown-user", "Unknown user"


class UnknownToken(NotFound):
    slug, title = "unknown-token", "Unknown token"


class TenantExists(Conflict):
    slug, title = "tenant-exists", "Tenant exists"


class UserExists(Conflict):
    slug, title = "user-exists", "User exists"


class NamespaceBoundElsewhere(Conflict):
    """One namespace charges one account at most; ``heldBy`` names the account that holds it."""

    slug, title = "namespace-bound-elsewhere", "The namespace is bound to another account"


@dataclass(frozen=True)
class Principal:
    kind: str  # user | service
    subject: str
    tenant: str | None
    token_id: str


def create_tenant(session: Session, tenant_id: str) -> Tenant:
    if session.get(Tenant, tenant_id) is not None:
        raise TenantExists(f"tenant {tenant_id!r} already exists")
    tenant = Tenant(id=tenant_id, created_at=utcnow())
    session.add(tenant)
    session.flush()
    return tenant


def tenant(session: Session, tenant_id: str) -> Tenant:
    found = session.get(Tenant, tenant_id)
    if found is None:
        raise UnknownTenant(f"no tenant {tenant_id!r}")
    return found


def tenants(session: Session) -> list[str]:
    return list(session.scalars(sa.select(Tenant.id).order_by(Tenant.id)))


def user(session: Session, user_id: str) -> User:
    found = session.get(User, user_id)
    if found is None:
        raise UnknownUser(f"no user {user_id!r}")
    return found


def create_user(session: Session, user_id: str, tenant_id: str) -> User:
    tenant(session, tenant_id)
    if session.get(User, user_id) is not None:
        raise UserExists(f"user {user_id!r} already exists")
    user = User(id=user_id, tenant_id=tenant_id, created_at=utcnow())
    session.add(user)
    session.flush()
    return user


def issue_token(
    session: Session, *, user_id: str | None = None, service: str | None = None
) -> tuple[Token, str]:
    """A new token for a user or a service identity; the plaintext is returned once only."""
    if (user_id is None) == (service is None):
        raise Unprocessable("give exactly one of user or service", slug="token-subject")
    tenant_id = None
    if user_id is not None:
        tenant_id = user(session, user_id).tenant_id
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    token = Token(
        id=token_id,
        kind="user" if user_id else "service",
        subject=user_id or str(service),
        tenant_id=tenant_id,
        secret_hash=_hasher.hash(secret),
        created_at=utcnow(),
    )
    session.add(token)
    session.flush()
    return token, f"{TOKEN_PREFIX}_{token_id}_{secret}"


def revoke_token(session: Session, token_id: str) -> Token:
    token = session.get(Token, token_id)
    if token is None:
        raise UnknownToken(f"no token {token_id!r}")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    session.flush()
    return token


def verify(session: Session, presented: str) -> Principal:
    invalid = InvalidToken("the token is not valid (unknown, malformed or revoked)")
    prefix, _, rest = presented.partition("_")
    token_id, _, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or not token_id or not secret:
        raise invalid
    token = session.get(Token, token_id)
    if token is None or token.revoked_at is not None:
        raise invalid
    try:
        _hasher.verify(token.secret_hash, secret)
    except VerificationError as exc:
        raise invalid from exc
    return Principal(token.kind, token.subject, token.tenant_id, token.id)


def _holder(session: Session, namespace: str) -> Binding | None:
    return session.scalars(sa.select(Binding).where(Binding.namespace == namespace)).one_or_none()


def _held(holder: Binding, account_id: str) -> Binding:
    """``holder`` if it is ``account_id``'s binding (binding again changes nothing), else refused."""
    if holder.account_id == account_id:
        return holder
    namespace, other = holder.namespace, holder.account_id
    raise NamespaceBoundElsewhere(
        f"namespace {namespace!r} is bound to account {other!r}, and a namespace charges one account "
        f"at most; unbind it from {other!r} first (DELETE /v1/bindings/{namespace}/{other})",
        namespace=namespace,
        account=account_id,
        heldBy=other,
    )


def bind(session: Session, namespace: str, account_id: str) -> Binding:
    """Let ``namespace`` charge ``account_id``, unless another account holds it (409)."""
    tenant(session, account_id)
    holder = _holder(session, namespace)
    if holder is not None:
        return _held(holder, account_id)
    binding = Binding(namespace=namespace, account_id=account_id, created_at=utcnow())
    try:
        with session.begin_nested():  # the caller's transaction stays usable if the insert loses
            session.add(binding)
            session.flush()
    except IntegrityError:
        # A concurrent bind of this namespace committed between our read and our insert: the
        # unique index refused ours (on PostgreSQL after waiting for that transaction's outcome).
        holder = _holder(session, namespace)
        if holder is None:
            raise
        return _held(holder, account_id)
    return binding


def unbind(session: Session, namespace: str, account_id: str) -> None:
    session.execute(
        sa.delete(Binding).where(Binding.namespace == namespace, Binding.account_id == account_id)
    )


def bindings(session: Session, *, account: str | None = None, namespace: str | None = None) -> list[Binding]:
    """Every binding, or those of one account or one namespace, in a stable order."""
    stmt = sa.select(Binding).order_by(Binding.namespace, Binding.account_id)
    if account:
        stmt = stmt.where(Binding.account_id == account)
    if namespace:
        stmt = stmt.where(Binding.namespace == namespace)
    return list(session.scalars(stmt))


def authorize_charge(session: Session, namespace: str, account_id: str) -> Binding:
    binding = session.get(Binding, (namespace, account_id))
    if binding is None:
        raise TenantNotAllowed(
            f"namespace {namespace!r} is not bound to account {account_id!r}; an admin can bind it "
            f"(POST /v1/bindings)",
            namespace=namespace,
            account=account_id,
        )
    return binding
