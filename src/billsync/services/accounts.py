"""Accounts: the customers billsync keeps a ledger for."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection

from billsync.clock import Clock
from billsync.core.catalog import Catalog
from billsync.core.commitment import Commitment, commitments_document
from billsync.core.money import (
    AmountError,
    CurrencyError,
    format_minor,
    normalize_currency,
    parse_amount,
)
from billsync.core.periods import MAX_ANCHOR_DAY, MIN_ANCHOR_DAY
from billsync.core.policy import PolicyError, SyncPolicy
from billsync.core.request_keys import RequestKey
from billsync.core.text import UNSAFE_CHARACTERS, unsafe_character, unsafe_message
from billsync.errors import Conflict, InvalidRequest, NotFound
from billsync.repositories import accounts as repository
from billsync.repositories import console as audit
from billsync.repositories import ledger
from billsync.repositories.accounts import AccountExists, AccountFilter, AccountRecord
from billsync.services.rates import changeable_from

ACCOUNT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,254}$")
# No "@", no white space, none of the characters no text may carry (core.text), on either
# side — written so that Python and JSON Schema (ECMA) regular expressions read it the same way
# (their "\s" differ).
_EMAIL_PART = rf"[^@\s{UNSAFE_CHARACTERS}\ufeff]"
EMAIL_PATTERN = rf"^{_EMAIL_PART}{{1,64}}@{_EMAIL_PART}{{1,255}}$"
EMAIL = re.compile(EMAIL_PATTERN)
# A name is stripped of white space: it keeps a character that is neither white space nor one
# no text may carry (what Python's str.strip removes, written for JSON Schema too).
_SPACES = r"\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NAME_PATTERN = rf"^[^{UNSAFE_CHARACTERS}]*[^{UNSAFE_CHARACTERS}{_SPACES}][^{UNSAFE_CHARACTERS}]*$"
ACCOUNT_ID_PATTERN = ACCOUNT_ID.pattern


MAX_PAGE = 500  # accounts per page of GET /v1/accounts


class Unchanged(enum.Enum):
    """A field an update leaves as it is (``None`` is a value: no email, the default policy)."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED


@dataclass(frozen=True, slots=True)
class AccountChanges:
    """What ``PATCH /v1/accounts/{id}`` and ``billsync accounts update`` may change."""

    name: str | Unchanged = UNCHANGED
    email: str | Unchanged | None = UNCHANGED
    # {"policy", "interval_seconds", "threshold"}, or None: the deployment's default.
    sync_policy: dict[str, Any] | Unchanged | None = UNCHANGED
    # For future periods: the current one keeps its dates (core.periods.AnchorSchedule).
    billing_anchor_day: int | Unchanged = UNCHANGED
    # The minimum per period in major units (None: none), from ``minimum_amount_from`` (a
    # period start; default the current period's) on: core.commitment.
    minimum_amount: str | Unchanged | None = UNCHANGED
    minimum_amount_from: date | None = None


@dataclass(frozen=True, slots=True)
class AccountPage:
    accounts: list[AccountRecord]
    next: str | None  # the cursor of the next page; None on the last one


def decode_cursor(cursor: str) -> str:
    """A page's ``next`` is the id of its last account: the next page starts after it (any
    account id is a cursor, so a page boundary survives that account's deletion)."""
    if not ACCOUNT_ID.fullmatch(cursor):
        raise InvalidRequest(
            "cursor is the 'next' of a page of accounts (an account id)", code="invalid_cursor"
        )
    return cursor


def _checked_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 255:
        raise InvalidRequest("name must be 1–255 characters", code="invalid_name")
    unsafe = unsafe_character(name)
    if unsafe is not None:
        raise InvalidRequest(unsafe_message("name", unsafe), code="invalid_name")
    return name


def _checked_email(email: str) -> str:
    if not EMAIL.fullmatch(email) or unsafe_character(email) is not None:
        raise InvalidRequest(f"{email!r} is not an email address", code="invalid_email")
    return email


def _checked_anchor_day(day: int) -> int:
    if isinstance(day, bool) or not MIN_ANCHOR_DAY <= day <= MAX_ANCHOR_DAY:
        raise InvalidRequest(
            "billing_anchor_day must be between 1 and 28", code="invalid_anchor_day"
        )
    return day


def checked_policy(policy: dict[str, Any] | None) -> dict[str, Any] | None:
    """The account's own policy, or None for the default (an empty one is the default)."""
    if not policy:
        return None
    try:
        SyncPolicy().merged(policy)  # its bounds included (core.policy)
    except PolicyError as error:
        raise InvalidRequest(str(error), code="invalid_policy") from None
    return dict(policy)


@dataclass(frozen=True, slots=True)
class NewAccount:
    id: str
    currency: str
    name: str | None = None
    email: str | None = None
    billing_anchor_day: int | None = None


class AccountService:
    def __init__(self, catalog: Catalog, clock: Clock) -> None:
        self.catalog = catalog
        self.clock = clock

    def create(self, connection: Connection, new: NewAccount) -> AccountRecord:
        if not ACCOUNT_ID.fullmatch(new.id):
            raise InvalidRequest(
                "id must start with a letter or digit and use only letters, digits, "
                "'_', '.', ':' or '-' (at most 255 characters)",
                code="invalid_account_id",
            )
        try:
            currency = normalize_currency(new.currency)
        except CurrencyError as error:
            raise InvalidRequest(str(error), code="invalid_currency") from None
        if currency not in self.catalog.currencies:
            raise InvalidRequest(
                f"the catalog has no prices in '{currency}'; it bills in "
                f"{', '.join(self.catalog.currencies)}",
                code="currency_not_supported",
            )
        if new.email is not None:
            _checked_email(new.email)
        if new.billing_anchor_day is not None:
            _checked_anchor_day(new.billing_anchor_day)
        name = _checked_name(new.name or new.id)
        record = AccountRecord(
            id=new.id,
            name=name,
            email=new.email,
            currency=currency,
            billing_anchor_day=new.billing_anchor_day,
            stripe_customer_id=None,
            created_at=self.clock.now(),
        )
        try:
            repository.insert_account(connection, record)
        except AccountExists:
            raise Conflict(f"account '{new.id}' already exists", code="account_exists") from None
        return record

    def get(self, connection: Connection, account_id: str) -> AccountRecord:
        record = repository.get_account(connection, account_id)
        if record is None:
            raise NotFound(f"account '{account_id}' does not exist", code="account_not_found")
        return record

    def list(
        self,
        connection: Connection,
        wanted: AccountFilter,
        *,
        cursor: str | None = None,
        limit: int = 100,
    ) -> AccountPage:
        """A page of accounts in id order, from the one after ``cursor``."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be 1–{MAX_PAGE}", code="invalid_limit")
        after = None if cursor is None else decode_cursor(cursor)
        found = repository.list_accounts(connection, wanted, after=after, limit=limit + 1)
        more = len(found) > limit
        page = found[:limit]
        return AccountPage(page, page[-1].id if more else None)

    def _commitment(
        self,
        connection: Connection,
        account: AccountRecord,
        text: str | None,
        effective_from: date | None,
        *,
        default_anchor_day: int,
        now: datetime,
        actor: str,
    ) -> Commitment:
        """The minimum commitment asked for, checked: an exact amount of the account's
        currency, from one of its period starts that is still open (core.commitment)."""
        amount = None
        if text is not None:
            try:
                amount = parse_amount(text, account.currency)
            except AmountError as error:
                raise InvalidRequest(f"minimum_amount: {error}", code="invalid_amount") from None
            if amount < 0:
                raise InvalidRequest(
                    "minimum_amount: a minimum commitment is not negative", code="invalid_amount"
                )
        _, start = changeable_from(
            connection, account, default_anchor_day, now, effective_from,
            field="minimum_amount_from", what="minimum commitment",
        )  # fmt: skip
        return Commitment(start, amount, now, actor)

    def update(
        self,
        connection: Connection,
        account_id: str,
        changes: AccountChanges,
        *,
        actor: str,
        default_anchor_day: int,
        reason: str | None = None,
        request: RequestKey | None = None,
    ) -> AccountRecord:
        """Change the account and audit what changed (``account.update``), in the caller's
        transaction; a ``request`` key already carried out raises :class:`DuplicateRequest`. A
        new anchor day applies to future periods: the one running now keeps its dates (so does
        a later one that already holds usage), the next one ends on the new day."""
        values: dict[str, Any] = {}
        if not isinstance(changes.name, Unchanged):
            values["name"] = _checked_name(changes.name)
        if not isinstance(changes.email, Unchanged):
            values["email"] = None if changes.email is None else _checked_email(changes.email)
        if not isinstance(changes.sync_policy, Unchanged):
            values["sync_policy"] = checked_policy(changes.sync_policy)
        anchor_day = None
        if not isinstance(changes.billing_anchor_day, Unchanged):
            anchor_day = _checked_anchor_day(changes.billing_anchor_day)
        # Under the account's ledger lock, the one ingest takes to place usage and create
        # periods: no period is created between the schedule read here and the change.
        ledger.lock_accounts(connection, [account_id])
        account = repository.lock_account(connection, account_id)
        if account is None:
            raise NotFound(f"account '{account_id}' does not exist", code="account_not_found")
        detail: dict[str, Any] = {
            field: value for field, value in values.items() if getattr(account, field) != value
        }
        values = {field: values[field] for field in detail}
        if anchor_day is not None:
            schedule = account.schedule(default_anchor_day)
            changed = schedule.changed_to(
                anchor_day,
                self.clock.now().date(),
                begun_until=repository.latest_period_end(connection, account_id),
            )
            if changed != schedule or account.billing_anchor_day is None:
                values["billing_anchor_day"] = changed.anchor_day
                values["anchor_changes"] = repository.anchor_changes_document(changed.earlier)
            if changed != schedule:
                applies_from: date | None = changed.applies_from()
                detail["billing_anchor_day"] = changed.anchor_day
                detail["anchor_applies_from"] = applies_from and applies_from.isoformat()
        now = self.clock.now()
        if not isinstance(changes.minimum_amount, Unchanged):
            commitment = self._commitment(
                connection, account, changes.minimum_amount, changes.minimum_amount_from,
                default_anchor_day=default_anchor_day, now=now, actor=actor,
            )  # fmt: skip
            kept = [c for c in account.commitments if c.effective_from < commitment.effective_from]
            if [(c.effective_from, c.amount) for c in account.commitments] != [
                (c.effective_from, c.amount) for c in (*kept, commitment)
            ]:
                values["commitments"] = commitments_document([*kept, commitment])
                detail["minimum_amount"] = (
                    None
                    if commitment.amount is None
                    else format_minor(commitment.amount, account.currency)
                )
                detail["minimum_amount_from"] = commitment.effective_from.isoformat()
        if not values:
            return account
        repository.update_account(connection, account_id, now, **values)
        if detail:
            audit.record(
                connection, actor=actor, action="account.update", now=now, account_id=account_id,
                reason=reason, detail=detail, request=request,
            )  # fmt: skip
        updated = repository.get_account(connection, account_id)
        assert updated is not None
        return updated
