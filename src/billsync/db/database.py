"""Engines and transactions. The entry point (request, job, CLI command) owns the transaction."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.engine import Engine, make_url

from billsync.private_files import create_private


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


class Database:
    """A SQLAlchemy engine configured for the ledger: SQLite (WAL) or PostgreSQL.

    ``transaction()`` opens a write transaction (SQLite: ``BEGIN IMMEDIATE``, so two writers
    queue instead of failing half-way); ``read()`` a read-only one.
    """

    def __init__(
        self,
        url: str,
        *,
        sqlite_synchronous: str = "FULL",
        sqlite_cache_mib: int = 16,
        pool_size: int = 5,
    ) -> None:
        parsed = make_url(url)
        self.url = url
        self.dialect = parsed.get_backend_name()
        self.is_sqlite = self.dialect == "sqlite"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                # The ledger is the customers' usage: a new file is 0600 (SQLite gives its
                # -wal and -shm files the database file's permissions).
                create_private(Path(parsed.database))
            self.engine: Engine = create_engine(
                url,
                json_serializer=_json_dumps,
                json_deserializer=orjson.loads,
                connect_args={"check_same_thread": False, "timeout": 30},
                # The connection used last is handed out first: its page cache is warm, and
                # the others' caches stay small.
                pool_use_lifo=True,
            )
            self._configure_sqlite(sqlite_synchronous, sqlite_cache_mib)
        else:
            self.engine = create_engine(
                url,
                json_serializer=_json_dumps,
                json_deserializer=orjson.loads,
                pool_size=pool_size,
                pool_pre_ping=True,
                # Plan every statement with its actual parameters. Server-side prepared
                # statements get a generic plan, and for `id = ANY(<1,000 ids>)` on a table
                # whose statistics were taken when it was small that plan is a sequential
                # scan: seconds per batch instead of a millisecond.
                connect_args={"prepare_threshold": None},
            )
        # One writer at a time inside this process: SQLite serializes writers anyway, and
        # waiting on a lock is cheaper than spinning on SQLITE_BUSY.
        self._write_lock = threading.Lock() if self.is_sqlite else None

    def _configure_sqlite(self, synchronous: str, cache_mib: int) -> None:
        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own is deferred).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute(f"PRAGMA cache_size=-{int(cache_mib) * 1024}")  # in KiB when < 0
            cursor.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(connection: Connection) -> None:
            mode = connection.get_execution_options().get("billsync_begin", "IMMEDIATE")
            connection.exec_driver_sql(f"BEGIN {mode}")

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        if self._write_lock is None:
            with self.engine.begin() as connection:
                yield connection
            return
        with self._write_lock, self.engine.begin() as connection:
            yield connection

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction: a consistent snapshot; never writes."""
        options: dict[str, Any] = (
            {"billsync_begin": "DEFERRED"} if self.is_sqlite else {"postgresql_readonly": True}
        )
        with self.engine.connect() as connection:
            connection.execution_options(**options)
            with connection.begin():
                yield connection

    def ping(self) -> None:
        """A round trip to the database; raises the driver's error if it cannot be reached."""
        with self.read() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
