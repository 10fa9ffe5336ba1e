"""bench.compare: a headline figure worse by more than 15 % than the committed result is a
warning; better, slightly worse or new figures are not."""

from __future__ import annotations

from typing import Any

import pytest
from bench.compare import THRESHOLD, compare, main

pytestmark = pytest.mark.unit


def ingest(events_per_second: float, p99: float) -> dict[str, Any]:
    return {
        "results": [
            {"store": "sqlite", "events_per_second": events_per_second,
             "batch_latency_ms": {"p99": p99}},
        ]
    }  # fmt: skip


def test_a_drop_past_the_threshold_is_a_warning_and_a_small_one_is_not() -> None:
    changes = {c.name: c for c in compare("ingest", ingest(20_000, 100.0), ingest(16_000, 110.0))}
    throughput = changes["ingest sqlite events/s"]
    assert throughput.regressed  # 20 % fewer events/s
    assert throughput.worse_by == pytest.approx(0.20)
    assert "WARNING" in throughput.line()
    latency = changes["ingest sqlite batch p99 ms"]
    assert not latency.regressed  # 10 % slower: within the run-to-run spread
    assert latency.worse_by == pytest.approx(0.10)
    assert THRESHOLD == 0.15


def test_lower_is_better_for_latencies_and_better_is_never_a_warning() -> None:
    changes = {c.name: c for c in compare("ingest", ingest(20_000, 100.0), ingest(30_000, 130.0))}
    assert not changes["ingest sqlite events/s"].regressed
    assert changes["ingest sqlite events/s"].worse_by < 0
    assert changes["ingest sqlite batch p99 ms"].regressed  # p99 up 30 %


def test_figures_without_a_previous_result_are_new() -> None:
    changes = compare("ingest", None, ingest(20_000, 100.0))
    assert [c.before for c in changes] == [None, None]
    assert all(not c.regressed and c.line().strip().startswith("new") for c in changes)
    assert compare("not_a_benchmark", None, {}) == []


def test_the_command_runs_without_results(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--against", "HEAD"]) == 0
    capsys.readouterr()


def test_jetstream_figures_with_arrays_of_events_are_named_apart() -> None:
    def run(per_message: int, rate: float) -> dict[str, Any]:
        return {
            "events_per_message": per_message,
            "results": [{"store": "sqlite", "runs": [{"consumers": 2, "events_per_second": rate}]}],
        }

    single = compare("jetstream_ingest", run(1, 30_000), run(1, 20_000))
    batched = compare("jetstream_ingest_batched", run(100, 60_000), run(100, 59_000))
    assert [c.name for c in single] == ["jetstream sqlite 2 consumer(s) events/s"]
    assert [c.name for c in batched] == [
        "jetstream (100 per message) sqlite 2 consumer(s) events/s"
    ]
    assert single[0].regressed
    assert not batched[0].regressed


def test_a_figure_that_fell_as_much_as_the_machine_is_not_a_regression() -> None:
    """Each result carries the machine's speed (``machine_reference``): on a machine running
    at 0.6 × the speed of the committed run, 40 % fewer events/s and a 1/0.6 longer p99 are the
    machine's; a drop beyond the machine's is still a warning."""

    def measured(rate: float, p99: float, reference: float) -> dict[str, Any]:
        return {**ingest(rate, p99), "machine_reference": {"events_per_second": reference}}

    before = measured(40_000, 100.0, 500_000)
    slower = measured(24_000, 165.0, 300_000)
    slower_machine = {c.name: c for c in compare("ingest", before, slower)}
    assert slower_machine["ingest sqlite events/s"].worse_by == pytest.approx(0.40)
    assert not slower_machine["ingest sqlite events/s"].regressed
    assert slower_machine["ingest sqlite events/s"].worse_by_on_the_same_machine == pytest.approx(0)
    assert not slower_machine["ingest sqlite batch p99 ms"].regressed
    assert "as fast as then" in slower_machine["ingest sqlite events/s"].line()
    slower_billsync = {c.name: c for c in compare("ingest", before, measured(18_000, 100, 300_000))}
    assert slower_billsync["ingest sqlite events/s"].regressed  # 25 % below the machine's share
    assert "WARNING" in slower_billsync["ingest sqlite events/s"].line()
    without = compare("ingest", ingest(40_000, 100.0), measured(24_000, 100.0, 300_000))
    assert without[0].machine is None
    assert without[0].regressed  # no reference then: judged as measured


def test_the_paced_latency_is_a_figure_of_its_own_and_a_table_in_the_report() -> None:
    from bench.report import paced_table  # noqa: PLC0415 - the report's one table here

    def run(p99: float) -> dict[str, Any]:
        data = ingest(40_000, 120.0)
        data["results"][0]["paced"] = {
            "offered_events_per_second": 40_000.0, "events": 400_000, "failed_batches": 0,
            "events_per_second": 39_800, "batch_latency_ms": {"p50": 60.0, "p99": p99, "max": p99},
        }  # fmt: skip
        return data

    changes = {c.name: c for c in compare("ingest", run(80.0), run(120.0))}
    paced = changes["ingest sqlite paced at 40,000/s batch p99 ms"]
    assert paced.regressed  # p99 at the same offered load up 50 %
    assert not changes["ingest sqlite batch p99 ms"].regressed
    section = paced_table(run(80.0))
    assert "on a schedule at 40,000 events/s" in section
    assert "| sqlite | 400,000 | 39,800 | 60.0 | 80.0 | 80.0 | 0 |" in section
    assert paced_table(ingest(40_000, 120.0)) == ""  # results from before the paced run
