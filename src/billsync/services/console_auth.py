"""Console sign-in: scrypt password hashes, sessions by cookie (only the token's hash is kept),
a CSRF token per session, and throttling of failed sign-ins."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import math
import secrets
import threading
from dataclasses import dataclass
from datetime import timedelta

from billsync.clock import Clock
from billsync.core.text import unsafe_character
from billsync.db.database import Database
from billsync.errors import BillsyncError, Conflict, InvalidRequest
from billsync.repositories import console, sign_in

ROLES = ("viewer", "agent", "admin")
SESSION_LIFE = timedelta(hours=8)
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class SignInRefused(BillsyncError):
    status_code = 401
    code = "sign_in_refused"


class Throttled(BillsyncError):
    status_code = 429
    code = "too_many_attempts"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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


@functools.cache
def _unknown_user_hash() -> str:
    """A hash no password matches, checked for names that are not users."""
    return hash_password(secrets.token_urlsafe(32))


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


# The throttle (all counts in the database, so every API process sees the same ones). Failures
# are forgotten an hour after the last one. A client may get a user's password wrong PAIR_FREE
# times, and make CLIENT_FREE failures over all user names, before waiting 1 s, 2 s, 4 s … up
# to BACKOFF_CAP between attempts: guessing from one address slows to a few tries an hour.
# Failures for one user from everywhere never lock that user out (an attacker could otherwise
# lock the owner out from anywhere): past USER_SLOW, every attempt for that name waits a short
# delay before it is checked, at most SLOW_CAP — a cost to a distributed guesser, a second to
# the owner.
FORGET_AFTER = timedelta(hours=1)
PAIR_FREE = 5
CLIENT_FREE = 20
BACKOFF_CAP = timedelta(minutes=15)
USER_SLOW = 10
SLOW_STEP = 0.2
SLOW_CAP = 2.0
# Password hashing costs 16 MB and ~0.1 s of CPU: at most this many at once per process.
CONCURRENT_CHECKS = 4


def client_key(address: str) -> str:
    """A client as the throttle counts it: its IPv4 address, or its IPv6 /64 (one host usually
    has a whole /64 to pick addresses from)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "c:" + hashlib.sha256(address.encode(errors="replace")).hexdigest()[:32]
    if ip.version == 6:
        return "c:" + str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return f"c:{ip}"


def backoff(failures: int, free: int) -> timedelta:
    """How long after its last failure a key must wait before the next attempt."""
    if failures < free:
        return timedelta(0)
    return min(timedelta(seconds=2 ** min(failures - free, 20)), BACKOFF_CAP)


@dataclass(frozen=True, slots=True)
class Admission:
    """A sign-in attempt let through: the throttle's keys for it, and the delay (seconds) to
    wait before checking the password."""

    keys: tuple[str, str, str]
    delay: float


class Throttle:
    """Failed sign-ins per client, per user from a client, and per user, in the database."""

    def __init__(self, database: Database, clock: Clock) -> None:
        self.database = database
        self.clock = clock

    @staticmethod
    def keys(name: str, client: str) -> tuple[str, str, str]:
        digest = hashlib.sha256(name.encode(errors="replace")).hexdigest()[:32]
        pair = hashlib.sha256(f"{digest}|{client}".encode(errors="replace")).hexdigest()[:32]
        return client_key(client), f"uc:{pair}", f"u:{digest}"

    def admit(self, name: str, client: str) -> Admission:
        """Let the attempt through (with the delay it waits first), or raise ``Throttled``."""
        keys = self.keys(name, client)
        client_k, pair_k, user_k = keys
        now = self.clock.now()
        with self.database.read() as connection:
            found = sign_in.failures(connection, keys)
        wait = timedelta(0)
        for key, free in ((client_k, CLIENT_FREE), (pair_k, PAIR_FREE)):
            if key in found:
                count, last_at = found[key]
                if last_at >= now - FORGET_AFTER:
                    wait = max(wait, last_at + backoff(count, free) - now)
        if wait > timedelta(0):
            seconds = max(1, math.ceil(wait.total_seconds()))
            raise Throttled(
                f"too many failed sign-ins from this address: try again in {seconds} s",
                retry_after=seconds,
            )
        delay = 0.0
        if user_k in found:
            count, last_at = found[user_k]
            if last_at >= now - FORGET_AFTER and count >= USER_SLOW:
                delay = min(SLOW_STEP * (count - USER_SLOW + 1), SLOW_CAP)
        return Admission(keys, delay)

    def failed(self, admission: Admission) -> None:
        now = self.clock.now()
        with self.database.transaction() as connection:
            sign_in.add_failure(
                connection, admission.keys, now=now, forget_before=now - FORGET_AFTER
            )
            sign_in.forget(connection, now - FORGET_AFTER)

    def succeeded(self, admission: Admission) -> None:
        """The pair's count starts again (the owner's own address is free again); the client's
        and the user's stay: a valid account must not wash a guesser's record clean."""
        with self.database.transaction() as connection:
            sign_in.clear(connection, admission.keys[1:2])


class ConsoleAuth:
    def __init__(self, database: Database, clock: Clock) -> None:
        self.database = database
        self.clock = clock
        self.throttle = Throttle(database, clock)
        self._checks = threading.BoundedSemaphore(CONCURRENT_CHECKS)

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

    def admit(self, name: str, client: str) -> Admission:
        """The throttle's word on an attempt (raises ``Throttled``); the caller waits
        ``delay`` without holding a thread, then calls ``sign_in``."""
        return self.throttle.admit(name, client)

    def sign_in(
        self, name: str, password: str, client: str, admission: Admission | None = None
    ) -> tuple[str, Signed]:
        admission = admission or self.throttle.admit(name, client)
        user = None
        # A name with characters no user name has (core.text) is an unknown user, never looked up.
        if len(name) <= 100 and unsafe_character(name) is None:
            with self.database.read() as connection:
                user = console.user_by_name(connection, name)
        # The same work whether the user exists or not: an unknown name costs a password check
        # too, so the answer's time does not tell which names exist.
        stored = _unknown_user_hash() if user is None or user.disabled else user.password_hash
        with self._checks:
            matches = check_password(password, stored)
        if user is None or user.disabled or not matches:
            self.throttle.failed(admission)
            raise SignInRefused("wrong user name or password")
        self.throttle.succeeded(admission)
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
