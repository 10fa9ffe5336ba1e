"""The SQL behind the metrics read at scrape time: how far Stripe is behind the ledger and how
far the webhook processor is behind its inbox. Two aggregate statements, bounded in time on
PostgreSQL, so that a scrape every few seconds from every process costs the database little."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select, text

from billsync.db.tables import account_sync, lines, webhook_events
from billsync.repositories.sync import out_of_step

# A scrape gives up on a database this slow rather than pile up behind it.
STATEMENT_TIMEOUT_MS = 5000


@dataclass(frozen=True, slots=True)
class Backlog:
    dirty_lines: int
    dirty_accounts: int
    oldest_dirty_change: datetime | None
    unhandled_webhooks: int
    oldest_unhandled_webhook: datetime | None
    behind_accounts: int = 0
    oldest_behind_sync: datetime | None = None  # the due queue's head: least recently synced


def backlog(connection: Connection) -> Backlog:
    """Lines not in step with Stripe (the scheduler's own test, ``accounts_needing_sync``: the
    version or the amount differs from what Stripe was last seen to hold, in a period billsync
    still keeps in step) and webhook events not yet handled."""
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
    dirty = connection.execute(
        out_of_step(
            func.count(),
            func.count(func.distinct(lines.c.account_id)),
            func.min(lines.c.updated_at),
        )
    ).one()
    inbox = connection.execute(
        select(func.count(), func.min(webhook_events.c.received_at)).where(
            webhook_events.c.handled_at.is_(None)
        )
    ).one()
    queue = connection.execute(
        select(func.count(), func.min(account_sync.c.last_synced_at)).where(
            account_sync.c.behind.is_(True)
        )
    ).one()
    return Backlog(
        behind_accounts=int(queue[0]),
        oldest_behind_sync=queue[1],
        dirty_lines=int(dirty[0]),
        dirty_accounts=int(dirty[1]),
        oldest_dirty_change=dirty[2],
        unhandled_webhooks=int(inbox[0]),
        oldest_unhandled_webhook=inbox[1],
    )
