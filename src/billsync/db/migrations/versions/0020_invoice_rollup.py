"""Invoices rolled up under Stripe's 250 items

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07

``lines.rollup_key``: the roll-up item of the Stripe invoice that carries the line, when its
period's lines are too many for one item each (billsync.core.rollup); NULL: the line is its
own item. ``stripe_line_item_id`` is then the roll-up item's, shared by its lines.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("lines", sa.Column("rollup_key", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lines") as batch_op:
        batch_op.drop_column("rollup_key")
