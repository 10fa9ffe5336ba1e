"""Managing console users from the command line (``billsync users list|disable|enable``):
admin actions, each audited (``user.disable``, ``user.enable``) in the caller's transaction,
the one that makes the change, with who acts and why."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from billsync.errors import Conflict, NotFound
from billsync.repositories import console as console_repository
from billsync.repositories import console_users as repository
from billsync.services.support import checked_who


@dataclass(frozen=True, slots=True)
class UserChange:
    name: str
    disabled: bool
    changed: bool  # False: it already was so (nothing done, nothing audited)
    sessions_ended: int = 0


def set_disabled(
    connection: Connection, name: str, disabled: bool, *, actor: str, reason: str, now: datetime
) -> UserChange:
    """Disable (and sign out everywhere) or enable a console user. The last enabled admin is
    never disabled: the console's user management would have no one left."""
    who = checked_who(actor, reason)
    user = console_repository.user_by_name(connection, name)
    if user is None:
        raise NotFound(f"there is no console user {name!r}", code="user_not_found")
    last_admin = user.role == "admin" and repository.enabled_admins(connection) <= 1
    if disabled and not user.disabled and last_admin:
        raise Conflict(
            f"{name!r} is the last enabled admin: add or enable another admin first",
            code="last_admin",
        )
    if not repository.set_disabled(connection, name, disabled):
        return UserChange(name, disabled, changed=False)
    ended = repository.end_sessions(connection, name) if disabled else 0
    console_repository.record(
        connection,
        actor=who.actor,
        action="user.disable" if disabled else "user.enable",
        now=now,
        reason=who.reason,
        detail={"user": name, "role": user.role, "sessions_ended": ended},
    )
    return UserChange(name, disabled, changed=True, sessions_ended=ended)
