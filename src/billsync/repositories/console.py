"""All SQL about the console: users, sessions, the audit log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from billsync.core.request_keys import RequestKey
from billsync.db.tables import (
    accounts,
    audit_log,
    console_sessions,
    invoice_mirror,
    sync_intents,
    users,
    webhook_events,
)
from billsync.errors import DuplicateRequest


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    name: str
    password_hash: str
    role: str
    disabled: bool


def add_user(
    connection: Connection, name: str, password_hash: str, role: str, now: datetime
) -> int:
    result = connection.execute(
        insert(users).returning(users.c.id),
        {
            "name": name,
            "password_hash": password_hash,
            "role": role,
            "disabled": False,
            "created_at": now,
        },
    )
    return int(result.scalar_one())


def user_by_name(connection: Connection, name: str) -> UserRecord | None:
    row = connection.execute(
        select(
            users.c.id, users.c.name, users.c.password_hash, users.c.role, users.c.disabled
        ).where(users.c.name == name)
    ).first()
    return None if row is None else UserRecord(*tuple(row))


def all_users(connection: Connection) -> list[UserRecord]:
    rows = connection.execute(
        select(
            users.c.id, users.c.name, users.c.password_hash, users.c.role, users.c.disabled
        ).order_by(users.c.name)
    )
    return [UserRecord(*tuple(row)) for row in rows]


def set_user(connection: Connection, name: str, **values: Any) -> None:
    connection.execute(update(users).where(users.c.name == name).values(**values))


def add_session(
    connection: Connection,
    token_hash: str,
    *,
    user_id: int,
    csrf: str,
    now: datetime,
    expires: datetime,
) -> None:
    connection.execute(
        insert(console_sessions),
        {
            "token_hash": token_hash,
            "user_id": user_id,
            "csrf_token": csrf,
            "created_at": now,
            "expires_at": expires,
        },
    )


def session_user(
    connection: Connection, token_hash: str, now: datetime
) -> tuple[UserRecord, str] | None:
    row = connection.execute(
        select(
            users.c.id,
            users.c.name,
            users.c.password_hash,
            users.c.role,
            users.c.disabled,
            console_sessions.c.csrf_token,
        )
        .join(console_sessions, console_sessions.c.user_id == users.c.id)
        .where(console_sessions.c.token_hash == token_hash, console_sessions.c.expires_at > now)
    ).first()
    if row is None:
        return None
    return UserRecord(*tuple(row)[:5]), str(row[5])


def end_session(connection: Connection, token_hash: str) -> None:
    connection.execute(delete(console_sessions).where(console_sessions.c.token_hash == token_hash))


def record(
    connection: Connection,
    *,
    actor: str,
    action: str,
    now: datetime,
    account_id: str | None = None,
    period_start: date | None = None,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
    request: RequestKey | None = None,
) -> int:
    """Write an audit entry; returns its id. With the client's ``request`` key, raises
    :class:`DuplicateRequest` if the actor's key is on an entry already — the caller's
    transaction then rolls back, and nothing of the action is done a second time."""
    try:
        result = connection.execute(
            insert(audit_log).returning(audit_log.c.id),
            {
                "at": now,
                "actor": actor,
                "action": action,
                "account_id": account_id,
                "period_start": period_start,
                "reason": reason,
                "detail": detail or {},
                "request_key": None if request is None else request.key,
                "request_digest": None if request is None else request.digest,
            },
        )
    except IntegrityError:
        # The unique index on (actor, request_key): the key is on a committed entry, or on one
        # a concurrent send is committing (PostgreSQL waits for it, then refuses this insert).
        if request is None:
            raise
        raise DuplicateRequest(actor, request.key, request.digest) from None
    return int(result.scalar_one())


@dataclass(frozen=True, slots=True)
class PriorRequest:
    """The audit entry a request key was first carried out as."""

    entry_id: int
    at: datetime
    action: str
    account_id: str | None
    digest: str | None
    detail: dict[str, Any]


def prior_request(connection: Connection, actor: str, key: str) -> PriorRequest | None:
    row = connection.execute(
        select(
            audit_log.c.id, audit_log.c.at, audit_log.c.action, audit_log.c.account_id,
            audit_log.c.request_digest, audit_log.c.detail,
        ).where(audit_log.c.actor == actor, audit_log.c.request_key == key)
    ).first()  # fmt: skip
    return None if row is None else PriorRequest(*row)


def settle(connection: Connection, entry_id: int, outcome: dict[str, Any]) -> None:
    """Add what an action's Stripe call ended with to its audit entry (``detail.outcome``)."""
    detail = connection.execute(
        select(audit_log.c.detail).where(audit_log.c.id == entry_id)
    ).scalar_one()
    connection.execute(
        update(audit_log)
        .where(audit_log.c.id == entry_id)
        .values(detail={**detail, "outcome": outcome})
    )


def trail(
    connection: Connection, account_id: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    query = select(audit_log).order_by(audit_log.c.at.desc(), audit_log.c.id.desc()).limit(limit)
    if account_id is not None:
        query = query.where(audit_log.c.account_id == account_id)
    return [dict(row) for row in connection.execute(query).mappings()]


def search_accounts(connection: Connection, text: str, limit: int) -> list[dict[str, Any]]:
    pattern = f"%{text.lower()}%"
    rows = connection.execute(
        select(accounts.c.id, accounts.c.name, accounts.c.email, accounts.c.stripe_customer_id)
        .where(
            or_(
                func.lower(accounts.c.id).like(pattern),
                func.lower(accounts.c.name).like(pattern),
                func.lower(accounts.c.email).like(pattern),
                accounts.c.stripe_customer_id == text,
            )
        )
        .order_by(accounts.c.id)
        .limit(limit)
    )
    return [
        {
            "kind": "account",
            "account": r.id,
            "name": r.name,
            "email": r.email,
            "stripe_id": r.stripe_customer_id,
        }
        for r in rows
    ]


def search_invoices(connection: Connection, text: str, limit: int) -> list[dict[str, Any]]:
    rows = connection.execute(
        select(
            invoice_mirror.c.account_id, invoice_mirror.c.number, invoice_mirror.c.stripe_invoice_id
        )
        .where(or_(invoice_mirror.c.number == text, invoice_mirror.c.stripe_invoice_id == text))
        .limit(limit)
    )
    return [
        {
            "kind": "invoice",
            "account": r.account_id,
            "name": r.number,
            "email": None,
            "stripe_id": r.stripe_invoice_id,
        }
        for r in rows
    ]


def recent_intents(
    connection: Connection, account_id: str, limit: int = 30
) -> list[dict[str, Any]]:
    """The account's latest Stripe writes: what, when, and how they ended."""
    rows = connection.execute(
        select(sync_intents)
        .where(sync_intents.c.account_id == account_id)
        .order_by(sync_intents.c.id.desc())
        .limit(limit)
    ).mappings()
    return [dict(row) for row in rows]


def events_of_invoices(
    connection: Connection, invoice_ids: list[str], limit: int = 30
) -> list[dict[str, Any]]:
    """Webhook events about these invoices, newest first."""
    if not invoice_ids:
        return []
    rows = connection.execute(
        select(
            webhook_events.c.id,
            webhook_events.c.type,
            webhook_events.c.created,
            webhook_events.c.outcome,
            webhook_events.c.handled_at,
            webhook_events.c.payload,
        )
        .order_by(webhook_events.c.created.desc())
        .limit(2000)
    ).mappings()
    wanted = set(invoice_ids)
    found = []
    for row in rows:
        obj = (row["payload"].get("data") or {}).get("object") or {}
        if obj.get("id") in wanted:
            found.append({k: row[k] for k in ("id", "type", "created", "outcome", "handled_at")})
        if len(found) >= limit:
            break
    return found


def set_sync_policy(connection: Connection, account_id: str, policy: dict[str, Any] | None) -> None:
    connection.execute(
        update(accounts).where(accounts.c.id == account_id).values(sync_policy=policy)
    )
