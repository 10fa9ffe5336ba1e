"""Schema migrations, run from code: ``billsync db upgrade`` and the test fixtures call these."""

from __future__ import annotations

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


def _config(database: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database.url.replace("%", "%%"))
    return config


def upgrade(database: Database, revision: str = "head") -> None:
    with database.engine.begin() as connection:
        config = _config(database)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(database: Database, revision: str) -> None:
    with database.engine.begin() as connection:
        config = _config(database)
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def current_revision(database: Database) -> str | None:
    with database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(database: Database) -> str | None:
    return ScriptDirectory.from_config(_config(database)).get_current_head()


def schema_drift(database: Database) -> list[object]:
    """Differences between the models and the migrated database: empty when they agree."""
    with database.engine.connect() as connection:
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
