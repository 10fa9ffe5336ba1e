"""How the console shows times and confirms actions, without script (its pages' Content-Security-
Policy allows none):

- **Times** are written to the second in the viewer's time zone, with the zone's name and its
  offset from UTC ("2026-11-15 13:00:05 CET (UTC+01:00)"). The zone is a preference the viewer
  picks in the header's form (``GET /console/timezone?tz=Europe/Paris``), kept in a cookie; until
  then times are in UTC, which is said.
- **Every action confirms what it did**: the redirect after a form carries a one-time message in
  a short-lived cookie, sealed with the session's CSRF token (a message another site planted, or
  one from another session, is not shown), and the next page shows it once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

from fastapi import Request

TIME_ZONE = "billsync_console_tz"
FLASH = "billsync_console_flash"
FLASH_SECONDS = 120
FLASH_LIMIT = 1000  # characters of a message kept (a cookie holds about 4 KB)
# Offered in the header's list; any IANA zone name is taken.
COMMON_ZONES = (
    "UTC", "Europe/London", "Europe/Paris", "Europe/Berlin", "America/New_York",
    "America/Chicago", "America/Denver", "America/Los_Angeles", "America/Sao_Paulo",
    "Asia/Kolkata", "Asia/Singapore", "Asia/Tokyo", "Australia/Sydney",
)  # fmt: skip


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def known_zone(name: str) -> bool:
    return name == "UTC" or name in _zones()


def zone_of(request: Request) -> ZoneInfo:
    """The viewer's time zone: their saved preference, else UTC."""
    name = request.cookies.get(TIME_ZONE, "")
    return ZoneInfo(name) if name and known_zone(name) else ZoneInfo("UTC")


def moment(value: datetime | None, zone: ZoneInfo) -> str:
    """A time to the second in ``zone``, with the zone's name and UTC offset; "" for none."""
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # the store keeps UTC
    local = value.astimezone(zone)
    if zone.key == "UTC":
        return f"{local:%Y-%m-%d %H:%M:%S} UTC"
    raw = local.strftime("%z")  # +0100
    offset = f"UTC{raw[:3]}:{raw[3:]}"
    name = local.tzname() or ""
    if not name or name[0] in "+-":  # zones without an abbreviation name their offset
        return f"{local:%Y-%m-%d %H:%M:%S} {offset}"
    return f"{local:%Y-%m-%d %H:%M:%S} {name} ({offset})"


def seal(message: str, secret: str) -> str:
    """A confirmation for the next page, readable only with the same session's ``secret``."""
    text = message[:FLASH_LIMIT].encode()
    token = base64.urlsafe_b64encode(text).decode().rstrip("=")
    return f"{_mac(token, secret)}.{token}"


def unseal(value: str | None, secret: str) -> str | None:
    """The message sealed in ``value`` with ``secret``, or None."""
    if not value or "." not in value:
        return None
    mac, _, token = value.partition(".")
    if not hmac.compare_digest(mac, _mac(token, secret)):
        return None
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def _mac(token: str, secret: str) -> str:
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()[:32]
