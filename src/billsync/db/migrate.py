"""Schema migrations, run from code: ``billsync db upgrade`` and the test fixtures call these.

Alembic says "Context impl SQLiteImpl." and "Running upgrade …" at INFO on every call: a
command's output would start with library lines (JSON ones when piped). Its logger is kept at
WARNING here unless billsync logs at DEBUG; ``billsync db upgrade`` reports the revisions it
applied itself (:func:`revisions_between`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.environment import IncludeNameFn, NameFilterParentNames, NameFilterType
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from billsync.db.database import Database
from billsync.db.models import Base

MIGRATIONS = Path(__file__).parent / "migrations"


@contextmanager
def _alembic_quiet() -> Iterator[None]:
    alembic_log = logging.getLogger("alembic")
    before = alembic_log.level
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        alembic_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        alembic_log.setLevel(before)


def _config(database: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database.url.replace("%", "%%"))
    return config


def upgrade(database: Database, revision: str = "head") -> None:
    with _alembic_quiet(), database.engine.begin() as connection:
        config = _config(database)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(database: Database, revision: str) -> None:
    with _alembic_quiet(), database.engine.begin() as connection:
        config = _config(database)
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def current_revision(database: Database) -> str | None:
    with _alembic_quiet(), database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(database: Database) -> str | None:
    return ScriptDirectory.from_config(_config(database)).get_current_head()


def revisions_between(database: Database, older: str | None, newer: str | None) -> list[str]:
    """``revision  description`` of each migration after ``older`` up to ``newer``, oldest
    first (what an upgrade from ``older`` to ``newer`` applied)."""
    if newer is None or older == newer:
        return []
    script = ScriptDirectory.from_config(_config(database))
    applied = script.iterate_revisions(newer, older or "base")
    return [f"{each.revision}  {each.doc}" for each in reversed(list(applied))]


def schema_drift(database: Database) -> list[object]:
    """Differences between the models and the migrated database: empty when they agree."""
    with _alembic_quiet(), database.engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={"compare_type": True, "include_name": partitions_excluded(connection)},
        )
        return list(compare_metadata(context, Base.metadata))


def partitions_excluded(connection: Connection) -> IncludeNameFn:
    """An ``include_name`` hook for comparisons: the partitions of a partitioned table (monthly
    ``usage_events_YYYY_MM`` on PostgreSQL) are storage, created at run time, not models."""
    partitions: set[str] = set()
    if connection.dialect.name == "postgresql":
        partitions = set(
            connection.execute(
                text(
                    "SELECT c.relname FROM pg_class c "
                    "WHERE c.relispartition AND c.relnamespace = "
                    "CAST(current_schema() AS regnamespace)"
                )
            ).scalars()
        )

    def include_name(
        name: str | None, type_: NameFilterType, _parents: NameFilterParentNames
    ) -> bool:
        return not (type_ == "table" and name in partitions)

    return include_name
