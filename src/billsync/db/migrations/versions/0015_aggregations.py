"""Lines of max, latest and unique_count metrics

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

``lines.mark_value``, ``mark_at``, ``mark_event_id``: what a ``max`` or ``latest`` metric's line
keeps of its own events (the largest quantity; the latest event's quantity, timestamp and id).
``distinct_values``: each value a ``unique_count`` metric counted, once per account, usage
period and line key, with the period of the line that counted it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Types are spelled out here, not imported from the models, so this migration never changes.
UTC_DATETIME = sa.DateTime(timezone=True)
EXACT_DECIMAL = sa.Text().with_variant(sa.Numeric(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("lines") as batch_op:
        batch_op.add_column(sa.Column("mark_value", EXACT_DECIMAL, nullable=True))
        batch_op.add_column(sa.Column("mark_at", UTC_DATETIME, nullable=True))
        batch_op.add_column(sa.Column("mark_event_id", sa.String(length=255), nullable=True))
    op.create_table(
        "distinct_values",
        sa.Column("account_id", sa.String(length=255), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("line_key", sa.String(length=600), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("counted_in", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint(
            "account_id", "period_start", "line_key", "value", name=op.f("pk_distinct_values")
        ),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("distinct_values")
    with op.batch_alter_table("lines") as batch_op:
        batch_op.drop_column("mark_event_id")
        batch_op.drop_column("mark_at")
        batch_op.drop_column("mark_value")
