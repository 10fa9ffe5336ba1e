"""Requests carried out once: the client's key on the audit entry

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07

``audit_log.request_key`` and ``request_digest`` (billsync.core.request_keys): the key a client
sent with a request that changes money (the API's ``Idempotency-Key``, the console's one-time
form ``submission``) and a digest of its parameters; unique per actor, so the same request sent
twice is carried out once.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("request_key", sa.String(length=255), nullable=True))
    op.add_column("audit_log", sa.Column("request_digest", sa.String(length=64), nullable=True))
    op.create_index(
        "ux_audit_log_actor_request_key",
        "audit_log",
        ["actor", "request_key"],
        unique=True,
        sqlite_where=sa.text("request_key IS NOT NULL"),
        postgresql_where=sa.text("request_key IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ux_audit_log_actor_request_key", table_name="audit_log")
    with op.batch_alter_table("audit_log") as batch_op:
        batch_op.drop_column("request_digest")
        batch_op.drop_column("request_key")
