"""What every CLI command needs: the wired application, errors printed for people.

Every command answers the same way when what it needs is missing — one line on stderr and a
non-zero exit, never a traceback:

- an unreachable database: a one-shot command waits ``COMMAND_DATABASE_WAIT_SECONDS`` for it
  (a process that keeps running — serve, api, worker, consume — ``DATABASE_WAIT_SECONDS``),
  saying what it waits for and how long, then fails with the reason; a database that answers
  with a refusal (it does not exist, a wrong password) fails at once;
- an account that does not exist: ``require_account``;
- no Stripe key, for a command that calls Stripe: ``require_stripe`` (exit 2, as for a usage
  error: the command line must change);
- a database error in the middle of a command: ``BillsyncGroup`` turns it into one line.
"""

from __future__ import annotations

import errno
import re
import socket
import time
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from typer import _click
from typer.core import TyperGroup

from billsync.bootstrap import Billsync, Syncing, build
from billsync.clock import Clock
from billsync.config import Settings
from billsync.core.catalog import CatalogError
from billsync.db import migrate
from billsync.db.database import Database
from billsync.repositories import accounts as account_repository
from billsync.services.catalog_prices import (
    CatalogChangeRefused,
    CatalogPrices,
    PricingPlan,
)

console = Console()
# An error names files and ids a person copies: never broken across lines by the console.
errors = Console(stderr=True, soft_wrap=True)
# How long a starting process waits for its database: a long-running one (it may start while
# the database restarts) and a one-shot command (a person is waiting for an answer).
DATABASE_WAIT_SECONDS = 60.0
COMMAND_DATABASE_WAIT_SECONDS = 10.0
# The server answered, but with a refusal a wait does not cure; these few are transient.
_TRANSIENT_REFUSAL = re.compile(
    r"starting up|shutting down|in recovery|too many (clients|connections)|connection slots",
    re.IGNORECASE,
)
STRIPE_KEY_HINT = "set BILLSYNC_STRIPE_API_KEY (and BILLSYNC_STRIPE_API_BASE for the emulator)"


def fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def describe_database(database: Database) -> str:
    """Where the database is, without its password: ``PostgreSQL at host:5432/name``."""
    url = make_url(database.url)
    if database.is_sqlite:
        return f"SQLite at {url.database}"
    where = f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"
    return f"{'PostgreSQL' if database.dialect == 'postgresql' else database.dialect} at {where}"


def database_problem(error: DBAPIError | OSError) -> tuple[str, bool]:
    """The driver's error as one line, and whether waiting may cure it (the server is not
    answering, or is starting) rather than not (the database does not exist, a wrong
    password: the server refused)."""
    if isinstance(error, OSError):
        return " ".join(str(error).split()), False
    # The driver's first line says it; psycopg's next ones are hints ("Is the server running
    # on that host…").
    lines = [line for line in str(error.orig or error).splitlines() if line.strip()] or [""]
    text = " ".join(lines[0].split())
    # psycopg: 'connection failed: connection to server at "h", port p failed: <why>'
    reason = text.rsplit(" failed: ", 1)[-1]
    refused = "FATAL:" in reason or "unable to open database file" in reason
    reason = reason.replace("FATAL: ", "")
    if refused and "does not exist" in reason and "database" in reason:
        reason += ": create it (createdb), then run `billsync db upgrade`"
    return reason, not refused or bool(_TRANSIENT_REFUSAL.search(reason))


def _seconds(seconds: float) -> str:
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.2g}"


def wait_for_database(database: Database, seconds: float) -> None:
    """A process starting while its database restarts (or the network blinks) waits for it,
    retrying with back-off, instead of dying; it says what it waits for and how long, and
    after ``seconds`` fails with the reason. A refusal no wait cures fails at once. The wait
    counts from the first failed try: that try may itself be slow (a busy host, a connect
    timeout), and the wait announced is then still the wait made."""
    deadline: float | None = None
    delay = 0.1
    announced = False
    while True:
        try:
            database.ping()
            return
        except DBAPIError as error:
            reason, transient = database_problem(error)
            if not transient:
                raise fail(f"{describe_database(database)}: {reason}") from None
            if deadline is None:
                deadline = time.monotonic() + seconds
            left = deadline - time.monotonic()
            if left <= 0:
                raise fail(
                    f"{describe_database(database)} is unreachable"
                    + (f" after waiting {_seconds(seconds)} s" if announced else "")
                    + f": {reason}"
                ) from None
            if not announced:
                errors.print(
                    escape(
                        f"waiting up to {_seconds(seconds)} s for {describe_database(database)} "
                        f"({reason})"
                    ),
                    highlight=False,
                )
                announced = True
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


def ensure_schema(database: Database, seconds: float = DATABASE_WAIT_SECONDS) -> None:
    """SQLite (one process owns it) is migrated on the spot; PostgreSQL, shared by many
    processes, only by an explicit ``billsync db upgrade``. The database may go away again
    between the wait and the check (a failover, a blink of the network): the whole step is
    retried within the same ``seconds``."""
    deadline = time.monotonic() + seconds
    left = seconds  # the first wait says the whole of it ("waiting up to 30 s"), not 29.99
    while True:
        wait_for_database(database, left)
        left = max(0.0, deadline - time.monotonic())
        try:
            if database.is_sqlite:
                migrate.upgrade(database)
                return
            current, head = migrate.current_revision(database), migrate.head_revision(database)
            break
        except OperationalError as error:  # the connection was lost or refused, not a bad query
            reason, _ = database_problem(error)
            if time.monotonic() > deadline:
                raise fail(f"{describe_database(database)} is unreachable: {reason}") from None
            errors.print(
                escape(f"{describe_database(database)} went away while starting ({reason})"),
                highlight=False,
            )
    if current is None:
        raise fail(
            f"{describe_database(database)} has no billsync schema yet: run `billsync db upgrade`"
        )
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


def open_database(settings: Settings, wait: float | None = None) -> Database:
    """The configured database, once it answers (``billsync db …``: no schema needed)."""
    try:
        database = Database(settings.resolved_database_url())
    except OSError as error:  # SQLite: the data directory cannot be written
        raise fail(f"cannot create the SQLite ledger: {database_problem(error)[0]}") from None
    wait_for_database(database, COMMAND_DATABASE_WAIT_SECONDS if wait is None else wait)
    return database


def open_billsync(
    settings: Settings | None = None,
    clock: Clock | None = None,
    *,
    wait: float | None = None,
    catalog_check: bool = True,
    apply_catalog: bool = False,
) -> Billsync:
    """billsync wired from the settings, its database answering with the current schema and
    its catalog's prices applied (``ensure_catalog``; not for ``billsync catalog apply``;
    ``apply_catalog``: applied here on SQLite).
    ``wait``: how long to wait for an unreachable database (default
    ``COMMAND_DATABASE_WAIT_SECONDS``; ``DATABASE_WAIT_SECONDS`` for the processes that keep
    running)."""
    settings = settings or load_settings()
    try:
        billsync = build(settings, clock=clock)
    except CatalogError as error:
        raise fail_with_problems(error.problems) from None
    except OSError as error:  # SQLite: the data directory cannot be written
        raise fail(f"cannot create the SQLite ledger: {database_problem(error)[0]}") from None
    ensure_schema(billsync.database, COMMAND_DATABASE_WAIT_SECONDS if wait is None else wait)
    if catalog_check:
        try:
            ensure_catalog(billsync, apply=apply_catalog)
        except typer.Exit:
            billsync.close()
            raise
    return billsync


def describe_pricing_plan(plan: PricingPlan, source: str) -> None:
    """What applying the catalog does, in a few lines."""
    if plan.kind == "unchanged":
        console.print(f"{source}: its prices are the ones applied to the ledger", highlight=False)
        return
    if plan.kind == "adopt":
        console.print(f"{source}: no catalog applied yet: its prices are recorded", highlight=False)
        return
    what = "finishes re-rating" if plan.kind == "resume" else "changes"
    console.print(
        f"{source} {what}: {len(plan.spans)} price(s), {plan.open_periods} period(s) to re-rate",
        highlight=False,
    )
    for span in plan.spans:
        console.print(f"  {span.describe()}", highlight=False)


def ensure_catalog(billsync: Billsync, *, apply: bool = False) -> None:
    """The catalog's prices are the ones applied to the ledger (services.catalog_prices), or
    the process does not start. The first catalog a ledger meets is recorded as its pricing.
    ``apply`` (``billsync serve`` on SQLite: the process that owns the ledger) applies a new
    one on the spot; elsewhere — PostgreSQL's processes may still run the old catalog, and a
    process restarted with an older catalog must not put old prices back — it takes an
    explicit ``billsync catalog apply``."""
    prices = CatalogPrices(billsync.database, billsync.catalog, billsync.clock)
    plan = prices.plan(periods=False)
    if plan.kind == "unchanged":
        return
    if plan.kind != "adopt" and not (apply and billsync.database.is_sqlite):
        assert plan.applied is not None
        applied = plan.applied
        spans = "; ".join(span.describe() for span in plan.spans) or "no period priced otherwise"
        when = f"{applied.applied_at:%Y-%m-%d %H:%M} UTC"
        what = (
            "its re-rating was interrupted"
            if plan.kind == "resume"
            else f"its prices differ from those applied to the ledger on {when} from "
            f"{applied.source} ({spans})"
        )
        raise fail(
            f"the catalog {billsync.catalog.source}: {what}. If it is the new catalog, run "
            "`billsync catalog apply` with it (it re-rates the open periods once), then start "
            f"billsync; if it is an old one, start billsync with {applied.source} instead"
        )
    try:
        result = prices.apply()
    except CatalogChangeRefused as refused:
        raise fail(refused.message) from None
    if result.lines_re_rated or result.kept:
        errors.print(
            escape(
                f"catalog {billsync.catalog.source}: new prices applied, "
                f"{result.lines_re_rated} line(s) of {result.accounts_re_rated} account(s) "
                f"re-rated"
                + (
                    f"; {len(result.kept)} period(s) in review kept their prices"
                    if result.kept
                    else ""
                )
            ),
            highlight=False,
        )


def fail_with_problems(problems: tuple[str, ...]) -> typer.Exit:
    """Each problem on its own ``error:`` line (a catalog's every error at once)."""
    for problem in problems[:-1]:
        errors.print(f"[bold red]error:[/] {escape(problem)}", highlight=False)
    return fail(problems[-1])


def require_stripe(billsync: Billsync, doing: str) -> Syncing:
    """What talks to Stripe, or exit 2 saying which setting is missing."""
    if billsync.sync is None:
        billsync.close()
        raise fail(f"{STRIPE_KEY_HINT} to {doing}: no Stripe key is configured", code=2)
    return billsync.sync


def account_exists(connection: Connection, account_id: str) -> bool:
    return account_repository.get_account(connection, account_id) is not None


def require_account(billsync: Billsync, account_id: str | None) -> None:
    """Exit 1 with one line when ``--account`` names no account."""
    if account_id is None:
        return
    with billsync.database.read() as connection:
        found = account_exists(connection, account_id)
    if not found:
        billsync.close()
        raise fail(f"account '{account_id}' does not exist")


def require_free_port(host: str, port: int, option: str) -> None:
    """Exit 1 naming the option that changes a port another process already listens on."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the servers bind: a port left in TIME_WAIT by a stopped server is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise fail(
                    f"port {port} on {host} is already in use: choose another with {option}"
                ) from None
            raise fail(f"cannot listen on {host}:{port}: {error.strerror}") from None


class BillsyncGroup(TyperGroup):
    """The command group: a database error in the middle of any command (the database went
    away after the start) is one line and exit 1, not a traceback."""

    def invoke(self, ctx: _click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OperationalError as error:
            reason, _ = database_problem(error)
            raise fail(f"the database went away: {reason}") from None
        except DBAPIError as error:
            raise fail(f"the database refused a statement: {database_problem(error)[0]}") from None
