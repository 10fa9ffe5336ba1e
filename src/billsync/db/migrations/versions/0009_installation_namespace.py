"""The installation: its Stripe namespace and the mode its ledger was synced in

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

Two installations sharing one Stripe account must not share idempotency keys or adopt each
other's objects (billsync.core.installation). A new database gets a namespace of its own. A
database that has already written to Stripe keeps the empty namespace: its keys and metadata
stay the ones its objects were made with (``BILLSYNC_STRIPE_NAMESPACE`` can still set one for
it, for objects it creates from then on).
"""

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "installation",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("namespace", sa.String(32), nullable=False),
        sa.Column("stripe_mode", sa.String(8), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    connection = op.get_bind()
    synced = connection.execute(
        sa.text("SELECT 1 FROM accounts WHERE stripe_customer_id IS NOT NULL LIMIT 1")
    ).first()
    created = datetime.now(UTC)
    if connection.dialect.name == "sqlite":  # stored naive there, as billsync's UTCDateTime does
        created = created.replace(tzinfo=None)
    op.bulk_insert(
        table,
        [
            {
                "id": 1,
                "namespace": "" if synced is not None else secrets.token_hex(4),
                "stripe_mode": None,
                "created_at": created,
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("installation")
