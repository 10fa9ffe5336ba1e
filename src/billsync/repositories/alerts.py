"""Spend alerts, their crossings and the webhooks' delivery state (core.alerts)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.engine import RowMapping

from billsync.core.alerts import Alert
from billsync.core.folding import BOOKED_METRICS
from billsync.db.tables import alert_crossings, lines, spend_alerts


@dataclass(frozen=True, slots=True)
class Crossing:
    alert_id: int
    period_start: date
    threshold_label: str
    threshold: int
    spent: int
    crossed_at: datetime
    event_id: str
    attempts: int
    delivered_at: datetime | None
    given_up: bool
    last_error: str | None

    @property
    def state(self) -> Literal["pending", "delivered", "failed"]:
        if self.delivered_at is not None:
            return "delivered"
        return "failed" if self.given_up else "pending"


def _alert(row: RowMapping) -> Alert:
    return Alert(
        id=row["id"],
        account_id=row["account_id"],
        name=row["name"],
        amount=row["amount"],
        percent_of_commitment=row["percent_of_commitment"],
        budget=row["budget"],
        percents=tuple(row["percents"] or ()),
        grouping=dict(row["grouping"] or {}),
    )


def alerts_of(connection: Connection, account_id: str) -> list[Alert]:
    rows = connection.execute(
        select(spend_alerts)
        .where(spend_alerts.c.account_id == account_id)
        .order_by(spend_alerts.c.id)
    ).mappings()
    return [_alert(row) for row in rows]


def crossings_of(connection: Connection, account_id: str) -> list[Crossing]:
    rows = connection.execute(
        select(alert_crossings)
        .where(alert_crossings.c.account_id == account_id)
        .order_by(alert_crossings.c.crossed_at, alert_crossings.c.threshold)
    ).mappings()
    return [
        Crossing(
            r["alert_id"],
            r["period_start"],
            r["threshold_label"],
            r["threshold"],
            r["spent"],
            r["crossed_at"],
            r["event_id"],
            r["attempts"],
            r["delivered_at"],
            r["given_up"],
            r["last_error"],
        )
        for r in rows
    ]


def usage_lines(
    connection: Connection, account_id: str, start: date
) -> list[tuple[Mapping[str, str], int]]:
    """(grouping, amount) of each usage line of the period — what alerts weigh (core.alerts)."""
    return [
        (grouping or {}, amount)
        for metric, grouping, amount in connection.execute(
            select(lines.c.metric, lines.c.grouping, lines.c.amount).where(
                lines.c.account_id == account_id, lines.c.period_start == start
            )
        )
        if metric not in BOOKED_METRICS
    ]


def count(connection: Connection, account_id: str) -> int:
    return int(
        connection.execute(
            select(func.count()).where(spend_alerts.c.account_id == account_id)
        ).scalar_one()
    )


def add(connection: Connection, account_id: str, values: Mapping[str, Any]) -> int:
    return int(
        connection.execute(
            insert(spend_alerts).returning(spend_alerts.c.id),
            {"account_id": account_id, **values},
        ).scalar_one()
    )


def remove(connection: Connection, account_id: str, alert_id: int) -> bool:
    """Delete the alert and its crossings; False when the account has no such alert."""
    found = connection.execute(
        select(spend_alerts.c.id).where(
            spend_alerts.c.id == alert_id, spend_alerts.c.account_id == account_id
        )
    ).first()
    if found is None:
        return False
    connection.execute(delete(alert_crossings).where(alert_crossings.c.alert_id == alert_id))
    connection.execute(delete(spend_alerts).where(spend_alerts.c.id == alert_id))
    return True


def accounts_to_weigh(connection: Connection) -> list[tuple[str, datetime | None]]:
    """Each account with alerts, and when its alerts were last weighed (None: never)."""
    rows = connection.execute(
        select(spend_alerts.c.account_id, func.min(spend_alerts.c.checked_at)).group_by(
            spend_alerts.c.account_id
        )
    ).all()
    return [(row[0], row[1]) for row in rows]


def lines_changed_at(connection: Connection, account_id: str) -> datetime | None:
    result: datetime | None = connection.execute(
        select(func.max(lines.c.updated_at)).where(lines.c.account_id == account_id)
    ).scalar_one()
    return result


def weighed(connection: Connection, account_id: str, now: datetime) -> None:
    connection.execute(
        update(spend_alerts).where(spend_alerts.c.account_id == account_id).values(checked_at=now)
    )


def record_crossing(connection: Connection, values: Mapping[str, Any]) -> None:
    connection.execute(insert(alert_crossings), dict(values))


def due_deliveries(
    connection: Connection, now: datetime, limit: int
) -> list[tuple[str, dict[str, Any], int]]:
    """(event id, payload, attempts so far) of the webhooks due, oldest crossing first."""
    rows = connection.execute(
        select(alert_crossings.c.event_id, alert_crossings.c.payload, alert_crossings.c.attempts)
        .where(
            alert_crossings.c.delivered_at.is_(None),
            alert_crossings.c.given_up.is_(False),
            alert_crossings.c.next_attempt_at <= now,
        )
        .order_by(alert_crossings.c.crossed_at)
        .limit(limit)
    ).all()
    return [(row[0], row[1], row[2]) for row in rows]


def settle_delivery(connection: Connection, event_id: str, values: Mapping[str, Any]) -> None:
    connection.execute(
        update(alert_crossings).where(alert_crossings.c.event_id == event_id).values(**values)
    )
