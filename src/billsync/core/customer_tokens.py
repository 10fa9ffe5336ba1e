"""Short-lived customer tokens: one account, an expiry, an HMAC. A platform hands one to its
customer's browser; it opens that account's billing page and portal, nothing else.

Format: ``bct_<account, base64url>.<expiry unix>.<hex HMAC-SHA256 over "account.expiry">``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta

PREFIX = "bct_"
MAX_TTL = timedelta(days=1)


class TokenError(ValueError):
    """Not a valid customer token (malformed, tampered with, or expired)."""


@dataclass(frozen=True, slots=True)
class CustomerToken:
    account_id: str
    expires_at: int


def _sign(secret: str, account_id: str, expires_at: int) -> str:
    message = f"{account_id}.{expires_at}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def issue(secret: str, account_id: str, now: datetime, ttl: timedelta) -> str:
    if not timedelta(seconds=1) <= ttl <= MAX_TTL:
        raise ValueError("a customer token lives between 1 second and 1 day")
    expires_at = int((now + ttl).timestamp())
    encoded = base64.urlsafe_b64encode(account_id.encode()).decode().rstrip("=")
    return f"{PREFIX}{encoded}.{expires_at}.{_sign(secret, account_id, expires_at)}"


def read(secret: str, token: str, now: datetime) -> CustomerToken:
    if not token.startswith(PREFIX) or token.count(".") != 2:
        raise TokenError("not a customer token")
    encoded, expiry, signature = token[len(PREFIX) :].split(".")
    try:
        account_id = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise TokenError("not a customer token") from None
    if not expiry.isdigit():
        raise TokenError("not a customer token")
    expires_at = int(expiry)
    if not hmac.compare_digest(_sign(secret, account_id, expires_at), signature):
        raise TokenError("the customer token's signature does not match")
    if expires_at <= now.timestamp():
        raise TokenError("the customer token has expired")
    return CustomerToken(account_id, expires_at)
