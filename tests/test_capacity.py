"""What Stripe's limits allow (``billsync capacity``) and the platform summary of ``billsync
status``: the physical bounds, computed from the configured limits."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from billsync.cli.main import app as cli
from billsync.core.capacity import FINALIZE, UPDATE_LINES, capacity
from billsync.db.database import Database
from billsync.db.tables import billing_periods
from tests.conftest import T0


@pytest.mark.unit
def test_the_interval_and_the_close_follow_from_the_limits() -> None:
    # 100,000 accounts, 15-minute interval, Stripe's live limits: 100/s, 25/s per endpoint.
    result = capacity(100_000, 900, 100, lambda endpoint: 25.0)
    assert result.achievable_interval_seconds == 4000  # 100,000 update_lines at 25/s
    assert result.interval_bound_by == UPDATE_LINES
    assert not result.meets_interval
    assert result.close_seconds == 4000  # 67 minutes at 25 finalize/s (and 25 update_lines/s)
    assert result.close_bound_by in (UPDATE_LINES, FINALIZE)
    assert round(result.needed_update_lines_rate, 1) == 111.1
    # Stripe raised update_lines and finalize to 200/s: the global rate is the bound now.
    raised = {UPDATE_LINES: 200.0, FINALIZE: 200.0}
    result = capacity(100_000, 900, 100, lambda endpoint: raised.get(endpoint, 25.0))
    assert (result.achievable_interval_seconds, result.interval_bound_by) == (
        1000,
        "the global rate",
    )
    assert result.close_seconds == 2000  # two calls per account at 100/s
    # Few accounts: the policy's own interval.
    small = capacity(1_000, 900, 100, lambda endpoint: 25.0)
    assert small.meets_interval
    assert small.interval_bound_by == "the policy"
    with pytest.raises(ValueError, match="positive"):
        capacity(10, 0, 100, lambda endpoint: 25.0)


def test_the_capacity_and_status_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLSYNC_DATA_DIR", str(tmp_path))
    url = f"sqlite:///{tmp_path}/billsync.db"
    monkeypatch.setenv("BILLSYNC_DATABASE_URL", url)
    monkeypatch.setenv("BILLSYNC_API_TOKEN", "capacity-token-0123456789")
    monkeypatch.setenv("BILLSYNC_STRIPE_API_KEY", "sk_live_capacityTest0000001")
    monkeypatch.setenv("BILLSYNC_STRIPE_ENDPOINT_RATES", '{"POST /v1/invoices/{id}/finalize": 100}')
    runner = CliRunner()
    answer = runner.invoke(cli, ["capacity", "--accounts", "100000"])
    assert answer.exit_code == 0, answer.output
    assert "80 calls/s in all, update_lines 25/s, finalize 100/s" in answer.output
    assert "66.7 min achievable (configured 15.0 min), bound by POST" in answer.output
    assert "month-end close: at least 66.7 min" in answer.output
    assert "update_lines 111.1/s" in answer.output
    assert runner.invoke(cli, ["accounts", "create", "acme", "--currency", "usd"]).exit_code == 0
    status = runner.invoke(cli, ["status"])
    assert status.exit_code == 0, status.output
    assert "1 accounts, 0 with usage in an open period; 0 behind Stripe" in status.output
    assert "effective interval 0 s (configured 15.0 min): on time" in status.output
    assert "acme" in status.output
    assert "month end" not in status.output  # nothing closing
    database = Database(url)
    with database.transaction() as connection:  # acme's November, closing at month end
        connection.execute(
            billing_periods.insert().values(
                account_id="acme", start=date(2026, 11, 1), end=date(2026, 12, 1),
                status="closing", created_at=T0, updated_at=T0,
            )
        )  # fmt: skip
    database.dispose()
    closing = runner.invoke(cli, ["status"])
    assert "periods: 1 closing" in closing.output
    assert "month end: 1 period(s) to finalize, at least 0 s more" in closing.output
    bad = runner.invoke(cli, ["capacity"], env={"BILLSYNC_STRIPE_ENDPOINT_RATES": '{"x": 5}'})
    assert bad.exit_code != 0
    assert "invalid settings: BILLSYNC_STRIPE_ENDPOINT_RATES" in bad.output
    assert "name an endpoint as Stripe counts it" in bad.output
