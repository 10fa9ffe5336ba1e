"""``billsync users add|list|disable|enable``: the support console's users."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from billsync.cli.common import console, fail, open_billsync
from billsync.errors import BillsyncError, InvalidRequest
from billsync.repositories import console as console_repository
from billsync.services import console_users

users_app = typer.Typer(help="Support console users.", no_args_is_help=True)

UserName = Annotated[str, typer.Argument(metavar="NAME", help="The user's sign-in name.")]
Reason = Annotated[str, typer.Option(metavar="TEXT", help="Why, for the audit log.")]
Actor = Annotated[str, typer.Option(metavar="NAME", help="Who acts, for the audit log.")]


@users_app.command("add")
def users_add(
    name: UserName,
    role: Annotated[
        str,
        typer.Option(metavar="ROLE", help="viewer (reads), agent (acts) or admin (manages)."),
    ],
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            metavar="TEXT",
            help="At least 10 characters; asked for when not given.",
        ),
    ],
) -> None:
    """Add a console user (the password is asked for, or read from --password)."""
    billsync = open_billsync()
    try:
        billsync.console.add_user(name, password, role)
    except BillsyncError as error:
        raise fail(error.message) from None
    finally:
        billsync.close()
    console.print(f"added {escape(name)} ({role})")


@users_app.command("list")
def users_list() -> None:
    """List the console users: name, role, enabled or disabled."""
    billsync = open_billsync()
    try:
        with billsync.database.read() as connection:
            everyone = console_repository.all_users(connection)
    finally:
        billsync.close()
    if not everyone:
        console.print("no console users: add one with `billsync users add NAME --role admin`")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("user", "role", "state"):
        table.add_column(column, overflow="fold")
    for user in everyone:
        table.add_row(escape(user.name), user.role, "disabled" if user.disabled else "enabled")
    console.print(table)


def _set_disabled(name: str, disabled: bool, reason: str, actor: str) -> None:
    billsync = open_billsync()
    try:
        with billsync.database.transaction() as connection:
            change = console_users.set_disabled(
                connection, name, disabled, actor=actor, reason=reason, now=billsync.clock.now()
            )
    except BillsyncError as error:
        raise fail(error.message, code=2 if isinstance(error, InvalidRequest) else 1) from None
    finally:
        billsync.close()
    state = "disabled" if disabled else "enabled"
    if not change.changed:
        console.print(f"{escape(name)} was already {state}: nothing done")
        return
    ended = f", {change.sessions_ended} session(s) signed out" if change.sessions_ended else ""
    console.print(f"{escape(name)} {state}{ended} (audited as user.{state[:-1]})")


@users_app.command("disable")
def users_disable(name: UserName, *, reason: Reason, actor: Actor = "cli") -> None:
    """Disable a user: signed out at once, and no sign-in until enabled again (audited)."""
    _set_disabled(name, True, reason, actor)


@users_app.command("enable")
def users_enable(name: UserName, *, reason: Reason, actor: Actor = "cli") -> None:
    """Enable a disabled user again (audited); they sign in anew."""
    _set_disabled(name, False, reason, actor)
