"""Prepaid credit grants: ``POST/GET /v1/accounts/{id}/credit-grants`` (core.credits)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from billsync.clock import Clock
from billsync.core.money import AmountError, format_minor, normalize_currency, parse_amount
from billsync.core.request_keys import RequestKey
from billsync.errors import InvalidRequest, NotFound
from billsync.repositories import console as audit
from billsync.repositories import credits as repository
from billsync.repositories import ledger
from billsync.repositories.accounts import get_account
from billsync.repositories.credits import GrantRecord

REASON_LIMIT = 500  # credit_grants.reason


class CreditGrants:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def grant(
        self,
        connection: Connection,
        account_id: str,
        *,
        amount: str,
        currency: str,
        expires_at: datetime,
        reason: str | None,
        actor: str,
        request: RequestKey | None = None,
    ) -> GrantRecord:
        """Grant the account prepaid credit, audited as ``credit_grant.created``; a ``request``
        key already carried out raises :class:`DuplicateRequest` (nothing granted twice)."""
        if reason is not None and len(reason) > REASON_LIMIT:
            raise InvalidRequest(
                f"reason: at most {REASON_LIMIT} characters (it is kept with the grant)",
                code="invalid_reason",
            )
        ledger.lock_accounts(connection, [account_id])
        account = get_account(connection, account_id)
        if account is None:
            raise NotFound(f"account '{account_id}' does not exist", code="account_not_found")
        try:
            code = normalize_currency(currency)
        except ValueError as error:
            raise InvalidRequest(f"currency: {error}", code="invalid_currency") from None
        if code != account.currency:
            raise InvalidRequest(
                f"currency: the account is billed in {account.currency.upper()}, a grant in "
                f"{code.upper()} could never be drawn",
                code="currency_mismatch",
            )
        try:
            minor = parse_amount(amount, code)
        except AmountError as error:
            raise InvalidRequest(f"amount: {error}", code="invalid_amount") from None
        if minor <= 0:
            raise InvalidRequest("amount: a grant is a positive amount", code="invalid_amount")
        now = self.clock.now()
        if expires_at.tzinfo is None:
            raise InvalidRequest(
                "expires_at: give a time zone, e.g. 2027-06-30T00:00:00Z", code="invalid_expiry"
            )
        if expires_at <= now:
            raise InvalidRequest(
                f"expires_at: {expires_at.isoformat()} has passed; a grant expires in the future",
                code="invalid_expiry",
            )
        grant_id = repository.add_grant(
            connection, account_id=account_id, currency=code, amount=minor,
            expires_at=expires_at, reason=reason, actor=actor, now=now,
        )  # fmt: skip
        audit.record(
            connection, actor=actor, action="credit_grant.created", now=now,
            account_id=account_id, reason=reason,
            detail={"grant": grant_id, "amount": format_minor(minor, code), "currency": code,
                    "expires_at": expires_at.isoformat()},
            request=request,
        )  # fmt: skip
        return next(g for g in repository.grants_of(connection, account_id) if g.id == grant_id)
