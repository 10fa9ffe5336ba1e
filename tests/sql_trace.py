"""The SQL a piece of code runs, as the database sees it: for tests of statement counts and of
the order of locks and writes within each transaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from billsync.db.database import Database


@contextmanager
def statements_by_transaction(database: Database) -> Iterator[list[list[str]]]:
    """The statements run meanwhile (whitespace folded), grouped by the transaction they ran
    in (the first group: those before any transaction began)."""
    transactions: list[list[str]] = [[]]

    def statement(*args: Any) -> None:
        transactions[-1].append(" ".join(str(args[2]).split()))

    def begin(*_: Any) -> None:
        transactions.append([])

    engine = database.engine
    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "begin", begin)
    try:
        yield transactions
    finally:
        event.remove(engine, "before_cursor_execute", statement)
        event.remove(engine, "begin", begin)


def assert_lock_before_writes(transactions: list[list[str]], *tables: str) -> int:
    """In every transaction that takes an account's ledger lock and writes one of ``tables``,
    the lock comes first (the order ingest keeps; the reverse deadlocks with it on
    PostgreSQL). Returns how many transactions were checked."""
    checked = 0
    for statements in transactions:
        locks = [i for i, s in enumerate(statements) if "pg_advisory_xact_lock" in s]
        writes = [
            i for i, s in enumerate(statements)
            if s.startswith(tuple(f"UPDATE {table}" for table in tables))
        ]  # fmt: skip
        if locks and writes:
            checked += 1
            assert locks[0] < writes[0], statements
    return checked
