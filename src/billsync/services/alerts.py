"""Spend alerts and budgets (core.alerts): set through the API, weighed against the ledger by
the scheduler, each crossing recorded once and sent to the platform as a signed webhook."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
from sqlalchemy import Connection

from billsync.clock import Clock
from billsync.core.alerts import (
    EVENT_TYPE,
    MAX_ATTEMPTS,
    SIGNATURE_HEADER,
    Alert,
    crossed,
    next_attempt,
    sign,
)
from billsync.core.commitment import commitment_on
from billsync.core.money import AmountError, format_minor, parse_amount
from billsync.core.request_keys import RequestKey
from billsync.db.database import Database
from billsync.errors import InvalidRequest, NotFound
from billsync.repositories import alerts as repository
from billsync.repositories import console as audit
from billsync.repositories.accounts import AccountRecord, get_account

log = logging.getLogger("billsync.alerts")

DIMENSION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_ALERTS = 50  # per account
DELIVERIES_PER_RUN = 100


class AlertService:
    def __init__(
        self,
        database: Database,
        clock: Clock,
        default_anchor_day: int,
        *,
        url: str | None,
        secret: str | None,
        post: Callable[..., httpx.Response] | None = None,
    ) -> None:
        self.database = database
        self.clock = clock
        self.default_anchor_day = default_anchor_day
        self.url = url
        self.secret = secret
        self._post = post or httpx.post

    # --- setting alerts ---------------------------------------------------------------

    def create(
        self,
        connection: Connection,
        account_id: str,
        *,
        name: str | None,
        amount: str | None,
        percent_of_commitment: int | None,
        budget: str | None,
        percents: Sequence[int] | None,
        grouping: Mapping[str, str] | None,
        actor: str,
        request: RequestKey | None = None,
    ) -> Alert:
        account = get_account(connection, account_id)
        if account is None:
            raise NotFound(f"account '{account_id}' does not exist", code="account_not_found")
        kinds = [k for k, v in (("amount", amount), ("percent_of_commitment",
                 percent_of_commitment), ("budget", budget)) if v is not None]  # fmt: skip
        if len(kinds) != 1:
            raise InvalidRequest(
                "give one of amount, percent_of_commitment or budget (with percents)",
                code="invalid_alert",
            )
        values: dict[str, Any] = {"name": name}
        if amount is not None:
            values["amount"] = self._amount(amount, account, "amount")
        if percent_of_commitment is not None:
            values["percent_of_commitment"] = percent_of_commitment
        if budget is not None:
            values["budget"] = self._amount(budget, account, "budget")
            if not percents:
                raise InvalidRequest(
                    "percents: the percentages of the budget to be told at, e.g. [50, 80, 100]",
                    code="invalid_alert",
                )
            values["percents"] = sorted(set(percents))
        elif percents:
            raise InvalidRequest("percents: only with a budget", code="invalid_alert")
        if grouping:
            for dimension in grouping:
                if not DIMENSION_NAME.fullmatch(dimension):
                    raise InvalidRequest(
                        f"grouping: {dimension!r} is not a dimension name", code="invalid_alert"
                    )
            values["grouping"] = dict(grouping)
        if repository.count(connection, account_id) >= MAX_ALERTS:
            raise InvalidRequest(
                f"an account has at most {MAX_ALERTS} alerts: delete one first",
                code="too_many_alerts",
            )
        now = self.clock.now()
        alert_id = repository.add(
            connection, account_id, {"created_by": actor, "created_at": now, **values}
        )
        audit.record(
            connection, actor=actor, action="alert.created", now=now, account_id=account_id,
            detail={"alert": alert_id, **{k: v for k, v in values.items() if v is not None}},
            request=request,
        )  # fmt: skip
        return next(a for a in repository.alerts_of(connection, account_id) if a.id == alert_id)

    @staticmethod
    def _amount(text: str, account: AccountRecord, field: str) -> int:
        try:
            minor = parse_amount(text, account.currency)
        except AmountError as error:
            raise InvalidRequest(f"{field}: {error}", code="invalid_amount") from None
        if minor <= 0:
            raise InvalidRequest(f"{field}: a positive amount", code="invalid_amount")
        return minor

    def delete(self, connection: Connection, account_id: str, alert_id: int, *, actor: str) -> None:
        if not repository.remove(connection, account_id, alert_id):
            raise NotFound(
                f"account '{account_id}' has no alert {alert_id}", code="alert_not_found"
            )
        audit.record(
            connection, actor=actor, action="alert.deleted", now=self.clock.now(),
            account_id=account_id, detail={"alert": alert_id},
        )  # fmt: skip

    # --- weighing them (the scheduler) -------------------------------------------------

    def evaluate(self) -> int:
        """Weigh the alerts of every account whose lines changed since they were last weighed
        against its current period and the one before; record each threshold newly reached
        (once per alert, threshold and period). Returns how many were recorded."""
        now = self.clock.now()
        recorded = 0
        with self.database.read() as connection:
            rows = repository.accounts_to_weigh(connection)
        for account_id, checked_at in rows:
            with self.database.transaction() as connection:
                changed = repository.lines_changed_at(connection, account_id)
                if checked_at is not None and (changed is None or changed < checked_at):
                    continue
                recorded += self._weigh(connection, account_id, now)
                repository.weighed(connection, account_id, now)
        return recorded

    def _weigh(self, connection: Connection, account_id: str, now: datetime) -> int:
        account = get_account(connection, account_id)
        if account is None:
            return 0
        schedule = account.schedule(self.default_anchor_day)
        current = schedule.period_for_date(now.date())
        before = schedule.period_for_date(current.start - timedelta(days=1))
        known = {
            (c.alert_id, c.period_start, c.threshold_label)
            for c in repository.crossings_of(connection, account_id)
        }
        # Each period's usage lines read once, whatever the number of alerts.
        usage = {
            p.start: repository.usage_lines(connection, account_id, p.start)
            for p in (before, current)
        }
        recorded = 0
        for alert in repository.alerts_of(connection, account_id):
            for period in (before, current):
                commitment = commitment_on(account.commitments, period.start)
                total = alert.spent(usage[period.start])
                for label, threshold in crossed(alert, total, commitment):
                    if (alert.id, period.start, label) in known:
                        continue
                    event_id = f"evt_{uuid.uuid4().hex}"
                    payload = {
                        "id": event_id,
                        "type": EVENT_TYPE,
                        "created": int(now.timestamp()),
                        "data": {
                            "account": account_id,
                            "alert": alert.id,
                            "name": alert.name,
                            "period": {
                                "start": period.start.isoformat(),
                                "end": period.end.isoformat(),
                            },
                            "threshold": threshold,
                            "threshold_label": label,
                            "spent": total,
                            "currency": account.currency,
                            "grouping": dict(alert.grouping),
                        },
                    }
                    repository.record_crossing(
                        connection,
                        {
                            "alert_id": alert.id, "period_start": period.start,
                            "threshold_label": label, "account_id": account_id,
                            "threshold": threshold, "spent": total, "crossed_at": now,
                            "event_id": event_id, "payload": payload, "attempts": 0,
                            "next_attempt_at": now, "delivered_at": None, "given_up": False,
                            "last_error": None,
                        },
                    )  # fmt: skip
                    log.info(
                        "alert.crossed",
                        extra={"account": account_id, "alert": alert.id, "threshold": label,
                               "spent": format_minor(total, account.currency)},
                    )  # fmt: skip
                    recorded += 1
        return recorded

    # --- telling the platform -------------------------------------------------------------

    def deliver(self) -> int:
        """Send the crossings whose webhook is due; returns how many the platform took. A
        failure is retried with back-off (core.alerts.next_attempt), then given up."""
        if not self.url or not self.secret:
            return 0
        now = self.clock.now()
        with self.database.read() as connection:
            due = repository.due_deliveries(connection, now, DELIVERIES_PER_RUN)
        delivered = 0
        for event_id, payload, attempts in due:
            body = orjson.dumps(payload)
            # The signature's time is the wall clock's: it proves freshness to the platform.
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(self.secret, int(time.time()), body),
                "Billsync-Event-Id": event_id,
            }
            error: str | None = None
            try:
                answer = self._post(self.url, content=body, headers=headers, timeout=5.0)
                if not 200 <= answer.status_code < 300:
                    error = f"HTTP {answer.status_code}"
            except httpx.HTTPError as failure:
                error = f"{type(failure).__name__}: {failure}"[:500]
            tried = attempts + 1
            values: dict[str, Any] = {"attempts": tried, "last_error": error}
            if error is None:
                values["delivered_at"] = self.clock.now()
                delivered += 1
            elif tried >= MAX_ATTEMPTS:
                values["given_up"] = True
                log.error("alert.webhook.given_up", extra={"event": event_id, "error": error})
            else:
                values["next_attempt_at"] = next_attempt(tried, self.clock.now())
            with self.database.transaction() as connection:
                repository.settle_delivery(connection, event_id, values)
        return delivered
