"""The chaos suite, short form: a simulated month through billsync's API and a worker process
while Stripe fails 20 % of requests (mixed kinds), webhooks are duplicated, reordered and
dropped, the worker is killed with SIGKILL 30 times (at steps of the month and its close chosen
from the seed, each while it runs), and on PostgreSQL the database connection is cut and
restored 4 times. Afterwards ``billsync verify`` passes and no usage was lost or
counted twice. The long form, with its figures: ``bench/chaos.py``."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.chaos.harness import FAULT_KINDS, MONTH_END, ChaosConfig, ChaosRun
from tests.conftest import PG_URL_VARIABLE


@pytest.fixture
def empty_postgres_schema() -> Iterator[str]:
    url = os.environ.get(PG_URL_VARIABLE)
    if not url:
        pytest.skip(f"PostgreSQL tests skipped: set {PG_URL_VARIABLE} to run them")
    schema = f"billsync_chaos_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    yield scoped.render_as_string(hide_password=False)
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def run_and_check(config: ChaosConfig) -> None:
    result = ChaosRun(config).run()
    report = json.dumps(result.to_dict(), indent=2, default=str)
    (config.workdir / "result.json").write_text(report)
    assert result.kills == config.kills, report
    assert result.worker_exits == 0, report
    assert sum(result.faults.values()) > 0, report
    assert set(result.faults) == set(FAULT_KINDS), report
    assert result.webhooks["chaos"].get("duplicated", 0) > 0, report
    assert result.webhooks["chaos"].get("dropped", 0) > 0, report
    assert result.verify_exit_code == 0, report
    assert result.verify["violations_by_kind"] == {}, report
    assert result.verify["pending_lines"] == 0, report
    assert result.stored_events == result.distinct_events, report
    assert result.missing_events == 0, report
    assert result.quantity_mismatches == [], report
    assert result.periods_finalized == result.periods == config.accounts, report
    assert result.ok, report


def test_a_month_of_chaos_on_sqlite(tmp_path: Path) -> None:
    run_and_check(ChaosConfig(database_url=f"sqlite:///{tmp_path}/billsync.db", workdir=tmp_path))


def test_a_month_of_chaos_on_postgresql(tmp_path: Path, empty_postgres_schema: str) -> None:
    config = ChaosConfig(database_url=empty_postgres_schema, workdir=tmp_path, db_cuts=4)
    result_file = tmp_path / "result.json"
    run_and_check(config)
    assert json.loads(result_file.read_text())["db_cuts"] == config.db_cuts


@pytest.mark.unit
def test_the_chaos_schedule_spreads_over_the_month_and_its_close() -> None:
    """The kills are the schedule's: as many as asked, distinct, in every stretch of the run
    (the month's first days and the close after it included), the same for the same seed."""
    config = ChaosConfig(database_url="sqlite://", workdir=Path("unused"))
    steps = config.driver_steps()
    kills = config.schedule(config.kills, salt=1)
    assert len(set(kills)) == len(kills) == 30
    assert kills == sorted(kills)
    assert kills == config.schedule(30, salt=1)
    assert kills[0] < len(steps) / 30
    assert kills[-1] >= len(steps) * 29 / 30
    assert any(steps[i] > MONTH_END for i in kills), "no kill during the close"
    with pytest.raises(ValueError, match="do not fit"):
        config.schedule(len(steps) + 1, salt=1)
