"""A failing account is retried after a growing delay, not at every tick

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

``account_sync.retry_at``: after a failed sync, the scheduler's due reads (interval, threshold,
closing) skip the account until then (billsync.core.policy.retry_delay).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("account_sync") as batch_op:
        batch_op.add_column(sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("account_sync") as batch_op:
        batch_op.drop_column("retry_at")
