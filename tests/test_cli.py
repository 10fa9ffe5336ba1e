"""The ``billsync`` command line on a fresh SQLite ledger in a temporary data directory."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from billsync.cli.main import app
from billsync.config import EXAMPLE_CATALOG

MACHINE = "machine.shared-cpu-1x.seconds"
EGRESS = "bandwidth.egress.na-eu.gb"
# One row of a rich table made of numbers only, e.g. "│ 6 │ 3 │ 1 │ 2 │".
NUMBER_ROW = re.compile(r"^[\s│┃|]*\d+(?:[\s│┃|]+\d+)*[\s│┃|]*$")


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CLI whose settings point at an empty data directory (a fresh SQLite ledger)."""
    for name in (
        "BILLSYNC_DATABASE_URL",
        "BILLSYNC_CATALOG",
        "BILLSYNC_BILLING_ANCHOR_DAY",
        "BILLSYNC_USAGE_HORIZON_DAYS",
        "FORCE_COLOR",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BILLSYNC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BILLSYNC_API_TOKEN", "cli-test-token")
    monkeypatch.setenv("COLUMNS", "250")  # no wrapping of paths and messages
    return CliRunner()


def run(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(app, list(args))


def assert_clean_failure(result: Result) -> None:
    """Non-zero exit through typer.Exit, not an uncaught exception and its traceback."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)


def one_line(text: str) -> str:
    return " ".join(text.split())


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def event_line(event_id: str, metric: str, quantity: Any, at: datetime, **dimensions: str) -> str:
    return json.dumps(
        {
            "id": event_id,
            "account": "acme",
            "metric": metric,
            "quantity": quantity,
            "timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "dimensions": dimensions,
        }
    )


def summary_counts(output: str) -> list[int]:
    """The numbers of the ingest summary table: lines, accepted, duplicates, rejected."""
    rows = [line for line in output.splitlines() if NUMBER_ROW.match(line) and line.strip()]
    assert len(rows) == 1, output
    return [int(number) for number in re.findall(r"\d+", rows[0])]


# --- accounts -----------------------------------------------------------------------------------


def test_accounts_create_and_show(runner: CliRunner) -> None:
    created = run(runner, "accounts", "create", "acme", "--currency", "usd", "--name", "Acme Inc")
    assert created.exit_code == 0, created.output
    assert "created account acme (usd)" in created.stdout

    shown = run(runner, "accounts", "show", "acme")
    assert shown.exit_code == 0, shown.output
    assert "Acme Inc (acme)" in shown.stdout
    assert "USD" in shown.stdout
    assert re.search(r"total\W+0\.00", shown.stdout), shown.stdout


def test_accounts_create_twice_fails_clearly(runner: CliRunner) -> None:
    assert run(runner, "accounts", "create", "acme", "--currency", "usd").exit_code == 0
    again = run(runner, "accounts", "create", "acme", "--currency", "eur")
    assert_clean_failure(again)
    assert "account 'acme' already exists" in one_line(again.stderr)
    shown = run(runner, "accounts", "show", "acme")
    assert "USD" in shown.stdout  # the first one is untouched


@pytest.mark.parametrize(
    ("currency", "words"),
    [
        ("gbp", ["gbp", "usd, eur, jpy"]),
        ("dollars", ["dollars", "three-letter"]),
        ("kwd", ["kwd", "three-decimal"]),
    ],
)
def test_accounts_create_bad_currency_fails(
    runner: CliRunner, currency: str, words: list[str]
) -> None:
    result = run(runner, "accounts", "create", "acme", "--currency", currency)
    assert_clean_failure(result)
    message = one_line(result.stderr)
    for word in words:
        assert word in message, message
    assert_clean_failure(run(runner, "accounts", "show", "acme"))


def test_accounts_create_needs_a_currency(runner: CliRunner) -> None:
    result = run(runner, "accounts", "create", "acme")
    assert result.exit_code == 2  # usage error
    assert "--currency" in result.output


def test_accounts_create_bad_id_fails(runner: CliRunner) -> None:
    result = run(runner, "accounts", "create", "has space", "--currency", "usd")
    assert_clean_failure(result)
    assert "id must start with a letter or digit" in one_line(result.stderr)


def test_accounts_show_prints_text_verbatim(runner: CliRunner, subtests: pytest.Subtests) -> None:
    # Names are data, not console markup: "[/EU]" must neither vanish nor crash the table.
    for account_id, name in (("bold", "Acme [bold]EU"), ("closing", "Acme [/EU]")):
        with subtests.test(name):
            created = run(
                runner, "accounts", "create", account_id, "--currency", "usd", "--name", name
            )
            assert created.exit_code == 0, created.output
            shown = run(runner, "accounts", "show", account_id)
            assert shown.exit_code == 0, repr(shown.exception)
            assert f"{name} ({account_id})" in shown.stdout


def test_accounts_show_unknown_account_fails(runner: CliRunner) -> None:
    result = run(runner, "accounts", "show", "ghost")
    assert_clean_failure(result)
    assert "account 'ghost' does not exist" in one_line(result.stderr)


def test_accounts_show_bad_period_fails(runner: CliRunner) -> None:
    assert run(runner, "accounts", "create", "acme", "--currency", "usd").exit_code == 0
    result = run(runner, "accounts", "show", "acme", "--period", "last-month")
    assert_clean_failure(result)
    assert "last-month" in one_line(result.stderr)


# --- catalog check ------------------------------------------------------------------------------


def test_catalog_check_example(runner: CliRunner) -> None:
    result = run(runner, "catalog", "check", str(EXAMPLE_CATALOG))
    assert result.exit_code == 0, result.output
    assert f"{EXAMPLE_CATALOG}: 11 metrics in usd, eur, jpy" in one_line(result.stdout)
    assert MACHINE in result.stdout
    assert "volume.gb_hours per GB-hour" in one_line(result.stdout)


def test_catalog_check_defaults_to_the_configured_catalog(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(runner, "catalog", "check").exit_code == 0
    mine = tmp_path / "mine.toml"
    mine.write_text(
        '[catalog]\ncurrencies = ["usd"]\n\n[[metric]]\nid = "api.calls"\nunit = "call"\n'
        'price = { usd = "0.001" }\n'
    )
    monkeypatch.setenv("BILLSYNC_CATALOG", str(mine))
    result = run(runner, "catalog", "check")
    assert result.exit_code == 0, result.output
    assert f"{mine}: 1 metrics in usd" in one_line(result.stdout)


def test_catalog_check_broken_file_names_it(runner: CliRunner, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(
        '[catalog]\ncurrencies = ["usd"]\n\n[[metric]]\nid = "api.calls"\nunit = "call"\n'
        'price = { usd = "-1" }\n'
    )
    result = run(runner, "catalog", "check", str(broken))
    assert_clean_failure(result)
    message = one_line(result.stderr)
    assert str(broken) in message
    assert "api.calls" in message
    assert "unit_price" in message


def test_catalog_check_invalid_toml_names_it(runner: CliRunner, tmp_path: Path) -> None:
    broken = tmp_path / "typo.toml"
    broken.write_text("[catalog\n")
    result = run(runner, "catalog", "check", str(broken))
    assert_clean_failure(result)
    assert str(broken) in one_line(result.stderr)
    assert "not valid TOML" in one_line(result.stderr)


def test_catalog_check_messages_keep_their_brackets(runner: CliRunner, tmp_path: Path) -> None:
    headless = tmp_path / "headless.toml"
    headless.write_text('[[metric]]\nid = "a"\nunit = "s"\nprice = "1"\n')
    result = run(runner, "catalog", "check", str(headless))
    assert_clean_failure(result)
    assert "missing [catalog] table" in one_line(result.stderr)


def test_catalog_check_missing_file_names_it(runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = run(runner, "catalog", "check", str(missing))
    assert_clean_failure(result)
    assert str(missing) in one_line(result.stderr)


def test_catalog_check_non_utf8_file_names_it(runner: CliRunner, tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'[catalog]\ncurrencies = ["eur"]\n# r\xe9sum\xe9\n')
    result = run(runner, "catalog", "check", str(latin1))
    assert_clean_failure(result)
    assert str(latin1) in one_line(result.stderr)


def test_commands_refuse_a_broken_configured_catalog(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('[catalog]\ncurrencies = ["usd"]\n')
    monkeypatch.setenv("BILLSYNC_CATALOG", str(broken))
    result = run(runner, "accounts", "create", "acme", "--currency", "usd")
    assert_clean_failure(result)
    assert str(broken) in one_line(result.stderr)


# --- ingest -------------------------------------------------------------------------------------


@pytest.fixture
def acme(runner: CliRunner) -> str:
    result = run(runner, "accounts", "create", "acme", "--currency", "usd")
    assert result.exit_code == 0, result.output
    return "acme"


def test_ingest_counts_rejects_and_totals(runner: CliRunner, acme: str, tmp_path: Path) -> None:
    at = now() - timedelta(minutes=1)
    first = event_line("e-1", MACHINE, 1_000_000, at)
    lines = [
        first,  # 1
        event_line("e-2", EGRESS, "1.5", at, region="fra"),  # 2
        "",  # 3: blank lines are skipped
        first,  # 4: exact duplicate (in the next batch of 2)
        '{"id": "e-3", "account": "acme",',  # 5: malformed JSON
        event_line("e-4", "machine.giant.seconds", 5, at),  # 6: unknown metric
        event_line("e-5", MACHINE, "200000", at),  # 7
        event_line("e-1", MACHINE, 999, at),  # 8: same id, different payload
    ]
    source = tmp_path / "usage.jsonl"
    source.write_text("\n".join(lines) + "\n")
    rejects = tmp_path / "rejects.jsonl"

    result = run(runner, "ingest", str(source), "--batch-size", "2", "--rejects", str(rejects))

    assert result.exit_code == 1, result.output
    assert summary_counts(result.stdout) == [7, 3, 1, 3]
    stderr = one_line(result.stderr)
    assert "line 5: invalid_json" in stderr
    assert "line 6: unknown_metric" in stderr
    assert "line 8: duplicate_conflict" in stderr
    written = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(item["line"], item["error"]["code"]) for item in written] == [
        (5, "invalid_json"),
        (6, "unknown_metric"),
        (8, "duplicate_conflict"),
    ]
    for item in written:
        assert item["error"]["message"]
        assert item["raw"] == lines[item["line"] - 1]

    shown = run(runner, "accounts", "show", "acme", "--period", at.date().isoformat())
    assert shown.exit_code == 0, shown.output
    table = shown.stdout
    machine_row = next(line for line in table.splitlines() if MACHINE in line)
    assert re.search(r"\b1200000 second\b.*\b0\.00000075\b.*\b0\.90$", machine_row), machine_row
    egress_row = next(line for line in table.splitlines() if EGRESS in line)
    assert re.search(r"\b1\.5\b.*\bGB\b.*\b0\.02\b.*\b0\.03\b", egress_row), egress_row
    assert re.search(r"total\W+0\.93", table), table
    assert f"{EGRESS}[region=fra]" in table, table  # the line key, brackets included


def test_ingest_without_rejections_exits_0(runner: CliRunner, acme: str, tmp_path: Path) -> None:
    at = now() - timedelta(minutes=2)
    source = tmp_path / "good.jsonl"
    source.write_text(
        "\n".join(event_line(f"g-{index}", MACHINE, 100, at) for index in range(5)) + "\n"
    )
    rejects = tmp_path / "rejects.jsonl"
    first = run(runner, "ingest", str(source), "--rejects", str(rejects))
    assert first.exit_code == 0, first.output
    assert summary_counts(first.stdout) == [5, 5, 0, 0]
    assert rejects.read_text() == ""

    again = run(runner, "ingest", str(source))  # a re-run only finds duplicates
    assert again.exit_code == 0, again.output
    assert summary_counts(again.stdout) == [5, 0, 5, 0]

    shown = run(runner, "accounts", "show", "acme", "--period", at.date().isoformat())
    machine_row = next(line for line in shown.stdout.splitlines() if MACHINE in line)
    assert re.search(r"\b500\b", machine_row), machine_row


def test_ingest_rejects_events_of_unknown_accounts_and_times(
    runner: CliRunner, acme: str, tmp_path: Path
) -> None:
    at = now()
    ghost = json.loads(event_line("x-1", MACHINE, 1, at - timedelta(minutes=1)))
    ghost["account"] = "ghost"
    source = tmp_path / "bad.jsonl"
    source.write_text(
        "\n".join(
            [
                json.dumps(ghost),
                event_line("x-2", MACHINE, 1, at + timedelta(hours=1)),
                event_line("x-3", MACHINE, 1, at - timedelta(days=60)),
                "[1, 2, 3]",
            ]
        )
    )  # no newline at the end of the last line
    result = run(runner, "ingest", str(source))
    assert result.exit_code == 1, result.output
    assert summary_counts(result.stdout) == [4, 0, 0, 4]
    stderr = one_line(result.stderr)
    for expected in (
        "line 1: unknown_account",
        "line 2: timestamp_in_future",
        "line 3: timestamp_too_old",
        "line 4: invalid_event",
    ):
        assert expected in stderr, stderr


def test_ingest_missing_file_fails_clearly(runner: CliRunner, acme: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.jsonl"
    result = run(runner, "ingest", str(missing))
    assert_clean_failure(result)
    assert "nowhere.jsonl" in one_line(result.output)
