"""account_sync.behind: the scheduler's due queue

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

Every account gets its sync row; ``behind`` says that the account has changes Stripe does not
hold yet (set by ingest and every other writer, cleared by a sync that leaves nothing behind),
and a partial index on ``last_synced_at`` over the accounts behind lets the scheduler read the
due ones, least recently synced first, in the order it will sync them, without reading the
others.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("account_sync", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("behind", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    op.execute(
        "INSERT INTO account_sync (account_id, consecutive_failures, stripe_calls, updated_at,"
        " lease_generation, behind)"
        " SELECT id, 0, 0, updated_at, 0, false FROM accounts"
        " WHERE id NOT IN (SELECT account_id FROM account_sync)"
    )
    # Periods billsync keeps in step with Stripe: open, closing, review, held.
    op.execute(
        "UPDATE account_sync SET behind = true WHERE account_id IN ("
        " SELECT lines.account_id FROM lines JOIN billing_periods"
        " ON billing_periods.account_id = lines.account_id"
        " AND billing_periods.start = lines.period_start"
        " WHERE billing_periods.status IN ('open', 'closing', 'review', 'held')"
        " AND (lines.version != lines.synced_version OR lines.amount != lines.synced_amount)"
        " UNION SELECT account_id FROM billing_periods"
        " WHERE status IN ('open', 'closing', 'review', 'held')"
        " AND finalize_requested_at IS NOT NULL)"
    )
    op.create_index(
        "ix_account_sync_due",
        "account_sync",
        ["last_synced_at", "account_id"],
        postgresql_where=sa.text("behind IS true"),
        sqlite_where=sa.text("behind IS 1"),
    )

    op.create_index(
        "ix_accounts_own_sync_policy",
        "accounts",
        ["id"],
        postgresql_where=sa.text("sync_policy IS NOT NULL"),
        sqlite_where=sa.text("sync_policy IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_accounts_own_sync_policy", table_name="accounts")
    op.drop_index("ix_account_sync_due", table_name="account_sync")
    with op.batch_alter_table("account_sync", schema=None) as batch_op:
        batch_op.drop_column("behind")
