"""The simulated platform: reproducible, realistic in shape, counted exactly once by billsync."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from billsync.bootstrap import Billsync
from billsync.cli.main import app as cli
from billsync.simulator import Simulation
from tests.conftest import T0, TEST_TOKEN
from tests.served import serve

START = datetime(2026, 11, 1, tzinfo=UTC)


def run(seed: int, **options: object) -> tuple[Simulation, list[list[dict[str, object]]]]:
    simulation = Simulation(seed=seed, accounts=8, start=START, **options)  # type: ignore[arg-type]
    deliveries = [d.events for d in simulation.deliveries(START + timedelta(minutes=30))]
    return simulation, deliveries


@pytest.mark.unit
def test_the_same_seed_replays_the_same_platform_and_another_seed_does_not() -> None:
    first, first_deliveries = run(7)
    second, second_deliveries = run(7)
    _, other_deliveries = run(8)
    assert first.accounts == second.accounts
    assert first_deliveries == second_deliveries
    assert first_deliveries != other_deliveries


@pytest.mark.unit
def test_account_sizes_are_heavy_tailed() -> None:
    simulation = Simulation(seed=1, accounts=300, start=START)
    sizes = sorted(len(tenant.machines) for tenant in simulation.tenants)
    assert statistics.median(sizes) <= 2
    assert sizes[-1] >= 10 * statistics.median(sizes)
    assert {a.currency for a in simulation.accounts} >= {"usd", "eur"}


@pytest.mark.unit
def test_machines_report_at_most_the_seconds_in_each_window_and_stop_and_start() -> None:
    _, deliveries = run(3, report_every=timedelta(seconds=5), late_rate=0)
    reports: dict[str, set[str]] = {}
    for events in deliveries:
        for event in events:
            if str(event["metric"]).startswith("machine."):
                assert 1 <= int(str(event["quantity"])) <= 5
                machine, _ = str(event["id"]).rsplit(":", 1)
                reports.setdefault(machine, set()).add(str(event["id"]))
    per_machine = [len(r) for r in reports.values()]
    windows = 30 * 60 // 5
    assert max(per_machine) <= windows
    assert min(per_machine) < windows  # some machine stopped (or started) during the half hour
    volumes = [e for events in deliveries for e in events if e["metric"] == "volume.gb_hours"]
    hours = {e["timestamp"] for e in volumes}
    assert hours <= {"2026-11-01T00:00:00Z", "2026-11-01T00:30:00Z"} or not volumes


@pytest.mark.unit
def test_duplicates_repeat_an_event_exactly_and_late_events_arrive_after_the_delay() -> None:
    simulation = Simulation(
        seed=5, accounts=8, start=START, duplicate_rate=0.05, late_rate=0.02,
        late_delay=timedelta(minutes=20),
    )  # fmt: skip
    seen: dict[str, dict[str, object]] = {}
    repeats = late = 0
    for delivery in simulation.deliveries(START + timedelta(hours=1)):
        for event in delivery.events:
            key = str(event["id"])
            if key in seen:
                assert seen[key] == event
                repeats += 1
            seen[key] = event
            stamp = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))
            if delivery.at - stamp >= timedelta(minutes=20):
                late += 1
    assert repeats == simulation.stats.duplicates > 0
    assert late > 0
    assert len(seen) + len(simulation._late) == simulation.stats.events


def test_the_jsonl_output_is_one_valid_event_per_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BILLSYNC_DATA_DIR", str(tmp_path / "var"))
    out = tmp_path / "events.jsonl"
    result = CliRunner().invoke(
        cli,
        ["simulate", "--seed", "2", "--accounts", "3", "--duration", "2m",
         "--start", "2026-11-01T00:00:00Z", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert events
    fields = {"id", "account", "metric", "quantity", "timestamp", "dimensions"}
    assert all(set(e) <= fields for e in events)
    again = CliRunner().invoke(
        cli,
        ["simulate", "--seed", "2", "--accounts", "3", "--duration", "2m",
         "--start", "2026-11-01T00:00:00Z", "--out", str(tmp_path / "again.jsonl")],
    )  # fmt: skip
    assert again.exit_code == 0
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()


@pytest.mark.unit
def test_bad_options_get_a_clear_error() -> None:
    result = CliRunner().invoke(cli, ["simulate", "--report-every", "7m", "--out", "-"])
    assert result.exit_code == 2
    assert "divide an hour" in result.output
    result = CliRunner().invoke(cli, ["simulate", "--duration", "soon", "--out", "-"])
    assert result.exit_code == 2
    assert "--duration" in result.output


def test_sent_over_http_billsync_counts_every_event_once(
    billsync: Billsync, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = T0 - timedelta(hours=1)
    with serve(billsync) as url:
        monkeypatch.setenv("BILLSYNC_API_TOKEN", TEST_TOKEN)
        result = CliRunner().invoke(
            cli,
            ["simulate", "--seed", "11", "--accounts", "5", "--duration", "20m",
             "--report-every", "10s", "--duplicate-rate", "0.05", "--late-rate", "0.01",
             "--late-delay", "5m", "--start", start.isoformat(), "--url", url, "--batch", "300"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        expected = Simulation(
            seed=11, accounts=5, start=start, report_every=timedelta(seconds=10),
            duplicate_rate=0.05, late_rate=0.01, late_delay=timedelta(minutes=5),
        )  # fmt: skip
        list(expected.deliveries(start + timedelta(minutes=20)))
        totals: dict[str, Decimal] = {}
        events = 0
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TEST_TOKEN}"}) as http:
            for account in expected.accounts:
                body = http.get(f"/v1/accounts/{account.id}/lines").json()
                for line in body["lines"]:
                    metric = line["metric"]
                    totals[metric] = totals.get(metric, Decimal(0)) + Decimal(line["quantity"])
                    events += line["event_count"]
    assert expected.stats.duplicates > 0
    assert expected.stats.late > 0
    assert events == expected.stats.events
    assert dict(totals) == {m: q for m, q in expected.stats.by_metric.items() if q}
    answered = f"{expected.stats.events} accepted, {expected.stats.duplicates} duplicate\n"
    assert f"billsync answered: {answered}" in result.output


def test_simulate_then_ingest_works_as_the_readme_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --start the simulated span ends now, and --out creates the accounts locally."""
    monkeypatch.setenv("BILLSYNC_DATA_DIR", str(tmp_path / "var"))
    out = tmp_path / "usage.jsonl"
    runner = CliRunner()
    made = runner.invoke(
        cli, ["simulate", "--seed", "7", "--accounts", "4", "--duration", "10m", "--out", str(out)]
    )
    assert made.exit_code == 0, made.output
    assert "4 accounts created" in made.output
    ingested = runner.invoke(cli, ["ingest", str(out)])
    assert ingested.exit_code == 0, ingested.output  # ingest exits 1 if any event is rejected
