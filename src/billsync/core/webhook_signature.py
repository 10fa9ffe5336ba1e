"""Verifying ``Stripe-Signature`` headers, exactly as Stripe signs: ``t=<unix>,v1=<hex>``, where
each v1 is HMAC-SHA256 over ``f"{t}.{raw body}"`` with the endpoint's secret. Any matching v1
with any configured secret passes (secret rotation); the timestamp must be within the
tolerance of our clock (default 300 s, as Stripe's libraries), which defeats replays.

The header's shape is one rule (:func:`parse`), used twice: by the API's gate, to refuse at once
a delivery that cannot be Stripe's before a byte of its body is read, and by :func:`verify`.
Stripe's format (https://docs.stripe.com/webhooks/signatures, "Verify signatures manually"):
comma-separated ``prefix=value`` elements, one ``t`` (unix seconds) and one ``v1`` per active
secret, each the hex of an HMAC-SHA256; other schemes (``v0``, sent in test mode) are
ignored."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

DEFAULT_TOLERANCE = 300
# Unix seconds in ASCII digits (str.isdigit also takes "²" and "١٢", and int() of 5,000 digits
# raises): 12 digits reach the year 33658.
TIMESTAMP = re.compile(r"[0-9]{1,12}")
V1_SIGNATURE = re.compile(r"[0-9a-f]{64}")  # SHA-256's hex digest, as Stripe sends it
MAX_HEADER_LENGTH = 4096  # t, a v0 and a few v1 during a secret rotation: a few hundred bytes


class SignatureError(ValueError):
    """The delivery is not provably from Stripe (or is too old); the message says why."""


def compute(payload: bytes, secret: str, timestamp: int) -> str:
    signed = str(timestamp).encode() + b"." + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def parse(header: str | None) -> tuple[int, list[str]]:
    """The header's timestamp and v1 signatures; :class:`SignatureError` when it does not have
    Stripe's shape: exactly one ``t=<digits>``, at least one ``v1=<64 hex>``, every v1 so."""
    if not header:
        raise SignatureError("missing Stripe-Signature header")
    if len(header) > MAX_HEADER_LENGTH:
        raise SignatureError(f"Stripe-Signature is longer than {MAX_HEADER_LENGTH} characters")
    timestamps: list[str] = []
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            signatures.append(value)
    if len(timestamps) != 1 or TIMESTAMP.fullmatch(timestamps[0]) is None:
        raise SignatureError("Stripe-Signature needs one timestamp in unix seconds (t=...)")
    if not signatures:
        raise SignatureError("Stripe-Signature has no v1 signature")
    if any(V1_SIGNATURE.fullmatch(signature) is None for signature in signatures):
        raise SignatureError("a v1 signature in Stripe-Signature is not 64 hex digits")
    return int(timestamps[0]), signatures


def well_formed(header: str | None) -> bool:
    """Whether the header has Stripe's shape (whether it verifies is :func:`verify`'s to say)."""
    try:
        parse(header)
    except SignatureError:
        return False
    return True


def verify(
    payload: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    now: int,
    tolerance: int = DEFAULT_TOLERANCE,
) -> int:
    """Check the header against the raw body; return the signed timestamp."""
    if not secrets:
        raise SignatureError("no webhook signing secret is configured")
    timestamp, signatures = parse(header)
    if abs(now - timestamp) > tolerance:
        raise SignatureError(
            f"signature timestamp is {abs(now - timestamp)} s from our clock "
            f"(tolerance {tolerance} s): a replay, or a clock out of sync"
        )
    for secret in secrets:
        expected = compute(payload, secret, timestamp)
        if any(hmac.compare_digest(expected, candidate) for candidate in signatures):
            return timestamp
    raise SignatureError("no signature matches the payload with any configured secret")
