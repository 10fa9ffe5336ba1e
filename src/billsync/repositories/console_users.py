"""SQL for managing console users (``billsync users``): state changes and their sessions."""

from __future__ import annotations

from sqlalchemy import Connection, delete, func, select, update

from billsync.db.tables import console_sessions, users


def set_disabled(connection: Connection, name: str, disabled: bool) -> bool:
    """Disable or enable the user, conditionally: False when it already was (or is absent)."""
    result = connection.execute(
        update(users)
        .where(users.c.name == name, users.c.disabled.is_not(disabled))
        .values(disabled=disabled)
    )
    return result.rowcount == 1


def end_sessions(connection: Connection, name: str) -> int:
    """Sign the user out everywhere (a user enabled again must sign in again)."""
    user_ids = select(users.c.id).where(users.c.name == name).scalar_subquery()
    result = connection.execute(
        delete(console_sessions).where(console_sessions.c.user_id == user_ids)
    )
    return result.rowcount


def enabled_admins(connection: Connection) -> int:
    return int(
        connection.execute(
            select(func.count())
            .select_from(users)
            .where(users.c.role == "admin", users.c.disabled.is_(False))
        ).scalar_one()
    )
