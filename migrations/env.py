"""Alembic environment: runs migrations against the URL given by the observer's config."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool

from observer.config import Settings
from observer.db.schema import Base

config = context.config
target_metadata = Base.metadata

url: str | None = config.attributes.get("database_url")
if not url:
    # Run as the plain `alembic` command: read the same settings the daemon reads.
    from dotenv import dotenv_values

    env = {k: v for k, v in dotenv_values().items() if v is not None}
    url = Settings.from_mapping({**env, **os.environ}).database_url


def run_migrations_offline() -> None:
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = create_engine(url, poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # SQLite cannot ALTER most things; batch mode copies the table instead.
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
