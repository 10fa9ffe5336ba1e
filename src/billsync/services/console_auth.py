"""Console sign-in: scrypt password hashes, sessions by cookie (only the token's hash is kept),
a CSRF token per session, and throttling of failed sign-ins."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from billsync.clock import Clock
from billsync.db.database import Database
from billsync.errors import BillsyncError, Conflict, InvalidRequest
from billsync.repositories import console

ROLES = ("viewer", "agent", "admin")
SESSION_LIFE = timedelta(hours=8)
MAX_FAILURES = 5
LOCKOUT_SECONDS = 300.0
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class SignInRefused(BillsyncError):
    status_code = 401
    code = "sign_in_refused"


class Throttled(BillsyncError):
    status_code = 429
    code = "too_many_attempts"


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    computed = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), dklen=32, **_SCRYPT)
    return hmac.compare_digest(computed, base64.b64decode(digest))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Signed:
    name: str
    role: str
    csrf: str
    token_hash: str

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


class Throttle:
    """Failed sign-ins per user name and per client address; a lockout after too many."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def check(self, *keys: str) -> None:
        now = self._now()
        with self._lock:
            for key in keys:
                recent = [t for t in self._failures.get(key, []) if now - t < LOCKOUT_SECONDS]
                self._failures[key] = recent
                if len(recent) >= MAX_FAILURES:
                    raise Throttled("too many failed sign-ins: wait a few minutes and try again")

    def failed(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.setdefault(key, []).append(self._now())

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


class ConsoleAuth:
    def __init__(self, database: Database, clock: Clock) -> None:
        self.database = database
        self.clock = clock
        self.throttle = Throttle()

    def add_user(self, name: str, password: str, role: str) -> None:
        if role not in ROLES:
            raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", code="invalid_role")
        if not name.strip() or len(name) > 100:
            raise InvalidRequest("a user name is 1–100 characters", code="invalid_name")
        if len(password) < 10:
            raise InvalidRequest("passwords have at least 10 characters", code="weak_password")
        with self.database.transaction() as connection:
            if console.user_by_name(connection, name) is not None:
                raise Conflict(f"user {name!r} exists", code="user_exists")
            console.add_user(connection, name, hash_password(password), role, self.clock.now())

    def sign_in(self, name: str, password: str, client: str) -> tuple[str, Signed]:
        keys = (f"user:{name}", f"client:{client}")
        self.throttle.check(*keys)
        with self.database.read() as connection:
            user = console.user_by_name(connection, name)
        if user is None or user.disabled or not check_password(password, user.password_hash):
            self.throttle.failed(*keys)
            raise SignInRefused("wrong user name or password")
        self.throttle.succeeded(*keys)
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)
        now = self.clock.now()
        with self.database.transaction() as connection:
            console.add_session(
                connection,
                _token_hash(token),
                user_id=user.id,
                csrf=csrf,
                now=now,
                expires=now + SESSION_LIFE,
            )
            console.record(connection, actor=user.name, action="console.sign_in", now=now)
        return token, Signed(user.name, user.role, csrf, _token_hash(token))

    def session(self, token: str | None) -> Signed | None:
        if not token:
            return None
        with self.database.read() as connection:
            found = console.session_user(connection, _token_hash(token), self.clock.now())
        if found is None or found[0].disabled:
            return None
        user, csrf = found
        return Signed(user.name, user.role, csrf, _token_hash(token))

    def sign_out(self, signed: Signed) -> None:
        with self.database.transaction() as connection:
            console.end_session(connection, signed.token_hash)
            console.record(
                connection, actor=signed.name, action="console.sign_out", now=self.clock.now()
            )
