"""What every CLI command needs: the wired application, errors printed for people."""

from __future__ import annotations

import time

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import DBAPIError, OperationalError

from billsync.bootstrap import Billsync, build
from billsync.clock import Clock
from billsync.config import Settings
from billsync.core.catalog import CatalogError
from billsync.db import migrate
from billsync.db.database import Database

console = Console()
# An error names files and ids a person copies: never broken across lines by the console.
errors = Console(stderr=True, soft_wrap=True)
DATABASE_WAIT_SECONDS = 60.0  # how long a starting process waits for its database


def fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def wait_for_database(database: Database, seconds: float) -> None:
    """A process starting while its database restarts (or the network blinks) waits for it,
    retrying with back-off, instead of dying; after ``seconds`` it fails with the error."""
    deadline = time.monotonic() + seconds
    delay = 0.1
    while True:
        try:
            database.ping()
            return
        except DBAPIError as error:
            if time.monotonic() + delay > deadline:
                raise fail(f"the database is unreachable: {error.orig or error}") from None
            if delay == 0.1:
                console.print(f"waiting for the database ({type(error.orig).__name__})")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def ensure_schema(database: Database, seconds: float = DATABASE_WAIT_SECONDS) -> None:
    """SQLite (one process owns it) is migrated on the spot; PostgreSQL, shared by many
    processes, only by an explicit ``billsync db upgrade``. The database may go away again
    between the wait and the check (a failover, a blink of the network): the whole step is
    retried within the same ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        wait_for_database(database, max(0.0, deadline - time.monotonic()))
        try:
            if database.is_sqlite:
                migrate.upgrade(database)
                return
            current, head = migrate.current_revision(database), migrate.head_revision(database)
            break
        except OperationalError as error:  # the connection was lost or refused, not a bad query
            if time.monotonic() > deadline:
                raise fail(f"the database is unreachable: {error.orig or error}") from None
            console.print(f"the database went away while starting ({type(error.orig).__name__})")
    if current != head:
        raise fail(f"the database schema is at {current}, not {head}: run `billsync db upgrade`")


def load_settings() -> Settings:
    """The settings from the environment, or a clear error naming each bad one."""
    try:
        return Settings()
    except ValidationError as error:
        problems = "; ".join(
            f"BILLSYNC_{'_'.join(str(part) for part in problem['loc']).upper()}: {problem['msg']}"
            for problem in error.errors()
        )
        raise fail(f"invalid settings: {problems}") from None


def open_billsync(settings: Settings | None = None, clock: Clock | None = None) -> Billsync:
    settings = settings or load_settings()
    try:
        billsync = build(settings, clock=clock)
    except CatalogError as error:
        raise fail(str(error)) from None
    ensure_schema(billsync.database)
    return billsync
