"""Month end by index: the closing lane's work and the review windows that are over

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

At a month's end every account's period is in review at once. Two partial indexes keep what a
scheduler tick reads bounded by what it takes, not by how many periods are in review: the
periods a worker has to complete or finalize (``due_for_closing``), and those whose review
window is over and whose finalize is not requested yet.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLOSING_WORK = "status = 'review' AND (review_ends_at IS NULL OR finalize_requested_at IS NOT NULL)"
FINALIZE_DUE = "status = 'review' AND review_ends_at IS NOT NULL AND finalize_requested_at IS NULL"


def upgrade() -> None:
    op.create_index(
        "ix_billing_periods_closing_work",
        "billing_periods",
        ["end", "account_id"],
        postgresql_where=sa.text(CLOSING_WORK),
        sqlite_where=sa.text(CLOSING_WORK),
    )
    op.create_index(
        "ix_billing_periods_finalize_due",
        "billing_periods",
        ["review_ends_at"],
        postgresql_where=sa.text(FINALIZE_DUE),
        sqlite_where=sa.text(FINALIZE_DUE),
    )


def downgrade() -> None:
    op.drop_index("ix_billing_periods_finalize_due", table_name="billing_periods")
    op.drop_index("ix_billing_periods_closing_work", table_name="billing_periods")
