"""Accounts: the customers billsync keeps a ledger for."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import Connection

from billsync.clock import Clock
from billsync.core.catalog import Catalog
from billsync.core.money import CurrencyError, normalize_currency
from billsync.core.periods import MAX_ANCHOR_DAY, MIN_ANCHOR_DAY
from billsync.core.text import UNSAFE_CHARACTERS, unsafe_character, unsafe_message
from billsync.errors import Conflict, InvalidRequest, NotFound
from billsync.repositories import accounts as repository
from billsync.repositories.accounts import AccountExists, AccountRecord

ACCOUNT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,254}$")
# No "@", no white space, none of the characters no text may carry (core.text), on either
# side — written so that Python and JSON Schema (ECMA) regular expressions read it the same way
# (their "\s" differ).
_EMAIL_PART = rf"[^@\s{UNSAFE_CHARACTERS}\ufeff]"
EMAIL_PATTERN = rf"^{_EMAIL_PART}{{1,64}}@{_EMAIL_PART}{{1,255}}$"
EMAIL = re.compile(EMAIL_PATTERN)


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
        if new.email is not None and (
            not EMAIL.fullmatch(new.email) or unsafe_character(new.email) is not None
        ):
            raise InvalidRequest(f"{new.email!r} is not an email address", code="invalid_email")
        if new.billing_anchor_day is not None and not (
            MIN_ANCHOR_DAY <= new.billing_anchor_day <= MAX_ANCHOR_DAY
        ):
            raise InvalidRequest(
                "billing_anchor_day must be between 1 and 28", code="invalid_anchor_day"
            )
        name = (new.name or new.id).strip()
        if not name or len(name) > 255:
            raise InvalidRequest("name must be 1–255 characters", code="invalid_name")
        unsafe = unsafe_character(name)
        if unsafe is not None:
            raise InvalidRequest(unsafe_message("name", unsafe), code="invalid_name")
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
