"""Failed console sign-ins are counted in the database, shared by every API process

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

``sign_in_failures``: per client, per user from a client, and per user; the console's throttle
(billsync.services.console_auth) reads and bumps them, so N API processes allow no more
attempts than one.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sign_in_failures",
        sa.Column("key", sa.String(length=80), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_sign_in_failures")),
    )
    op.create_index(
        op.f("ix_sign_in_failures_last_at"), "sign_in_failures", ["last_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_sign_in_failures_last_at"), table_name="sign_in_failures")
    op.drop_table("sign_in_failures")
