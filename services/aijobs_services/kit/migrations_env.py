"""The body of every service's Alembic ``env.py``: online migrations on the configured URL."""

from __future__ import annotations

from alembic import context

from aijobs_services.kit.db import make_engine


def run() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url must be set"
    engine = make_engine(url, poolclass=None) if url.startswith("sqlite") else make_engine(url, pool_size=1)
    with engine.connect() as connection:
        context.configure(connection=connection, render_as_batch=url.startswith("sqlite"))
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
