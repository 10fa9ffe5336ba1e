"""The schema comes from migrations, and the migrations agree with the models, on both stores."""

from __future__ import annotations

from sqlalchemy import inspect

from billsync.core.event_storage import shift_months
from billsync.db import migrate
from billsync.db.database import Database
from billsync.db.models import Base
from billsync.repositories import event_storage


def test_migrated_schema_matches_the_models(database: Database) -> None:
    assert migrate.current_revision(database) == migrate.head_revision(database)
    assert migrate.schema_drift(database) == []


def test_downgrade_to_base_and_upgrade_again(database: Database) -> None:
    migrate.downgrade(database, "base")
    assert migrate.current_revision(database) is None
    migrate.upgrade(database)
    assert migrate.current_revision(database) == migrate.head_revision(database)
    assert migrate.schema_drift(database) == []


def test_primary_keys_match_the_models(database: Database) -> None:
    """Alembic's comparison leaves primary keys out: usage_events' is (id, period_start) on both
    stores (PostgreSQL wants the partition key in it), the id alone in usage_event_ids."""
    with database.engine.connect() as connection:
        inspector = inspect(connection)
        for table in Base.metadata.sorted_tables:
            found = inspector.get_pk_constraint(table.name)["constrained_columns"]
            assert found == [column.name for column in table.primary_key.columns], table.name


def test_usage_events_is_partitioned_on_postgresql_only(database: Database) -> None:
    with database.engine.connect() as connection:
        partitioned = event_storage.is_partitioned(connection)
        partitions = event_storage.partitions(connection) if partitioned else []
    assert partitioned is not database.is_sqlite
    if partitioned:
        assert partitions[-1].is_default
        assert all(p.end == shift_months(p.start, 1) for p in partitions[:-1] if p.start)
