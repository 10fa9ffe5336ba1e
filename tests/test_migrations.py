"""The schema comes from migrations, and the migrations agree with the models, on both stores."""

from __future__ import annotations

from billsync.db import migrate
from billsync.db.database import Database


def test_migrated_schema_matches_the_models(database: Database) -> None:
    assert migrate.current_revision(database) == migrate.head_revision(database)
    assert migrate.schema_drift(database) == []


def test_downgrade_to_base_and_upgrade_again(database: Database) -> None:
    migrate.downgrade(database, "base")
    assert migrate.current_revision(database) is None
    migrate.upgrade(database)
    assert migrate.current_revision(database) == migrate.head_revision(database)
    assert migrate.schema_drift(database) == []
