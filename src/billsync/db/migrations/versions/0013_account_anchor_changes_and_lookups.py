"""Accounts keep their earlier anchor days; accounts are looked up by name prefix and email

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07

``accounts.anchor_changes``: the anchor days an account's periods followed before its current
one, each with the date it stopped applying (``[{"until": "2026-12-01", "anchor_day": 1}]``;
NULL: never changed), so a changed anchor day moves future periods only
(billsync.core.periods.AnchorSchedule). ``GET /v1/accounts`` filters by a name prefix and an
email through the two new indexes (on PostgreSQL the name's index uses text_pattern_ops, which
serves ``LIKE 'prefix%'`` whatever the database's collation).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch_op:
        batch_op.add_column(sa.Column("anchor_changes", JSON_DOCUMENT, nullable=True))
    op.create_index(
        op.f("ix_accounts_name"),
        "accounts",
        ["name"],
        unique=False,
        postgresql_ops={"name": "text_pattern_ops"},
    )
    op.create_index(op.f("ix_accounts_email"), "accounts", ["email"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_accounts_email"), table_name="accounts")
    op.drop_index(op.f("ix_accounts_name"), table_name="accounts")
    with op.batch_alter_table("accounts") as batch_op:
        batch_op.drop_column("anchor_changes")
