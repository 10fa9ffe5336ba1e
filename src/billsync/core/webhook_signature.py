"""Verifying ``Stripe-Signature`` headers, exactly as Stripe signs: ``t=<unix>,v1=<hex>``, where
each v1 is HMAC-SHA256 over ``f"{t}.{raw body}"`` with the endpoint's secret. Any matching v1
with any configured secret passes (secret rotation); the timestamp must be within the
tolerance of our clock (default 300 s, as Stripe's libraries), which defeats replays."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

DEFAULT_TOLERANCE = 300


class SignatureError(ValueError):
    """The delivery is not provably from Stripe (or is too old); the message says why."""


def compute(payload: bytes, secret: str, timestamp: int) -> str:
    signed = str(timestamp).encode() + b"." + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


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
    if not header:
        raise SignatureError("missing Stripe-Signature header")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1" and value:
            signatures.append(value)
    if timestamp is None:
        raise SignatureError("Stripe-Signature has no timestamp (t=...)")
    if not signatures:
        raise SignatureError("Stripe-Signature has no v1 signature")
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
