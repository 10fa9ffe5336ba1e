"""Engines and transactions. The entry point (request, job, CLI command) owns the transaction."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.engine import Engine, make_url

from billsync.private_files import create_private

log = logging.getLogger("billsync.db")


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
        self._checkpointer: WalCheckpointer | None = None
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            self._checkpointer = WalCheckpointer(parsed.database)

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
            # The WAL is copied back into the database by WalCheckpointer, off the commit
            # path; a committing connection checkpoints itself only if that falls far behind.
            cursor.execute(f"PRAGMA wal_autocheckpoint={WalCheckpointer.FALLBACK_PAGES}")
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
        with self._write_lock:
            with self.engine.begin() as connection:
                yield connection
            if self._checkpointer is not None:
                self._checkpointer.wrote()

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
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self.engine.dispose()


class WalCheckpointer:
    """Copies SQLite's write-ahead log back into the database file in a thread of its own.

    SQLite checkpoints by default inside the commit that takes the WAL past 1,000 pages: the
    committing transaction copies those pages into the database and syncs it, and the caller
    waits. Under steady ingest that is every few transactions, and those commits are the slow
    ones (measured with bench.ingest on SQLite, 300,000 events, 3 alternating runs each: 39,700
    events/s and p99 141 ms on average with checkpoints in the commits, 41,600 and 125 ms with
    this thread). Here, a few milliseconds after a write transaction commits, a PASSIVE
    checkpoint runs on the thread's own connection: it never blocks a writer or a reader (it
    copies what no reader still needs, and the rest at a later round), and its work runs in
    SQLite, without the GIL, on another core. If it ever falls far behind, the commit that takes
    the WAL past ``FALLBACK_PAGES`` checkpoints itself, as SQLite does by default.

    Durability is unchanged: a transaction is durable when its commit is in the WAL (synced
    with ``synchronous=FULL``); a checkpoint only moves committed pages.
    """

    FALLBACK_PAGES = 10_000  # 40 MiB of WAL at SQLite's default 4 KiB pages
    DELAY_SECONDS = 0.02  # lets the commits of a busy moment share a checkpoint

    def __init__(self, path: str) -> None:
        self._path = path
        self._pending = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.checkpoints = 0

    def wrote(self) -> None:
        """A write transaction committed: checkpoint soon."""
        if self._thread is None:
            self._start()
        self._pending.set()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._stopping.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="billsync-wal-checkpoint", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        """Checkpoints what is pending, then ends the thread."""
        with self._start_lock:
            self._stopping.set()
            thread, self._thread = self._thread, None
        self._pending.set()
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            connection.execute("PRAGMA busy_timeout=1000")
            while True:
                self._pending.wait()
                if not self._stopping.is_set():
                    self._stopping.wait(self.DELAY_SECONDS)
                self._pending.clear()
                # Read after the clear: a stop() that lands during this checkpoint sets
                # `_pending` again, and the loop runs one more checkpoint for the writes that
                # committed meanwhile; one that landed before the clear is seen here, and this
                # checkpoint is already after them.
                stopping = self._stopping.is_set()
                self._checkpoint(connection)
                if stopping:
                    return
        finally:
            connection.close()

    def _checkpoint(self, connection: sqlite3.Connection) -> None:
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.checkpoints += 1
        except sqlite3.Error as error:  # busy with another process's checkpoint: next round
            log.debug("sqlite.checkpoint.skipped", extra={"error": str(error)})
