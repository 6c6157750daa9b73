"""Each service's schema comes from its own Alembic migrations, and they match its models."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa
from aijobs_services.auth.models import Binding, Tenant
from aijobs_services.kit.db import make_engine, migrate
from aijobs_services.registry import SERVICES, spec
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_migrations_build_exactly_the_tables_the_models_declare(pg_url: str, name: str) -> None:
    service = spec(name)
    migrate(pg_url, service.migrations)
    migrate(pg_url, service.migrations)  # a second start applies nothing and breaks nothing
    engine = make_engine(pg_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), service.idempotency_table.metadata)
        assert diff == []
        assert sa.inspect(conn).has_table("alembic_version")
    engine.dispose()


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_the_embedded_sqlite_default_migrates_too(tmp_path, name: str) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'svc.db'}"
    migrate(url, spec(name).migrations)
    engine = make_engine(url)
    assert "idempotency_keys" in sa.inspect(engine).get_table_names()
    engine.dispose()


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_a_namespace_bound_to_two_accounts_keeps_only_its_earliest_binding(
    pg_url: str, tmp_path: Path, dialect: str
) -> None:
    """Auth's 0003 makes one account per namespace a unique index; bindings made before it that
    break the rule are cleaned first, or the index could not be built and Auth would not start."""
    url = pg_url if dialect == "postgresql" else f"sqlite:///{tmp_path / 'auth.db'}"
    migrations = spec("auth").migrations
    migrate(url, migrations, "auth_0002")
    engine = make_engine(url)
    first, second, third = (dt.datetime(2025, 1, day, tzinfo=dt.UTC) for day in (1, 2, 3))
    with engine.begin() as conn:
        conn.execute(
            sa.insert(Tenant), [{"id": t, "created_at": first} for t in ("acme", "globex", "initech")]
        )
        conn.execute(
            sa.insert(Binding),
            [
                {"namespace": "team-a", "account_id": "globex", "created_at": second},
                {"namespace": "team-a", "account_id": "acme", "created_at": first},  # the earliest: kept
                {"namespace": "team-a", "account_id": "initech", "created_at": third},
                {"namespace": "team-b", "account_id": "globex", "created_at": third},  # alone: untouched
            ],
        )
    migrate(url, migrations)
    with engine.begin() as conn:
        rows = conn.execute(sa.select(Binding.namespace, Binding.account_id).order_by(Binding.namespace))
        assert [tuple(r) for r in rows] == [("team-a", "acme"), ("team-b", "globex")]
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.insert(Binding).values(namespace="team-a", account_id="globex", created_at=third))
    engine.dispose()
