"""Console sign-in under attack: failures counted in the database (every API process sees the
same counts), a guesser slowed per address and per user-from-an-address, the owner never
locked out by failures from elsewhere, the same work for unknown names as for real ones, and
X-Forwarded-For believed only from the proxies the operator named. On both stores."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from billsync.bootstrap import Billsync, build
from billsync.clock import ManualClock
from billsync.config import Settings
from billsync.db.database import Database
from billsync.db.tables import sign_in_failures
from billsync.services import console_auth
from billsync.services.console_auth import (
    CLIENT_FREE,
    PAIR_FREE,
    SLOW_CAP,
    USER_SLOW,
    ConsoleAuth,
    SignInRefused,
    Throttled,
    client_key,
)
from tests.conftest import TEST_TOKEN
from tests.served import serve

PASSWORD = "correct horse battery"
OWNER = "198.51.100.7"
GUESSER = "203.0.113.66"


@pytest.fixture
def auth(database: Database, clock: ManualClock) -> ConsoleAuth:
    service = ConsoleAuth(database, clock)
    service.add_user("ada", PASSWORD, "admin")
    service.add_user("gone", PASSWORD, "agent")
    with database.transaction() as connection:
        from billsync.repositories import console  # noqa: PLC0415

        console.set_user(connection, "gone", disabled=True)
    return service


def fail(auth: ConsoleAuth, name: str, client: str) -> None:
    with pytest.raises(SignInRefused):
        auth.sign_in(name, "not the password", client)


def test_two_processes_share_one_count(auth: ConsoleAuth, database: Database) -> None:
    """Two API processes are two ``ConsoleAuth`` objects on one database: together they
    allow a client the same number of guesses as one (counted per process, they allowed
    twice as many)."""
    other_process = ConsoleAuth(database, auth.clock)
    for attempt in range(PAIR_FREE):
        fail(auth if attempt % 2 else other_process, "ada", GUESSER)
    for service in (auth, other_process):
        with pytest.raises(Throttled):
            service.sign_in("ada", "not the password", GUESSER)


def test_a_guesser_waits_longer_after_each_failure_and_the_wait_ends(
    auth: ConsoleAuth, clock: ManualClock
) -> None:
    for _ in range(PAIR_FREE):
        fail(auth, "ada", GUESSER)
    waits = []
    for _ in range(3):
        with pytest.raises(Throttled) as refused:
            auth.sign_in("ada", PASSWORD, GUESSER)  # even the right password waits
        waits.append(refused.value.retry_after)
        clock.advance(timedelta(seconds=refused.value.retry_after))
        fail(auth, "ada", GUESSER)
    assert waits == [1, 2, 4]
    with pytest.raises(Throttled) as refused:
        auth.sign_in("ada", PASSWORD, GUESSER)
    clock.advance(timedelta(seconds=refused.value.retry_after))
    token, signed = auth.sign_in("ada", PASSWORD, GUESSER)  # the wait ends; no lock
    assert token
    assert signed.name == "ada"
    fail(auth, "ada", GUESSER)  # the success started this address's count for ada again
    assert auth.admit("ada", GUESSER).delay == 0


def test_failures_from_elsewhere_never_lock_the_owner_out(
    auth: ConsoleAuth, clock: ManualClock
) -> None:
    """An attacker spread over many addresses (or one that keeps failing) slows every attempt
    on the name a little — and the owner, from their own address, still signs in."""
    attackers = [f"203.0.113.{n}" for n in range(1, 6)]
    for _ in range(3):
        for address in attackers:
            fail(auth, "ada", address)
        clock.advance(timedelta(seconds=1))
    for _ in range(PAIR_FREE):  # and one address well past its free attempts
        try:
            fail(auth, "ada", attackers[0])
        except Throttled:
            break
    admission = auth.admit("ada", OWNER)
    assert 0 < admission.delay <= SLOW_CAP  # a guesser's cost; a second for the owner
    token, signed = auth.sign_in("ada", PASSWORD, OWNER, admission)
    assert token
    assert signed.role == "admin"
    assert len(attackers) * 3 >= USER_SLOW


def test_spraying_many_names_from_one_address_is_slowed_too(auth: ConsoleAuth) -> None:
    for n in range(CLIENT_FREE):
        fail(auth, f"user{n}", GUESSER)
    with pytest.raises(Throttled):
        auth.sign_in("someone-new", "anything at all", GUESSER)
    auth.sign_in("ada", PASSWORD, OWNER)  # another address is not affected


def test_unknown_and_disabled_users_cost_the_same_password_check(
    auth: ConsoleAuth, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer's time must not tell which names exist: a name that is no user (or a
    disabled one) is checked against a password hash like a real one."""
    console_auth._unknown_user_hash()  # made once per process, before the count starts
    calls: list[int] = []
    real_scrypt = hashlib.scrypt

    def counting_scrypt(*args: Any, **kwargs: Any) -> bytes:
        calls.append(1)
        return real_scrypt(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counting_scrypt)
    for name in ("ada", "nobody-by-this-name", "gone", "x" * 500, "a\x00b"):
        calls.clear()
        fail(auth, name, f"192.0.2.{len(name) % 250}")
        assert len(calls) == 1, name


def test_a_name_with_a_nul_is_a_wrong_name_on_both_stores(
    auth: ConsoleAuth, database: Database
) -> None:
    fail(auth, "ada\x00", GUESSER)  # PostgreSQL refuses NUL in text: never sent to it
    with database.read() as connection:
        keys = {row[0] for row in connection.execute(select(sign_in_failures.c.key))}
    assert client_key(GUESSER) in keys


def test_ipv6_clients_are_counted_by_their_64_bit_prefix() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("192.0.2.1") == "c:192.0.2.1"


# --- over HTTP: which address is counted ------------------------------------------------


@pytest.fixture
def served_settings(tmp_path: Path) -> dict[str, Any]:
    return {"data_dir": tmp_path / "var", "api_token": TEST_TOKEN}


def counted_clients(database: Database) -> set[str]:
    with database.read() as connection:
        rows = connection.execute(select(sign_in_failures.c.key))
        return {str(key) for (key,) in rows if str(key).startswith("c:")}


def wrong_password_over_http(billsync: Billsync, forwarded_for: str) -> int:
    with serve(billsync) as url, httpx.Client(base_url=url) as client:
        form = client.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        answer = client.post(
            "/console/login",
            data={"name": "ada", "password": "wrong", "csrf": csrf.group(1)},
            headers={"X-Forwarded-For": forwarded_for},
        )
        return answer.status_code


@pytest.mark.parametrize("trusted", ["", "127.0.0.1"])
def test_forwarded_for_is_believed_only_from_the_configured_proxies(
    trusted: str, database: Database, clock: ManualClock, served_settings: dict[str, Any]
) -> None:
    settings = Settings(**served_settings, trusted_proxies=trusted)
    billsync = build(settings, clock=clock, database=database)
    try:
        billsync.console.add_user("ada", PASSWORD, "admin")
        assert wrong_password_over_http(billsync, "192.0.2.200") == 401
    finally:
        billsync.close()
    expected = "c:192.0.2.200" if trusted else "c:127.0.0.1"
    assert counted_clients(database) == {expected}


def test_a_bad_trusted_proxies_setting_is_refused_with_its_entry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300' is not an IP address or network"):
        Settings(data_dir=tmp_path, trusted_proxies="10.0.0.1, 10.0.0.300")
    assert Settings(data_dir=tmp_path, trusted_proxies=" 10.0.0.1 , 10.1.0.0/16").trusted_proxies \
        == "10.0.0.1,10.1.0.0/16"  # fmt: skip
