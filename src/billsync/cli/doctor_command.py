"""``billsync doctor``: is the configured Stripe set up as billsync needs it? Exit 1 if not."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from billsync.cli.common import console, load_settings
from billsync.config import Settings
from billsync.db.database import Database
from billsync.repositories import installation as installation_repository
from billsync.repositories.installation import InstallationRow
from billsync.services.doctor import diagnose
from billsync.stripe_gateway import StripeGateway


def _installation(settings: Settings) -> InstallationRow | None:
    """The database's installation row, if the database is there and migrated."""
    database = Database(settings.resolved_database_url())
    try:
        with database.read() as connection:
            return installation_repository.get(connection)
    except SQLAlchemyError:
        return None  # no database yet: the Stripe checks still run
    finally:
        database.dispose()


def doctor_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
) -> None:
    """Check the Stripe account (or emulator) billsync is configured with: the key and its
    mode, the API version, the Customer Portal's settings, the webhook endpoint and its events,
    the webhook secrets, the rate limits — and say what to fix."""
    settings = load_settings()
    gateway = None
    if settings.stripe_api_key:
        gateway = StripeGateway(
            settings.stripe_api_key,
            api_base=settings.stripe_api_base,
            timeout=settings.stripe_timeout_seconds,
            max_network_retries=settings.stripe_max_retries,
        )
    checks = diagnose(settings, gateway, _installation(settings))
    if as_json:
        print(json.dumps([check.as_json() for check in checks], indent=2))
    else:
        table = Table(title="billsync doctor")
        for column in ("", "check", "found", "to fix"):
            table.add_column(column, overflow="fold")
        for check in checks:
            table.add_row(
                "[green]ok[/]" if check.ok else "[red]✗[/]",
                check.name,
                escape(check.found),
                escape(check.fix or ""),
            )
        console.print(table)
    if not all(check.ok for check in checks):
        raise typer.Exit(1)
