"""The SQLite database's write-ahead log is checkpointed by a thread of its own, not by the
commits: a committing writer never copies the WAL into the database file itself (unless the
thread falls far behind), and what it committed reaches the database file all the same."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import text

from billsync.db.database import Database, WalCheckpointer


def _write_pages(database: Database, rows: int) -> None:
    """About one 4 KiB page per row, in write transactions."""
    with database.transaction() as connection:
        connection.execute(text("CREATE TABLE IF NOT EXISTS blobs (id INTEGER PRIMARY KEY, b)"))
    for start in range(0, rows, 100):
        with database.transaction() as connection:
            connection.execute(
                text(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :k) "
                    "INSERT INTO blobs (b) SELECT randomblob(4000) FROM n"
                ),
                {"k": min(100, rows - start)},
            )


def test_commits_leave_the_checkpoint_to_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    database = Database(f"sqlite:///{path}")
    with database.engine.connect() as connection:
        setting = connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()
    assert setting == WalCheckpointer.FALLBACK_PAGES
    checkpointer = database._checkpointer
    assert checkpointer is not None
    checkpointer.stop()  # no thread from here on: only the commits could checkpoint

    _write_pages(database, 2_000)  # twice SQLite's default auto-checkpoint of 1,000 pages

    # Nothing was copied into the database file: every page is still in the WAL only.
    assert path.stat().st_size < 100 * 4096
    assert Path(f"{path}-wal").stat().st_size > 2_000 * 4096
    database.dispose()


def test_the_thread_copies_committed_pages_into_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    database = Database(f"sqlite:///{path}")
    _write_pages(database, 1_200)
    checkpointer = database._checkpointer
    assert checkpointer is not None
    checkpointer.stop()  # runs the pending checkpoint, then ends the thread
    assert checkpointer.checkpoints >= 1
    assert path.stat().st_size > 1_200 * 4096
    # Everything in the WAL is in the database file now: nothing is left to copy.
    raw = sqlite3.connect(path)
    busy, in_log, copied = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    raw.close()
    assert (busy, in_log) == (0, copied)
    with database.read() as connection:
        assert connection.execute(text("SELECT count(*) FROM blobs")).scalar_one() == 1_200
    database.dispose()
