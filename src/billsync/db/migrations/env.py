"""Alembic environment: run by :mod:`billsync.db.migrate`, never by hand-edited ini files."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from billsync.db.migrate import partitions_excluded
from billsync.db.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=partitions_excluded(connection),
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Never queue behind a long transaction holding locks while holding our own.
            context.execute("SET LOCAL lock_timeout = '10s'")
            context.execute("SET LOCAL statement_timeout = '15min'")
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through billsync.db.migrate (billsync db upgrade)")
_run(connection)
