"""What every CLI command needs: the wired application, errors printed for people."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from billsync.bootstrap import Billsync, build
from billsync.clock import Clock
from billsync.config import Settings
from billsync.core.catalog import CatalogError
from billsync.db import migrate
from billsync.db.database import Database

console = Console()
errors = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def ensure_schema(database: Database) -> None:
    """SQLite (one process owns it) is migrated on the spot; PostgreSQL, shared by many
    processes, only by an explicit ``billsync db upgrade``."""
    if database.is_sqlite:
        migrate.upgrade(database)
        return
    current, head = migrate.current_revision(database), migrate.head_revision(database)
    if current != head:
        raise fail(f"the database schema is at {current}, not {head}: run `billsync db upgrade`")


def open_billsync(settings: Settings | None = None, clock: Clock | None = None) -> Billsync:
    settings = settings or Settings()
    try:
        billsync = build(settings, clock=clock)
    except CatalogError as error:
        raise fail(str(error)) from None
    ensure_schema(billsync.database)
    return billsync
