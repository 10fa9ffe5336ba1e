"""The command line as an operator meets it: a lifecycle run ahead of the clock asks first;
every command answers a wrong account, an unreachable database and a missing Stripe key with
one line and a non-zero exit; accounts and console users are managed from it; its help says
what it does; its output starts with its own lines and fits 80 columns."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from typer.main import get_command
from typer.testing import CliRunner, Result

from billsync.bootstrap import build
from billsync.cli import common
from billsync.cli import reconcile_command as reconcile_cli
from billsync.cli.main import app
from billsync.config import Settings
from billsync.core.periods import period_for_date
from billsync.db.database import Database
from billsync.db.tables import audit_log, billing_periods, lines
from billsync.repositories import accounts as account_repository
from billsync.services.reconcile import DriftItem, ReconcileReport
from billsync.simulator import Simulation
from tests.conftest import PG_URL_VARIABLE
from tests.ports import free_port

MACHINE = "machine.shared-cpu-1x.seconds"
PASSWORD = "correct horse battery"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def runner(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CLI on a fresh SQLite ledger, with no Stripe key."""
    for name in (
        "BILLSYNC_DATABASE_URL",
        "BILLSYNC_CATALOG",
        "BILLSYNC_BILLING_ANCHOR_DAY",
        "BILLSYNC_STRIPE_API_KEY",
        "BILLSYNC_STRIPE_API_BASE",
        "BILLSYNC_CLOCK_FILE",
        "BILLSYNC_LOG_LEVEL",
        "FORCE_COLOR",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BILLSYNC_DATA_DIR", str(data_dir))
    monkeypatch.setenv("BILLSYNC_API_TOKEN", "cli-test-token")
    return CliRunner()


def run(runner: CliRunner, *args: str, **options: Any) -> Result:
    return runner.invoke(app, list(args), **options)


def one_line(text: str) -> str:
    return " ".join(text.split())


def assert_one_line_failure(result: Result, *words: str, code: int | None = None) -> str:
    """A non-zero exit through typer.Exit (no traceback), the error on one line of stderr."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def create(runner: CliRunner, account: str = "acme", *extra: str) -> None:
    result = run(runner, "accounts", "create", account, "--currency", "usd", *extra)
    assert result.exit_code == 0, result.output


def ingest(runner: CliRunner, tmp_path: Path, *events: dict[str, Any]) -> None:
    source = tmp_path / f"usage-{events[0]['id']}.jsonl"
    source.write_text("".join(json.dumps(item) + "\n" for item in events))
    result = run(runner, "ingest", str(source))
    assert result.exit_code == 0, result.output


def usage_event(event_id: str, at: datetime, account: str = "acme") -> dict[str, Any]:
    return {
        "id": event_id,
        "account": account,
        "metric": MACHINE,
        "quantity": 3600,
        "timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def ledger(data_dir: Path) -> Database:
    return Database(f"sqlite:///{(data_dir / 'billsync.db').resolve()}")


def period_statuses(data_dir: Path) -> list[str]:
    database = ledger(data_dir)
    with database.read() as connection:
        statuses = list(connection.execute(select(billing_periods.c.status)).scalars())
    database.dispose()
    return statuses


# --- periods advance: a preview first; ahead of the clock only with --yes ------------------------


def test_advance_without_yes_prints_what_it_would_do_and_changes_nothing(
    runner: CliRunner, data_dir: Path, tmp_path: Path
) -> None:
    create(runner)
    now = datetime.now(UTC)
    ingest(runner, tmp_path, usage_event("e1", now - timedelta(minutes=5)))
    end = period_for_date(now.date(), 1).end
    later = datetime.combine(end, datetime.min.time(), tzinfo=UTC) + timedelta(days=3)

    preview = run(runner, "periods", "advance", "--now", later.isoformat())
    assert preview.exit_code == 0, preview.output
    said = one_line(preview.stdout)
    assert f"as of {later:%Y-%m-%d %H:%M:%S} UTC" in said
    assert "ahead of the clock" in said
    start = period_for_date(now.date(), 1).start
    assert f"1 period(s) would start closing (ended): acme {start}" in said
    assert "1 period(s) would stop taking usage and get their final sync" in said
    assert "closes and finalizes real invoices early" in said
    assert "Stripe collects a finalized invoice at once" in said
    assert "records times in the future" in said
    assert "Nothing was done; add --yes to do it anyway." in said
    assert period_statuses(data_dir) == ["open"]  # nothing moved

    dry = run(runner, "periods", "advance", "--now", later.isoformat(), "--yes", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "Nothing was done" in one_line(dry.stdout)
    assert period_statuses(data_dir) == ["open"]


def test_advance_at_the_clock_without_yes_says_how_to_do_it(runner: CliRunner) -> None:
    create(runner)
    result = run(runner, "periods", "advance")
    assert result.exit_code == 0, result.output
    assert "no period is due" in result.stdout
    assert "nothing was done: run again with --yes to do it" in one_line(result.stdout)
    assert "ahead of the clock" not in result.stdout
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    earlier = run(runner, "periods", "advance", "--now", past)
    assert "ahead of the clock" not in earlier.stdout
    assert "run again with --yes" in one_line(earlier.stdout)


def test_advance_with_yes_needs_a_stripe_key_and_a_valid_time(runner: CliRunner) -> None:
    create(runner)
    assert_one_line_failure(
        run(runner, "periods", "advance", "--yes"), "BILLSYNC_STRIPE_API_KEY", code=2
    )
    assert_one_line_failure(
        run(runner, "periods", "advance", "--now", "next tuesday"), "--now", "ISO 8601", code=2
    )


# --- a wrong account ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["sync", "--account", "nosuch"],
        ["sync", "--account", "nosuch", "--dry-run"],
        ["status", "--account", "nosuch"],
        ["verify", "--account", "nosuch"],
        ["reconcile", "--account", "nosuch"],
        ["accounts", "show", "nosuch"],
        ["accounts", "update", "nosuch", "--name", "Nobody"],
        ["tokens", "customer", "nosuch"],
    ],
    ids=" ".join,
)
def test_a_wrong_account_is_one_line_and_exit_1(runner: CliRunner, command: list[str]) -> None:
    create(runner)
    assert_one_line_failure(run(runner, *command), "'nosuch' does not exist", code=1)


# --- an unreachable database ----------------------------------------------------------------------

EVERY_COMMAND_ON_A_DATABASE = [
    ["accounts", "create", "acme", "--currency", "usd"],
    ["accounts", "show", "acme"],
    ["accounts", "list"],
    ["accounts", "update", "acme", "--name", "A"],
    ["db", "upgrade"],
    ["db", "current"],
    ["sync"],
    ["status"],
    ["capacity"],
    ["verify"],
    ["reconcile"],
    ["retention"],
    ["periods", "advance"],
    ["tokens", "customer", "acme"],
    ["users", "list"],
    ["users", "add", "ann", "--role", "viewer", "--password", PASSWORD],
    ["users", "disable", "ann", "--reason", "left"],
    ["users", "enable", "ann", "--reason", "back"],
    ["support", "sync", "acme", "--reason", "asked"],
    ["ingest"],
]


@pytest.mark.parametrize("command", EVERY_COMMAND_ON_A_DATABASE, ids=" ".join)
def test_an_unreachable_database_is_a_short_visible_wait_then_one_line(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, command: list[str], tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv(
        "BILLSYNC_DATABASE_URL", f"postgresql+psycopg://billsync@127.0.0.1:{port}/ledger"
    )
    monkeypatch.setattr(common, "COMMAND_DATABASE_WAIT_SECONDS", 0.3)
    if command[0] == "ingest":
        (tmp_path / "x.jsonl").write_text("")
        command = [*command, str(tmp_path / "x.jsonl")]
    result = run(runner, *command)
    waiting = f"waiting up to 0.3 s for PostgreSQL at 127.0.0.1:{port}/ledger"
    assert waiting in one_line(result.stderr), result.output
    assert_one_line_failure(
        result, f"PostgreSQL at 127.0.0.1:{port}/ledger is unreachable after waiting 0.3 s", code=1
    )
    assert "billsync@" not in result.output  # where, not who


def test_the_wait_is_as_long_as_it_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the wait prints is what it does: it keeps trying until the time it named."""
    database = Database(f"postgresql+psycopg://billsync@127.0.0.1:{free_port()}/ledger")
    now = [0.0]
    waited: list[float] = []

    def sleep(seconds: float) -> None:
        waited.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(time, "sleep", sleep)
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    with pytest.raises(typer.Exit):
        common.wait_for_database(database, 20.0)
    assert sum(waited) == pytest.approx(20.0)
    assert max(waited) == 5.0  # backing off, at most 5 s between tries
    database.dispose()


def test_a_slow_first_try_does_not_eat_the_wait(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A first try slower than the whole wait (a busy host, a connect timeout) still leads to
    the wait announced: it counts from the first failure."""
    database = Database(f"postgresql+psycopg://billsync@127.0.0.1:{free_port()}/ledger")
    now = [0.0]
    waited: list[float] = []
    ping = database.ping

    def slow_ping() -> None:
        try:
            ping()
        finally:
            now[0] += 1.0 if not waited else 0.0  # the first try takes a second

    def sleep(seconds: float) -> None:
        waited.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(database, "ping", slow_ping)
    monkeypatch.setattr(time, "sleep", sleep)
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    with pytest.raises(typer.Exit):
        common.wait_for_database(database, 0.3)
    assert sum(waited) == pytest.approx(0.3)
    assert "waiting up to 0.3 s" in one_line(capsys.readouterr().err)
    database.dispose()


@pytest.fixture
def missing_database_url() -> str:
    url = os.environ.get(PG_URL_VARIABLE)
    if not url:
        pytest.skip(f"set {PG_URL_VARIABLE} to run the PostgreSQL cases")
    return make_url(url).set(database="billsync_no_such_database").render_as_string(False)


@pytest.mark.parametrize("command", [["db", "upgrade"], ["db", "current"], ["accounts", "list"]])
def test_a_database_that_does_not_exist_fails_at_once_saying_so(
    runner: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    missing_database_url: str,
    command: list[str],
) -> None:
    monkeypatch.setenv("BILLSYNC_DATABASE_URL", missing_database_url)
    result = run(runner, *command)
    assert "waiting" not in result.stderr  # a refusal no wait cures
    assert_one_line_failure(
        result, 'database "billsync_no_such_database" does not exist', "createdb", code=1
    )


@pytest.fixture
def empty_postgres_url() -> Iterator[str]:
    url = os.environ.get(PG_URL_VARIABLE)
    if not url:
        pytest.skip(f"set {PG_URL_VARIABLE} to run the PostgreSQL cases")
    schema = f"billsync_cli_{os.getpid()}_{datetime.now(UTC):%H%M%S%f}"
    admin = create_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield (
        make_url(url)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(False)
    )
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def test_db_upgrade_lists_the_migrations_it_applied(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, empty_postgres_url: str
) -> None:
    monkeypatch.setenv("BILLSYNC_DATABASE_URL", empty_postgres_url)
    before = run(runner, "accounts", "list")
    assert_one_line_failure(before, "no billsync schema yet", "billsync db upgrade")
    first = run(runner, "db", "upgrade", "--revision", "0002")
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines()[0] == "applied 0001  initial ledger schema"
    assert "schema at 0002" in first.stdout
    assert "Running upgrade" not in first.output  # Alembic's own lines stay out
    again = run(runner, "db", "upgrade", "--revision", "0002")
    assert "schema at 0002 (nothing to apply)" in again.stdout
    assert_one_line_failure(run(runner, "db", "upgrade", "--revision", "nope"), "nope", code=2)


def test_a_database_lost_in_the_middle_of_a_command_is_one_line(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(runner)

    def lost(*_: Any, **__: Any) -> None:
        raise OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(account_repository, "list_accounts", lost)
    assert_one_line_failure(
        run(runner, "accounts", "list"), "the database went away", "server closed", code=1
    )


# --- no Stripe key --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["sync"], ["sync", "--account", "acme"], ["reconcile"], ["periods", "advance", "--yes"],
     ["worker"]],
    ids=" ".join,
)  # fmt: skip
def test_a_command_that_calls_stripe_says_which_key_is_missing(
    runner: CliRunner, command: list[str]
) -> None:
    create(runner)
    assert_one_line_failure(run(runner, *command), "BILLSYNC_STRIPE_API_KEY", code=2)


def test_verify_without_a_key_says_stripe_was_not_checked(runner: CliRunner) -> None:
    create(runner)
    result = run(runner, "verify")
    assert result.exit_code == 2, result.output
    assert "all invariants hold" not in result.output
    assert "the ledger's invariants hold; Stripe was not checked" in one_line(result.stdout)
    assert "Stripe was not checked: set BILLSYNC_STRIPE_API_KEY" in one_line(result.stderr)
    as_json = run(runner, "verify", "--json")
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout)["stripe_checked"] is False
    ledger_only = run(runner, "verify", "--ledger-only")
    assert ledger_only.exit_code == 0, ledger_only.output
    assert "Stripe was not checked" in one_line(ledger_only.stdout)
    assert ledger_only.stderr == ""


# --- accounts list | update -----------------------------------------------------------------------


def test_accounts_list_pages_and_filters(runner: CliRunner) -> None:
    for account, name in (("a1", "Acme EU"), ("a2", "Acme US"), ("b1", "Globex")):
        create(runner, account, "--name", name, "--email", f"{account}@example.test")
    first = run(runner, "accounts", "list", "--limit", "2")
    assert first.exit_code == 0, first.output
    assert [line.split()[0] for line in first.stdout.splitlines()[1:3]] == ["a1", "a2"]
    assert "more: --cursor a2" in first.stdout
    rest = run(runner, "accounts", "list", "--limit", "2", "--cursor", "a2")
    assert rest.stdout.splitlines()[1].split()[0] == "b1"
    assert "more:" not in rest.stdout
    by_name = run(runner, "accounts", "list", "--name", "Acme")
    assert "a1" in by_name.stdout
    assert "a2" in by_name.stdout
    assert "b1" not in by_name.stdout
    by_email = run(runner, "accounts", "list", "--email", "b1@example.test")
    assert "Globex" in by_email.stdout
    assert "Acme" not in by_email.stdout
    none = run(runner, "accounts", "list", "--customer", "cus_nobody")
    assert none.stdout.strip() == "no accounts match"
    assert_one_line_failure(run(runner, "accounts", "list", "--cursor", "not an id"), "cursor")


def test_accounts_update_says_what_changed_and_the_anchor_applies_to_future_periods(
    runner: CliRunner, data_dir: Path
) -> None:
    create(runner, "acme", "--email", "old@acme.test")
    today = datetime.now(UTC).date()
    current = period_for_date(today, 1)
    result = run(
        runner, "accounts", "update", "acme", "--name", "Acme Inc", "--no-email",
        "--policy", "threshold", "--threshold", "5000", "--anchor-day", "15",
        "--reason", "moved to mid-month billing", "--actor", "ops@example.test",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    said = result.stdout
    assert "updated acme" in said
    assert "name: Acme Inc" in said
    assert "email: none" in said
    assert "sync policy: policy threshold, threshold 5000" in said
    assert f"anchor day: 15, from {current.end} (the period running now keeps its dates)" in (
        one_line(said)
    )
    shown = run(runner, "accounts", "show", "acme")
    assert f"{current.start} to {current.end}" in shown.stdout  # the current period is whole
    database = ledger(data_dir)
    with database.read() as connection:
        entry = connection.execute(
            select(audit_log).where(audit_log.c.action == "account.update")
        ).mappings().one()  # fmt: skip
    database.dispose()
    assert (entry["actor"], entry["reason"]) == ("ops@example.test", "moved to mid-month billing")
    assert entry["detail"]["anchor_applies_from"] == current.end.isoformat()

    again = run(runner, "accounts", "update", "acme", "--name", "Acme Inc")
    assert "nothing changed" in again.stdout
    undone = run(runner, "accounts", "update", "acme", "--anchor-day", "1", "--default-policy")
    assert "anchor day: 1 (the change not in effect yet is undone)" in one_line(undone.stdout)
    assert "sync policy: default" in undone.stdout


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ([], ["nothing to change"]),
        (["--email", "a@b.test", "--no-email"], ["--email or --no-email"]),
        (["--default-policy", "--threshold", "10"], ["--default-policy"]),
    ],
)
def test_accounts_update_refuses_a_contradiction_as_a_usage_error(
    runner: CliRunner, options: list[str], words: list[str]
) -> None:
    create(runner)
    assert_one_line_failure(run(runner, "accounts", "update", "acme", *options), *words, code=2)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--anchor-day", "29"], ["billing_anchor_day must be between 1 and 28"]),
        (["--email", "not-an-email"], ["not an email address"]),
        (["--name", "  "], ["name must be 1–255 characters"]),
        (["--interval-seconds", "99999999999"], ["interval_seconds is at most"]),
    ],
)
def test_accounts_update_refuses_bad_values(
    runner: CliRunner, options: list[str], words: list[str]
) -> None:
    create(runner)
    assert_one_line_failure(run(runner, "accounts", "update", "acme", *options), *words, code=1)


# --- users list | disable | enable ----------------------------------------------------------------


def add_user(runner: CliRunner, name: str, role: str) -> None:
    result = run(runner, "users", "add", name, "--role", role, "--password", PASSWORD)
    assert result.exit_code == 0, result.output


def user_audit(data_dir: Path) -> list[dict[str, Any]]:
    database = ledger(data_dir)
    with database.read() as connection:
        rows = connection.execute(
            select(audit_log).where(audit_log.c.action.like("user.%")).order_by(audit_log.c.id)
        ).mappings()
        found = [dict(row) for row in rows]
    database.dispose()
    return found


def test_users_disable_and_enable_are_audited_admin_actions(
    runner: CliRunner, data_dir: Path
) -> None:
    add_user(runner, "root", "admin")
    add_user(runner, "ann", "agent")
    listed = run(runner, "users", "list")
    assert re.search(r"ann\s+agent\s+enabled", listed.stdout), listed.stdout

    disabled = run(runner, "users", "disable", "ann", "--reason", "left the team")
    assert disabled.exit_code == 0, disabled.output
    assert "ann disabled (audited as user.disable)" in disabled.stdout
    assert re.search(r"ann\s+agent\s+disabled", run(runner, "users", "list").stdout)
    again = run(runner, "users", "disable", "ann", "--reason", "twice")
    assert "ann was already disabled: nothing done" in again.stdout
    enabled = run(runner, "users", "enable", "ann", "--reason", "back", "--actor", "root")
    assert "ann enabled" in enabled.stdout
    audited = [
        (e["action"], e["actor"], e["reason"], e["detail"]["user"]) for e in user_audit(data_dir)
    ]
    assert audited == [
        ("user.disable", "cli", "left the team", "ann"),
        ("user.enable", "root", "back", "ann"),
    ]  # fmt: skip


def test_users_disable_needs_a_reason_and_keeps_an_admin(runner: CliRunner) -> None:
    add_user(runner, "root", "admin")
    missing = run(runner, "users", "disable", "root")
    assert missing.exit_code == 2
    assert "--reason" in missing.output
    assert_one_line_failure(
        run(runner, "users", "disable", "root", "--reason", "oops"), "last enabled admin", code=1
    )
    assert_one_line_failure(
        run(runner, "users", "disable", "ghost", "--reason", "x"), "no console user 'ghost'"
    )
    assert_one_line_failure(
        run(runner, "users", "enable", "root", "--reason", "   "), "reason", code=2
    )


def test_a_disabled_user_is_signed_out_everywhere(
    runner: CliRunner, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_user(runner, "root", "admin")
    add_user(runner, "ann", "agent")
    settings = Settings(data_dir=data_dir, api_token="cli-test-token")
    billsync = build(settings)
    token, _ = billsync.console.sign_in("ann", PASSWORD, "203.0.113.9")
    assert billsync.console.session(token) is not None
    result = run(runner, "users", "disable", "ann", "--reason", "left")
    assert "1 session(s) signed out" in result.stdout
    assert billsync.console.session(token) is None
    run(runner, "users", "enable", "ann", "--reason", "back")
    assert billsync.console.session(token) is None  # enabled again: signs in anew
    billsync.close()


# --- the help says what each command does ---------------------------------------------------------


def every_command() -> Iterator[tuple[str, Any]]:
    def walk(command: Any, path: str) -> Iterator[tuple[str, Any]]:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                yield from walk(sub, f"{path} {name}".strip())
        else:
            yield path, command

    yield from walk(get_command(app), "")


def test_every_option_is_described_and_flags_have_one_form() -> None:
    undescribed, two_forms = [], []
    for path, command in every_command():
        for param in command.params:
            if param.param_type_name != "option" or param.hidden:
                continue
            if not (param.help or "").strip():
                undescribed.append(f"{path} {param.opts[0]}")
            if getattr(param, "is_flag", False) and param.secondary_opts and not param.default:
                two_forms.append(f"{path} {param.opts[0]}/{param.secondary_opts[0]}")
    assert undescribed == []
    assert two_forms == []  # --dry-run, never --dry-run/--no-dry-run


@pytest.mark.parametrize(
    "command",
    [["--help"], ["sync", "--help"], ["verify", "--help"], ["serve", "--help"],
     ["users", "disable", "--help"], ["accounts", "update", "--help"],
     ["periods", "advance", "--help"]],
    ids=" ".join,
)  # fmt: skip
def test_help_shows_no_type_placeholders_and_defaults_with_their_values(
    runner: CliRunner, command: list[str]
) -> None:
    result = run(runner, *command)
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.stdout
    assert "<str>" not in result.stdout
    if command[0] == "serve":
        assert "BILLSYNC_PORT, else 8080" in one_line(result.stdout)
        assert "BILLSYNC_HOST, else 127.0.0.1" in one_line(result.stdout)
    if command[:2] == ["users", "disable"]:
        assert re.search(r"\*\s+--reason", result.stdout), result.stdout  # marked required


# --- output: its own lines first, 80 columns ------------------------------------------------------


def test_a_command_prints_no_library_log_lines(tmp_path: Path) -> None:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("BILLSYNC_")
    } | {"BILLSYNC_DATA_DIR": str(tmp_path / "data"), "BILLSYNC_API_TOKEN": "t"}
    for args in (["accounts", "create", "acme", "--currency", "usd"], ["accounts", "list"],
                 ["verify", "--ledger-only"]):  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "billsync", *args], env=environment, capture_output=True,
            text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stderr == "", result.stderr  # no Alembic, no log line: piped, no JSON
        assert not result.stdout.startswith("{"), result.stdout


def fits(output: str, width: int = 80) -> None:
    for line in output.splitlines():
        assert len(line) <= width, f"{len(line)} columns: {line!r}"


def test_accounts_show_and_status_fit_80_columns(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common.console, "width", 80)
    account = "acme-" + "x" * 40
    create(runner, account, "--name", "A very long company name, Incorporated, of Somewhere")
    at = datetime.now(UTC) - timedelta(minutes=3)
    events = [usage_event("e1", at, account)]
    events.append({**events[0], "id": "e2", "metric": "bandwidth.egress.na-eu.gb",
                   "quantity": "1234.5", "dimensions": {"region": "fra"}})  # fmt: skip
    ingest(runner, tmp_path, *events)
    shown = run(runner, "accounts", "show", account)
    assert shown.exit_code == 0, shown.output
    fits(shown.stdout)
    assert re.search(r"\b3600 second\b", shown.stdout)
    assert re.search(r"^total\s+[\d,]+\.\d\d$", shown.stdout, re.MULTILINE), shown.stdout
    status = run(runner, "status")
    assert status.exit_code == 0, status.output
    fits(status.stdout)
    header = next(line for line in status.stdout.splitlines() if "last synced" in line)
    assert "cur" in header.split()
    row = next(line for line in status.stdout.splitlines() if line.startswith("acme-"))
    assert re.search(r"\bnever\s+USD\s+[\d,]+\.\d\d\s+2\s+0\b", row), row
    one = run(runner, "status", "--account", account)
    assert re.search(r"\bUSD\b", one.stdout)


def test_status_shows_times_to_the_second(runner: CliRunner, data_dir: Path) -> None:
    create(runner)
    database = ledger(data_dir)
    with database.transaction() as connection:
        connection.execute(
            text("UPDATE account_sync SET last_synced_at = :at"),
            {"at": datetime(2026, 11, 15, 12, 3, 7, tzinfo=UTC)},
        )
    database.dispose()
    result = run(runner, "status", "--account", "acme")
    assert "last synced (UTC)" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("acme"))
    assert re.search(r"^acme\s+2026-11-15 12:03:07\s+USD\s+0\.00\s+0\s+0\s*$", row), row


def test_the_reconcile_report_fits_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    narrow = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    monkeypatch.setattr(reconcile_cli, "console", narrow)
    items = [
        DriftItem(
            account="customer-with-a-rather-long-identifier-0001", period_start=date(2026, 11, 1),
            invoice_id="in_1QXYZabcdefghijk", kind=kind, line_id=12345,
            stripe_line_item_id="il_1QXYZabcdefghijklmnop", ledger_amount=1234567,
            stripe_amount=1234500, repairable=repairable, repaired=False,
            detail="Stripe's line holds 12,345.00, the ledger's 12,345.67: pushed again by repair",
            currency="usd", problem_id=42,
        )
        for kind, repairable in (("amount_differs", True), ("unknown_line", False))
    ]  # fmt: skip
    reconcile_cli.print_report(ReconcileReport(items=items, accounts=1, invoices=1))
    output = narrow.export_text()
    narrow.file.close()
    fits(output)
    assert "12,345.67" in output
    assert "12,345.00" in output
    assert "1. line 12345, il_1QXYZabcdefghijklmnop: Stripe's line holds" in one_line(output)
    assert "to decide" in output


# --- catalog check, busy ports, consume, simulate -------------------------------------------------


def test_catalog_check_reports_every_error_with_its_path(runner: CliRunner, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(
        '[catalog]\ncurrencies = ["usd", "eur"]\n\n'
        '[[metric]]\nid = "api.calls"\nunit = ""\nprice = { USD = "-1", eur = "x" }\n\n'
        '[[metric]]\nid = "Bad Id"\nunit = "s"\nprice = { usd = "1", eur = "1" }\n\n'
        '[[metric]]\nid = "storage"\nunit = "GB"\n[metric.price.usd]\n'
        'tiers = [{ up_to = "10", unit_price = "1" }, { up_to = "5", unit_price = "1" }, '
        '{ unit_price = "1" }]\n'
    )
    result = run(runner, "catalog", "check", str(broken))
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == [
        f"error: {broken}: {problem}"
        for problem in (
            'metric \'api.calls\'.unit: required, e.g. "second" or "GB"',
            "metric 'api.calls'.price.USD: unit_price must not be negative",
            "metric 'api.calls'.price.eur: unit_price 'x' is not a decimal number",
            "metric[1].id: required; lower-case letters, digits, '.', '_' or '-' (at most 100 "
            "characters), got 'Bad Id'",
            "metric 'storage'.price.usd.tiers[1].up_to: must be greater than the previous "
            "limit (10)",
            "metric 'storage'.price: no price for eur",
        )
    ] + [f"error: 6 error(s) in {broken}"]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize(
    ("command", "option"),
    [(["serve"], "--port (or BILLSYNC_PORT)"), (["api"], "--port (or BILLSYNC_PORT)"),
     (["emulator"], "--port")],
)  # fmt: skip
def test_a_busy_port_names_the_option_that_changes_it(
    runner: CliRunner, busy_port: int, command: list[str], option: str
) -> None:
    result = run(runner, *command, "--port", str(busy_port))
    assert_one_line_failure(
        result, f"port {busy_port} on 127.0.0.1 is already in use: choose another with {option}"
    )


def test_a_busy_metrics_port_names_its_setting(
    runner: CliRunner, busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(runner)
    monkeypatch.setenv("BILLSYNC_STRIPE_API_KEY", "sk_test_metricsPortTest0123")
    monkeypatch.setenv("BILLSYNC_METRICS_PORT", str(busy_port))
    monkeypatch.setenv("BILLSYNC_HOST", "127.0.0.1")
    assert_one_line_failure(
        run(runner, "worker"), f"/metrics on port {busy_port}", "BILLSYNC_METRICS_PORT"
    )


def test_the_demo_names_which_of_its_ports_is_busy(runner: CliRunner, busy_port: int) -> None:
    result = run(runner, "demo", "--emulator-port", str(busy_port), "--port", str(free_port()))
    assert_one_line_failure(result, f"port {busy_port}", "--emulator-port")


def test_simulated_event_ids_differ_across_seeds(runner: CliRunner, tmp_path: Path) -> None:
    start = datetime(2026, 11, 15, tzinfo=UTC)
    ids = []
    for seed in (1, 2):
        simulation = Simulation(seed=seed, accounts=5, start=start)
        ids.append({e["id"] for d in simulation.deliveries(start + timedelta(minutes=10))
                    for e in d.events})  # fmt: skip
    assert ids[0]
    assert ids[1]
    assert ids[0].isdisjoint(ids[1])

    for seed_text in ("1", "2"):
        out = tmp_path / f"seed-{seed_text}.jsonl"
        made = run(runner, "simulate", "--seed", seed_text, "--accounts", "3", "--duration", "2m",
                   "--duplicate-rate", "0", "--late-rate", "0", "--out", str(out))  # fmt: skip
        assert made.exit_code == 0, made.output
        loaded = run(runner, "ingest", str(out))
        assert loaded.exit_code == 0, loaded.output  # no duplicate_conflict between the seeds


def test_every_commands_help_names_its_values_and_marks_reason_required(
    runner: CliRunner,
) -> None:
    """No ``<str>``/``<int>`` placeholder in any command's help, and wherever a command takes
    ``--reason`` for a support action it is required — said by the help, not by a refusal
    afterwards."""
    placeholders, optional_reasons = [], []
    for path, command in every_command():
        shown = run(runner, *path.split(), "--help", terminal_width=200)
        assert shown.exit_code == 0, shown.output
        placeholders += [f"{path}: {found}" for found in re.findall(r"<\w+>", shown.stdout)]
        for param in command.params:
            # Support's actions and users' access: a person must say why (an account's
            # settings may change with or without a reason, as through the API).
            audited = path.startswith(("support ", "users disable", "users enable"))
            if audited and "--reason" in getattr(param, "opts", ()) and not param.required:
                optional_reasons.append(path)
    assert placeholders == []
    assert optional_reasons == []


def test_support_names_a_missing_account_first_and_takes_any_date_of_the_period(
    runner: CliRunner,
) -> None:
    missing = run(runner, "support", "hold", "nosuch", "--period", "2026-11-15", "--reason", "r")
    assert "account 'nosuch' does not exist" in assert_one_line_failure(missing, code=1)
    assert run(runner, "accounts", "create", "acme", "--currency", "usd").exit_code == 0
    today = datetime.now(UTC).date()  # the command runs on the system clock
    adjusted = run(
        runner, "support", "adjust", "acme", "--amount", "5.00", "--description", "Setup",
        "--reason", "asked", "--period", today.isoformat(),
    )  # fmt: skip
    assert adjusted.exit_code == 0, adjusted.output
    assert f"period starting {today.replace(day=1)}" in one_line(adjusted.stdout)


# --- negotiated rates from the command line -------------------------------------------------


def test_accounts_prices_sets_a_rate_card_re_rates_and_shows_which_price_applies(
    runner: CliRunner, data_dir: Path, tmp_path: Path
) -> None:
    create(runner)
    now = datetime.now(UTC)
    ingest(runner, tmp_path, usage_event("e1", now - timedelta(minutes=5)))
    wide = {"COLUMNS": "200"}
    result = run(
        runner, "accounts", "prices", "acme", "--set", f"{MACHINE}=0.0001",
        "--set", 'volume.gb_hours={"tiers": [{"up_to": "10", "unit_price": "0"}, '
        '{"unit_price": "0.0002"}]}',
        "--reason", "enterprise deal", env=wide,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = one_line(result.output.replace("│", " "))
    assert "1 line(s) of the current period re-rated" in text
    assert f"{MACHINE} 0.0001 negotiated rate from" in text
    assert "volume.gb_hours 0 up to 10, 0.0002 above negotiated rate from" in text
    assert "ip.ipv4.hours 0.00274 catalog price" in text
    # The line of the current period is rated at the negotiated price: 3,600 s × $0.0001.
    database = ledger(data_dir)
    with database.read() as connection:
        amount = connection.execute(select(lines.c.amount)).scalar_one()
    database.dispose()
    assert amount == 36
    shown = one_line(run(runner, "accounts", "prices", "acme", env=wide).output.replace("│", " "))
    assert f"{MACHINE} 0.0001 negotiated rate from" in shown
    assert_one_line_failure(
        run(runner, "accounts", "prices", "acme", "--set", "nonsense"), "METRIC=PRICE", code=2
    )
    assert_one_line_failure(
        run(runner, "accounts", "prices", "acme", "--set", "gpu.hours=1"), "no such metric"
    )
