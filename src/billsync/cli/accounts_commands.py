"""``billsync accounts create|show|list|update|prices``."""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from billsync.cli.common import console, fail, open_billsync
from billsync.core.catalog import Price
from billsync.core.money import decimal_text, format_minor
from billsync.core.policy import Policy
from billsync.errors import BillsyncError
from billsync.repositories.accounts import AccountFilter, AccountRecord
from billsync.services.accounts import MAX_PAGE, UNCHANGED, AccountChanges, NewAccount
from billsync.services.lines import parse_period

accounts_app = typer.Typer(help="Create, show, list and change accounts.", no_args_is_help=True)

AccountId = Annotated[
    str, typer.Argument(metavar="ID", help="The account: the platform's customer id.")
]
PERIOD_HELP = "The period containing this date (YYYY-MM-DD), or 'current'."
Actor = Annotated[str, typer.Option(metavar="NAME", help="Who acts, for the audit log.")]


@accounts_app.command("create")
def accounts_create(
    account_id: AccountId,
    currency: Annotated[
        str, typer.Option(metavar="CODE", help="ISO 4217 code the account is billed in, e.g. usd.")
    ],
    name: Annotated[
        str | None, typer.Option(metavar="TEXT", help="Display name.", show_default="the id")
    ] = None,
    email: Annotated[str | None, typer.Option(metavar="EMAIL", help="Billing email.")] = None,
    anchor_day: Annotated[
        int | None,
        typer.Option(
            metavar="DAY",
            min=1,
            max=28,
            help="Day of the month periods start (1–28, UTC).",
            show_default="BILLSYNC_BILLING_ANCHOR_DAY",
        ),
    ] = None,
) -> None:
    """Create an account."""
    billsync = open_billsync()
    try:
        with billsync.database.transaction() as connection:
            record = billsync.accounts.create(
                connection,
                NewAccount(
                    account_id, currency, name=name, email=email, billing_anchor_day=anchor_day
                ),
            )
    except BillsyncError as error:
        raise fail(error.message) from None
    finally:
        billsync.close()
    console.print(f"created account [bold]{escape(record.id)}[/] ({record.currency})")


@accounts_app.command("show")
def accounts_show(
    account_id: AccountId,
    period: Annotated[str, typer.Option(metavar="DATE", help=PERIOD_HELP)] = "current",
) -> None:
    """Show an account's lines for a period, with their total."""
    billsync = open_billsync()
    try:
        which = parse_period(period)
        with billsync.database.read() as connection:
            account = billsync.accounts.get(connection, account_id)
            view = billsync.lines.period_lines(connection, account, which)
    except BillsyncError as error:
        raise fail(error.message) from None
    finally:
        billsync.close()
    currency = view.currency.upper()
    console.print(
        escape(f"{account.name} ({account.id}): {view.period.start} to {view.period.end}"),
        highlight=False,
    )
    # Fits 80 columns: a line's key folds, numbers never break.
    table = Table(box=None, pad_edge=False)
    table.add_column("line", overflow="fold", ratio=1)
    table.add_column("quantity", justify="right", overflow="fold")
    table.add_column("unit price", justify="right", no_wrap=True)
    table.add_column(f"amount {currency}", justify="right", no_wrap=True)
    for line in view.lines:
        table.add_row(
            escape(line.key),
            escape(f"{decimal_text(line.quantity)} {line.unit}".strip()),
            decimal_text(line.unit_price),
            format_minor(line.amount, view.currency),
        )
    table.add_section()
    table.add_row("total", "", "", format_minor(view.total, view.currency))
    console.print(table)


def _policy_text(policy: dict[str, Any] | None) -> str:
    if not policy:
        return "default"
    return ", ".join(f"{key} {value}" for key, value in policy.items())


def _anchor_text(record: AccountRecord, default_anchor_day: int) -> str:
    schedule = record.schedule(default_anchor_day)
    since = schedule.applies_from()
    return f"{schedule.anchor_day}" + (f" from {since}" if since else "")


@accounts_app.command("list")
def accounts_list(
    name: Annotated[
        str | None,
        typer.Option(metavar="PREFIX", help="Accounts whose name starts with this (exact case)."),
    ] = None,
    email: Annotated[str | None, typer.Option(metavar="EMAIL", help="This exact email.")] = None,
    customer: Annotated[
        str | None, typer.Option(metavar="CUS_ID", help="This exact Stripe customer id.")
    ] = None,
    limit: Annotated[
        int, typer.Option(metavar="N", min=1, max=MAX_PAGE, help="Accounts on the page.")
    ] = 50,
    cursor: Annotated[
        str | None,
        typer.Option(metavar="ID", help="Start after this account (the page before says it)."),
    ] = None,
) -> None:
    """List accounts in id order, a page at a time."""
    billsync = open_billsync()
    default = billsync.settings.billing_anchor_day
    try:
        with billsync.database.read() as connection:
            page = billsync.accounts.list(
                connection,
                AccountFilter(name_prefix=name, email=email, customer=customer),
                cursor=cursor,
                limit=limit,
            )
    except BillsyncError as error:
        raise fail(error.message) from None
    finally:
        billsync.close()
    if not page.accounts:
        console.print("no accounts" + (" match" if name or email or customer else ""))
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("account", overflow="fold", ratio=1)
    table.add_column("name", overflow="fold", ratio=1)
    table.add_column("email", overflow="fold", ratio=1)
    table.add_column("cur", no_wrap=True)
    table.add_column("anchor", no_wrap=True)
    table.add_column("Stripe customer", overflow="fold")
    for record in page.accounts:
        table.add_row(
            escape(record.id),
            escape(record.name),
            escape(record.email or ""),
            record.currency,
            _anchor_text(record, default),
            escape(record.stripe_customer_id or ""),
        )
    console.print(table)
    if page.next is not None:
        console.print(f"more: --cursor {escape(page.next)}", highlight=False, soft_wrap=True)


@accounts_app.command("update")
def accounts_update(
    account_id: AccountId,
    *,
    name: Annotated[str | None, typer.Option(metavar="TEXT", help="New display name.")] = None,
    email: Annotated[str | None, typer.Option(metavar="EMAIL", help="New billing email.")] = None,
    no_email: Annotated[bool, typer.Option("--no-email", help="Remove the billing email.")] = False,
    policy: Annotated[
        Policy | None,
        typer.Option(
            metavar="POLICY",
            help="The account's own sync policy: interval, threshold, on_demand or cycle_end "
            "(with --interval-seconds, --threshold).",
        ),
    ] = None,
    interval_seconds: Annotated[
        int | None,
        typer.Option(metavar="SECONDS", min=1, help="The account's own sync interval."),
    ] = None,
    threshold: Annotated[
        int | None,
        typer.Option(metavar="MINOR", min=1, help="Minor units behind before a threshold sync."),
    ] = None,
    default_policy: Annotated[
        bool,
        typer.Option("--default-policy", help="Back to BILLSYNC_SYNC_POLICY and its settings."),
    ] = False,
    anchor_day: Annotated[
        int | None,
        typer.Option(
            metavar="DAY",
            help="Day future periods start (1–28): the current period keeps its dates, the next "
            "one ends on the new day.",
        ),
    ] = None,
    reason: Annotated[
        str | None, typer.Option(metavar="TEXT", help="Why, for the audit log.")
    ] = None,
    actor: Actor = "cli",
) -> None:
    """Change an account; audited as account.update."""
    if email is not None and no_email:
        raise fail("give --email or --no-email, not both", code=2)
    own_policy = {
        key: value
        for key, value in (
            ("policy", policy.value if policy else None),
            ("interval_seconds", interval_seconds),
            ("threshold", threshold),
        )
        if value is not None
    }
    if default_policy and own_policy:
        raise fail("give --default-policy or a policy of the account's own, not both", code=2)
    changes = AccountChanges(
        name=UNCHANGED if name is None else name,
        email=None if no_email else (UNCHANGED if email is None else email),
        sync_policy=None if default_policy else (own_policy or UNCHANGED),
        billing_anchor_day=UNCHANGED if anchor_day is None else anchor_day,
    )
    if changes == AccountChanges():
        raise fail(
            "nothing to change: give --name, --email, --no-email, --policy, --interval-seconds, "
            "--threshold, --default-policy or --anchor-day",
            code=2,
        )
    billsync = open_billsync()
    default = billsync.settings.billing_anchor_day
    try:
        with billsync.database.read() as connection:
            before = billsync.accounts.get(connection, account_id)
        with billsync.database.transaction() as connection:
            after = billsync.accounts.update(
                connection, account_id, changes, actor=actor, reason=reason,
                default_anchor_day=default,
            )  # fmt: skip
    except BillsyncError as error:
        raise fail(error.message) from None
    finally:
        billsync.close()
    said = _differences(before, after, default)
    if not said:
        console.print(f"{escape(account_id)}: nothing changed (it already was so)")
        return
    console.print(f"updated [bold]{escape(account_id)}[/]")
    for line in said:
        console.print(f"  {escape(line)}", highlight=False)


def _differences(before: AccountRecord, after: AccountRecord, default: int) -> list[str]:
    said = []
    if before.name != after.name:
        said.append(f"name: {after.name}")
    if before.email != after.email:
        said.append(f"email: {after.email or 'none'}")
    if before.sync_policy != after.sync_policy:
        said.append(f"sync policy: {_policy_text(after.sync_policy)}")
    old, new = before.schedule(default), after.schedule(default)
    if old != new:
        since = new.applies_from()
        said.append(
            f"anchor day: {new.anchor_day}"
            + (
                f", from {since} (the period running now keeps its dates)"
                if since
                else " (the change not in effect yet is undone)"
            )
        )
    return said


def _price_text(price: Price) -> str:
    if price.is_flat:
        return decimal_text(price.tiers[0].unit_price)
    return ", ".join(
        decimal_text(tier.unit_price)
        + (" above" if tier.up_to is None else f" up to {decimal_text(tier.up_to)}")
        for tier in price.tiers
    )


@accounts_app.command("prices")
def accounts_prices(
    account_id: AccountId,
    *,
    set_prices: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="METRIC=PRICE",
            help="A negotiated price per unit in the account's currency (repeat per metric): "
            "METRIC=0.01, or graduated as JSON tiers, METRIC="
            '\'{"tiers": [{"up_to": "1000", "unit_price": "0.02"}, {"unit_price": "0.01"}]}\'. '
            "The card replaces the account's earlier one from --from on; metrics left out use "
            "the catalog.",
        ),
    ] = None,
    catalog_only: Annotated[
        bool, typer.Option("--catalog", help="Back to the catalog's prices from --from on.")
    ] = False,
    effective_from: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="DATE",
            help="The start of the period the prices apply from: the current one (re-rated at "
            "once) or a later one.",
            show_default="the current period's start",
        ),
    ] = None,
    period: Annotated[str, typer.Option(metavar="DATE", help=PERIOD_HELP)] = "current",
    reason: Annotated[
        str | None, typer.Option(metavar="TEXT", help="Why, for the audit log.")
    ] = None,
    actor: Actor = "cli",
) -> None:
    """Show the prices that rate an account's period; with --set or --catalog, set its
    negotiated prices (a rate card) from a period on, audited as account.prices."""
    raw: dict[str, object] = {}
    for item in set_prices or ():
        metric, sep, text = item.partition("=")
        if not sep or not metric or not text:
            raise fail(f"--set {item!r}: write METRIC=PRICE, e.g. storage.gb=0.02", code=2)
        try:
            raw[metric] = json.loads(text) if text.lstrip().startswith("{") else text
        except json.JSONDecodeError as error:
            raise fail(f"--set {metric}: the tiers are not JSON ({error})", code=2) from None
    if raw and catalog_only:
        raise fail("give --set or --catalog, not both", code=2)
    start: date | None = None
    if effective_from is not None:
        try:
            start = date.fromisoformat(effective_from)
        except ValueError:
            raise fail(f"--from {effective_from!r}: a date YYYY-MM-DD", code=2) from None
    billsync = open_billsync()
    try:
        re_rated = None
        if raw or catalog_only:
            with billsync.database.transaction() as connection:
                change = billsync.rates.set(
                    connection, account_id, raw, start, actor=actor, reason=reason
                )
            re_rated = change.re_rated
            which: str | date = change.card.effective_from
        else:
            which = parse_period(period)
        with billsync.database.read() as connection:
            account = billsync.accounts.get(connection, account_id)
        effective = billsync.rates.effective(account, billsync.lines.period_of(account, which))
    except BillsyncError as error:
        raise fail(error.message) from None
    finally:
        billsync.close()
    if re_rated is not None:
        console.print(
            f"set the prices of [bold]{escape(account_id)}[/] from {effective.period.start}; "
            f"{re_rated} line(s) of the current period re-rated"
        )
    table = Table(
        title=f"{escape(account_id)}: prices of the period from {effective.period.start} "
        f"({account.currency.upper()} per unit)"
    )
    for column in ("Metric", "Price", "Which"):
        table.add_column(column)
    for priced in effective.prices:
        table.add_row(
            escape(priced.metric), escape(_price_text(priced.applied.price)), priced.applied.label
        )
    console.print(table)
