"""The installation's row (db.models.Installation): its Stripe namespace and mode."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, select, update

from billsync.db.tables import installation


@dataclass(frozen=True)
class InstallationRow:
    namespace: str
    stripe_mode: str | None


def get(connection: Connection) -> InstallationRow:
    row = connection.execute(
        select(installation.c.namespace, installation.c.stripe_mode).where(installation.c.id == 1)
    ).one()
    return InstallationRow(row.namespace, row.stripe_mode)


def record_mode(connection: Connection, mode: str) -> str:
    """Ties the ledger to ``mode`` at its first write to Stripe; returns the mode it is tied to
    (the one recorded earlier, if any)."""
    connection.execute(
        update(installation)
        .where(installation.c.id == 1, installation.c.stripe_mode.is_(None))
        .values(stripe_mode=mode)
    )
    return get(connection).stripe_mode or mode
