"""How a stream message carries usage events, and their validation.

A message body is one of:

- **one event**: a JSON object, exactly one event of ``POST /v1/usage``'s ``events``;
- **a JSON array of events**: ``[{...}, {...}]``;
- **JSON Lines**: one event object per line (blank lines are ignored).

Each event is validated on its own, like the API's: one bad event is rejected with its code and
does not sink the others. A line of JSON Lines, or an item of an array, that cannot be read (not
JSON, not UTF-8, nested too deeply) is *unreadable* (the others still count); a body that is not
JSON at all (nor JSON Lines with a readable line) is unreadable as a whole. Every outcome keeps
the text of its event, for the rejects file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from billsync.core.text import decode_json
from billsync.core.usage import (
    Rejection,
    UsageRules,
    ValidEvent,
    WireEvent,
    decode_generic,
    validate_event,
    validate_wire_event,
)

INVALID_JSON = "invalid_json"  # the code of an unreadable body or line (as `billsync ingest`'s)

_event_decoder = msgspec.json.Decoder(WireEvent)
_event_list_decoder = msgspec.json.Decoder(list[WireEvent])
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_WHITESPACE = b" \t\r\n"


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Text that cannot be read: a line of JSON Lines or an item of an array (``position``),
    or the whole body (None)."""

    position: int | None
    reason: str
    text: bytes


@dataclass(slots=True)
class DecodedMessage:
    """The events of one message, validated. ``parts`` gives each outcome's position in the
    message and its text. It is None for a single event (the body is its text) and for an
    array decoded on the fast path, whose texts are read again from the body only if asked
    for (a rejected event): most messages never need them."""

    outcomes: list[ValidEvent | Rejection]
    parts: list[tuple[int, bytes]] | None = None
    unreadable: Sequence[Unreadable] = ()
    array: bool = False

    @property
    def malformed(self) -> bool:
        """Nothing in it could be read: the message itself is bad input."""
        return not self.outcomes and bool(self.unreadable)

    def part(self, index: int, body: bytes) -> tuple[int, bytes]:
        """(position, text) of the ``index``-th outcome; ``body`` is the message's."""
        if self.parts is None:
            if not self.array:
                return (0, body)
            items = decode_json(_raw_list_decoder, body)
            self.parts = list(enumerate(bytes(item) for item in items))
        return self.parts[index]


def decode_message(body: bytes, rules: UsageRules) -> DecodedMessage:
    """Decode and validate every event of a message body (see the module's docstring)."""
    first = body[:1]
    if first and first in _WHITESPACE:
        first = body.lstrip(_WHITESPACE)[:1]
    if first == b"[":
        return _array(body, rules)
    try:
        return DecodedMessage([_event(body, rules)])
    except msgspec.DecodeError as error:
        lines = [line for line in body.split(b"\n") if line.strip(_WHITESPACE)]
        if len(lines) > 1:
            return _lines(lines, rules)
        reason = f"not valid JSON: {error}" if lines else "the message is empty"
        return DecodedMessage([], None, [Unreadable(None, reason, body)])


def _event(text: bytes, rules: UsageRules) -> ValidEvent | Rejection:
    """One event's outcome; raises ``msgspec.DecodeError`` if ``text`` is not one JSON value.

    The typed decoder checks the JSON types in C (the fast path); an event it refuses is
    decoded generically so that the validator names precisely what is wrong with it."""
    try:
        return validate_wire_event(decode_json(_event_decoder, text), rules)
    except msgspec.ValidationError:
        return validate_event(decode_generic(text), rules)


def _array(body: bytes, rules: UsageRules) -> DecodedMessage:
    try:  # the fast path: every event well-typed, decoded in one call
        events = decode_json(_event_list_decoder, body)
    except msgspec.DecodeError:  # a mistyped event, or one unreadable: told apart below
        pass
    else:
        return DecodedMessage([validate_wire_event(e, rules) for e in events], array=True)
    try:  # splits the array without reading its strings
        items = decode_json(_raw_list_decoder, body)
    except msgspec.DecodeError as error:
        return DecodedMessage([], None, [Unreadable(None, f"not valid JSON: {error}", body)])
    outcomes: list[ValidEvent | Rejection] = []
    parts: list[tuple[int, bytes]] = []
    unreadable: list[Unreadable] = []
    for position, item in enumerate(items):
        text = bytes(item)
        try:  # each item is one JSON value already, but its strings may not be UTF-8
            outcomes.append(_event(text, rules))
        except msgspec.DecodeError as error:
            unreadable.append(Unreadable(position, f"not valid JSON: {error}", text))
            continue
        parts.append((position, text))
    return DecodedMessage(outcomes, parts, unreadable)


def _lines(lines: list[bytes], rules: UsageRules) -> DecodedMessage:
    outcomes: list[ValidEvent | Rejection] = []
    parts: list[tuple[int, bytes]] = []
    unreadable: list[Unreadable] = []
    for position, line in enumerate(lines):
        text = line.strip(_WHITESPACE)
        try:
            outcomes.append(_event(text, rules))
        except msgspec.DecodeError as error:
            unreadable.append(Unreadable(position, f"not valid JSON: {error}", text))
            continue
        parts.append((position, text))
    return DecodedMessage(outcomes, parts, unreadable)
