"""Each service's schema comes from its own Alembic migrations, and they match its models."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
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
