"""Validation of incoming usage events: a decoded JSON object in, a ValidEvent or a Rejection out.

Pure and fast: this runs once per event on the ingest hot path. Checks that need the database
(does the account exist, was this id seen before) belong to the ingest service.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple, TypeGuard

import msgspec

from billsync.core.catalog import DIMENSION_NAME, Catalog, Metric
from billsync.core.text import decode_json, unsafe_character, unsafe_message

MAX_ID_LENGTH = 255
MAX_DIMENSIONS = 16
MAX_DIMENSION_VALUE_LENGTH = 200
# |quantity| of one event; keeps line sums far inside every store's exact range.
MAX_QUANTITY = Decimal(10) ** 15
MAX_DIGITS = 40
MAX_TEXT = 100
FUTURE_TOLERANCE = timedelta(minutes=5)
EVENT_FIELDS = frozenset({"id", "account", "metric", "quantity", "timestamp", "dimensions"})
# Decimal notation in ASCII digits (not another script's: ``"١٢"``; no ``_``), with an optional
# exponent of at most two digits: enough for any quantity in range, as Python writes small
# decimals (``str(Decimal("0.0000001"))`` is ``1E-7``) and JavaScript small numbers. A longer one
# is refused: ``0e999999999`` is a zero no store or formatter should have to write out.
_DECIMAL_TEXT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,2})?")
_BOUNDED_EXPONENT = re.compile(rb"[^eE]*[eE][+-]?[0-9]{1,2}")  # of a JSON number's text
QUANTITY_RULE = (
    f"quantity must be a finite decimal number of at most {MAX_DIGITS} digits, in ASCII digits "
    'with an optional exponent of at most two digits, e.g. 12, "0.25" or 1E-7'
)


class RejectionCode(enum.StrEnum):
    """Stable machine codes of a per-event rejection (documented in the README)."""

    INVALID_EVENT = "invalid_event"
    UNKNOWN_FIELD = "unknown_field"
    INVALID_ID = "invalid_id"
    INVALID_ACCOUNT = "invalid_account"
    UNKNOWN_ACCOUNT = "unknown_account"
    UNKNOWN_METRIC = "unknown_metric"
    METRIC_NOT_PRICED = "metric_not_priced"
    INVALID_QUANTITY = "invalid_quantity"
    TOO_MANY_DECIMALS = "too_many_decimals"
    NEGATIVE_QUANTITY = "negative_quantity"
    QUANTITY_TOO_LARGE = "quantity_too_large"
    INVALID_TIMESTAMP = "invalid_timestamp"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future"
    TIMESTAMP_TOO_OLD = "timestamp_too_old"
    INVALID_DIMENSIONS = "invalid_dimensions"
    MISSING_DIMENSION = "missing_dimension"
    DUPLICATE_IN_BATCH = "duplicate_in_batch"
    DUPLICATE_CONFLICT = "duplicate_conflict"


@dataclass(frozen=True, slots=True)
class Rejection:
    event_id: str | None
    code: RejectionCode
    message: str


class ValidEvent(NamedTuple):
    """An event that passed validation. A named tuple: one is built per event on the hot path
    (a frozen dataclass costs several times more to build), and it is as immutable."""

    id: str
    account: str
    metric: str
    quantity: Decimal
    timestamp: datetime  # aware, UTC
    dimensions: Mapping[str, str]

    def same_payload(self, other: ValidEvent) -> bool:
        """Whether two events with one id describe the same usage (value equality)."""
        return (
            self.account == other.account
            and self.metric == other.metric
            and self.quantity == other.quantity
            and self.timestamp == other.timestamp
            and dict(self.dimensions) == dict(other.dimensions)
        )


@dataclass(frozen=True, slots=True)
class UsageRules:
    """What the validator needs besides the event: the catalog, the time, the horizon."""

    catalog: Catalog
    now: datetime
    horizon: timedelta
    earliest: datetime = field(init=False)
    latest: datetime = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "earliest", self.now - self.horizon)
        object.__setattr__(self, "latest", self.now + FUTURE_TOLERANCE)


class LongExponent:
    """A JSON number whose exponent has more than two digits (``0e999999999``), as the generic
    decoder gives it: no quantity, whatever its value (see ``_DECIMAL_TEXT``)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _json_number(text: str) -> Decimal | LongExponent:
    """The generic decoder's reading of a JSON number with a fraction or an exponent: exact."""
    if ("e" in text or "E" in text) and not _BOUNDED_EXPONENT.fullmatch(text.encode()):
        return LongExponent(text)
    return Decimal(text)


def parse_quantity(raw: object) -> Decimal | None:
    """A JSON number (decoded exactly as Decimal or int) or a decimal string (``_DECIMAL_TEXT``);
    None if invalid.

    At most MAX_DIGITS significant digits: enough for any real quantity, and it keeps every
    sum billsync makes exact."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        number = Decimal(raw)
    elif isinstance(raw, Decimal):
        number = raw
    elif isinstance(raw, str) and len(raw) <= MAX_TEXT and _DECIMAL_TEXT.fullmatch(raw):
        try:
            number = Decimal(raw)
        except InvalidOperation:  # pragma: no cover - the pattern admits only valid text
            return None
    else:
        return None
    if not number.is_finite() or len(number.as_tuple().digits) > MAX_DIGITS:
        return None
    return number


def decimal_places(number: Decimal) -> int:
    """Decimal places of the value ("1.50" has one), computed without any rounding context."""
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    if exponent >= 0:
        return 0
    trailing_zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return max(0, -exponent - trailing_zeros)


def parse_timestamp(raw: object) -> datetime | None:
    """RFC 3339 with an explicit offset ('Z' or ±hh:mm), as UTC; None if invalid.

    Parsed by msgspec, the same parser as the batch fast path, so both paths agree."""
    if not isinstance(raw, str):
        return None
    try:
        moment = msgspec.convert(raw, datetime)
    except msgspec.ValidationError:
        return None
    return _as_utc(moment)


def _as_utc(moment: datetime) -> datetime | None:
    """The moment in UTC; None if it has no offset or leaves the calendar once in UTC."""
    if moment.tzinfo is None:
        return None
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return None


def _check_dimensions(raw: object, event_id: str, metric: Metric) -> Mapping[str, str] | Rejection:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return Rejection(event_id, RejectionCode.INVALID_DIMENSIONS, "dimensions must be an object")
    if len(raw) > MAX_DIMENSIONS:
        return Rejection(
            event_id,
            RejectionCode.INVALID_DIMENSIONS,
            f"at most {MAX_DIMENSIONS} dimensions per event, got {len(raw)}",
        )
    for name, value in raw.items():
        if isinstance(value, str) and (name, value) in _VALID_DIMENSIONS:  # valid before
            continue
        if not DIMENSION_NAME.fullmatch(name):
            return Rejection(
                event_id,
                RejectionCode.INVALID_DIMENSIONS,
                f"dimension name {name!r} must be lower-case letters, digits and '_' "
                "(at most 40 characters)",
            )
        if not isinstance(value, str) or not value or len(value) > MAX_DIMENSION_VALUE_LENGTH:
            return Rejection(
                event_id,
                RejectionCode.INVALID_DIMENSIONS,
                f"dimension {name!r} must be a non-empty string of at most "
                f"{MAX_DIMENSION_VALUE_LENGTH} characters",
            )
        unsafe = unsafe_character(value)
        if unsafe is not None:
            return Rejection(
                event_id,
                RejectionCode.INVALID_DIMENSIONS,
                unsafe_message(f"the value of dimension {name!r}", unsafe),
            )
        _remember(_VALID_DIMENSIONS, (name, value))
    for name in metric.group_by:
        if name not in raw:
            return Rejection(
                event_id,
                RejectionCode.MISSING_DIMENSION,
                f"metric '{metric.id}' groups usage by '{name}': the event must carry it",
            )
    if metric.unique_by is not None and metric.unique_by not in raw:
        return Rejection(
            event_id,
            RejectionCode.MISSING_DIMENSION,
            f"metric '{metric.id}' counts distinct values of '{metric.unique_by}': "
            "the event must carry it",
        )
    return raw


def _valid_text(raw: object) -> TypeGuard[str]:
    return (
        isinstance(raw, str)
        and 0 < len(raw) <= MAX_ID_LENGTH
        and raw.isprintable()
        and raw.strip() == raw
    )


# Texts that passed a check that depends on nothing else (an account id, a dimension's name and
# value): they repeat from event to event, so the next occurrence is a set look-up. Bounded:
# emptied when full, so a producer sending ever-new values costs memory once, not forever.
_VALID_ACCOUNTS: set[object] = set()
_VALID_DIMENSIONS: set[object] = set()
_REMEMBERED = 50_000


def _remember(seen: set[object], value: object) -> None:
    if len(seen) >= _REMEMBERED:
        seen.clear()
    seen.add(value)


def _valid_account(raw: object) -> TypeGuard[str]:
    if isinstance(raw, str) and raw in _VALID_ACCOUNTS:  # (a list or dict is unhashable)
        return True
    if not _valid_text(raw):
        return False
    _remember(_VALID_ACCOUNTS, raw)
    return True


def validate_event(raw: Any, rules: UsageRules) -> ValidEvent | Rejection:
    """Check one generically decoded event (a dict) against the catalog and the clock."""
    if not isinstance(raw, dict):
        return Rejection(None, RejectionCode.INVALID_EVENT, "each event must be a JSON object")
    raw_id = raw.get("id")
    if not _valid_text(raw_id):
        return Rejection(
            None,
            RejectionCode.INVALID_ID,
            "id is required: a producer-chosen unique string of 1–255 printable characters",
        )
    if len(raw) > 6 or not EVENT_FIELDS.issuperset(raw):
        unknown = sorted(set(raw) - EVENT_FIELDS)
        return Rejection(
            raw_id,
            RejectionCode.UNKNOWN_FIELD,
            f"unknown field(s) {unknown}; an event has {sorted(EVENT_FIELDS)}",
        )
    raw_quantity = raw.get("quantity")
    return _check_fields(
        raw_id,
        raw.get("account"),
        raw.get("metric"),
        parse_quantity(raw_quantity),
        raw_quantity,
        parse_timestamp(raw.get("timestamp")),
        raw.get("dimensions"),
        rules,
    )


class WireEvent(msgspec.Struct, forbid_unknown_fields=True):
    """The wire shape of an event, type-checked by msgspec while decoding (the fast path)."""

    id: str
    account: str
    metric: str
    quantity: msgspec.Raw
    timestamp: datetime
    dimensions: dict[str, str] | None = None


class WireBatch(msgspec.Struct, forbid_unknown_fields=True):
    events: list[WireEvent]


def _raw_quantity(raw: msgspec.Raw) -> Decimal | None:
    text = bytes(raw)
    first = text[:1]
    if first == b'"':
        try:
            return parse_quantity(decode_generic(text))
        except msgspec.DecodeError:  # not UTF-8, or a lone surrogate: no decimal either
            return None
    if first.isdigit() or first == b"-":
        # A JSON number (msgspec validated the token): its text is exact Decimal syntax.
        if (b"e" in text or b"E" in text) and not _BOUNDED_EXPONENT.fullmatch(text):
            return None
        return parse_quantity(Decimal(text.decode()))
    return None


def _as_sent(raw: object) -> object:
    """A quantity as the producer wrote it, for a message (only built when one is needed)."""
    return bytes(raw).decode(errors="replace") if isinstance(raw, msgspec.Raw) else raw


def validate_wire_event(event: WireEvent, rules: UsageRules) -> ValidEvent | Rejection:
    """Check an event whose JSON types msgspec already checked; same rules as validate_event."""
    if not _valid_text(event.id):
        return Rejection(
            None,
            RejectionCode.INVALID_ID,
            "id is required: a producer-chosen unique string of 1–255 printable characters",
        )
    timestamp = event.timestamp
    return _check_fields(
        event.id,
        event.account,
        event.metric,
        _raw_quantity(event.quantity),
        event.quantity,
        _as_utc(timestamp),
        event.dimensions,
        rules,
    )


def _check_fields(  # noqa: PLR0917 - one positional call per event, on the hot path
    event_id: str,
    account: object,
    metric_id: object,
    quantity: Decimal | None,
    quantity_as_sent: object,
    timestamp: datetime | None,
    raw_dimensions: object,
    rules: UsageRules,
) -> ValidEvent | Rejection:
    if not _valid_account(account):
        return Rejection(
            event_id, RejectionCode.INVALID_ACCOUNT, "account is required: the account's id"
        )
    metric = rules.catalog.metrics.get(metric_id) if isinstance(metric_id, str) else None
    if metric is None:
        return Rejection(
            event_id,
            RejectionCode.UNKNOWN_METRIC,
            f"metric {metric_id!r} is not in the catalog (GET /v1/catalog lists them)",
        )
    if quantity is None:
        return Rejection(event_id, RejectionCode.INVALID_QUANTITY, QUANTITY_RULE)
    exponent = quantity.as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > metric.decimals and decimal_places(quantity) > metric.decimals:
        return Rejection(
            event_id,
            RejectionCode.TOO_MANY_DECIMALS,
            f"metric '{metric.id}' takes at most {metric.decimals} decimal place(s), "
            f"got {_as_sent(quantity_as_sent)}",
        )
    if quantity < 0 and not metric.allow_negative:
        return Rejection(
            event_id,
            RejectionCode.NEGATIVE_QUANTITY,
            f"metric '{metric.id}' does not take negative quantities (corrections)",
        )
    if quantity.copy_abs() > MAX_QUANTITY:
        return Rejection(
            event_id, RejectionCode.QUANTITY_TOO_LARGE, "quantity must be at most 10^15 per event"
        )
    if timestamp is None:
        return Rejection(
            event_id,
            RejectionCode.INVALID_TIMESTAMP,
            "timestamp must be RFC 3339 with an offset, e.g. 2026-11-26T10:00:00Z",
        )
    if timestamp > rules.latest:
        return Rejection(
            event_id,
            RejectionCode.TIMESTAMP_IN_FUTURE,
            "timestamp is more than 5 minutes ahead of billsync's clock "
            f"({rules.now:%Y-%m-%dT%H:%M:%SZ})",
        )
    if timestamp < rules.earliest:
        return Rejection(
            event_id,
            RejectionCode.TIMESTAMP_TOO_OLD,
            f"timestamp is older than the usage horizon ({rules.horizon.days} days)",
        )
    dimensions = _check_dimensions(raw_dimensions, event_id, metric)
    if isinstance(dimensions, Rejection):
        return dimensions
    return ValidEvent(event_id, account, metric.id, quantity, timestamp, dimensions)


_generic_decoder = msgspec.json.Decoder(float_hook=_json_number)
_batch_decoder = msgspec.json.Decoder(WireBatch)


class BatchShapeError(ValueError):
    """The body is not ``{"events": [...]}``; ``code`` says how."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def decode_generic(body: bytes) -> Any:
    """JSON with every number decoded exactly (Decimal for fractions, int for integers,
    :class:`LongExponent` for an exponent of more than two digits). Raises
    ``msgspec.DecodeError`` for any unreadable body (see ``core.text.decode_json``)."""
    return decode_json(_generic_decoder, body)


def validate_body(body: bytes, rules: UsageRules, max_events: int) -> list[ValidEvent | Rejection]:
    """Decode and validate a whole ``{"events": [...]}`` body.

    Fast path: msgspec decodes and type-checks the batch in C when every event is well-formed.
    Otherwise the body is decoded generically and each event checked on its own, so that one
    bad event is reported precisely and does not sink the others. Raises
    ``msgspec.DecodeError`` for malformed JSON and :class:`BatchShapeError` for a wrong shape.
    """
    try:
        batch = decode_json(_batch_decoder, body)
    except msgspec.ValidationError:
        pass
    else:
        if len(batch.events) > max_events:
            raise BatchShapeError(
                "batch_too_large",
                f"{len(batch.events)} events in one batch; the limit is {max_events}",
            )
        return [validate_wire_event(event, rules) for event in batch.events]
    document = decode_generic(body)
    if not isinstance(document, dict) or "events" not in document:
        raise BatchShapeError("invalid_batch", 'the body must be an object {"events": [...]}')
    unknown = set(document) - {"events"}
    if unknown:
        raise BatchShapeError("invalid_batch", f"unknown field(s) {sorted(unknown)}")
    events = document["events"]
    if not isinstance(events, list):
        raise BatchShapeError("invalid_batch", "events must be a list")
    if len(events) > max_events:
        raise BatchShapeError(
            "batch_too_large", f"{len(events)} events in one batch; the limit is {max_events}"
        )
    return [validate_event(event, rules) for event in events]
