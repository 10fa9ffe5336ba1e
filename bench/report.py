"""Write BENCHMARKS.md (and a chart of Stripe calls per policy) from bench/results/*.json.

.venv/bin/python -m bench.report              every section, from every result (bench/run)
.venv/bin/python -m bench.report --only NAME  one section, after running that benchmark alone
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench.common import RESULTS

ROOT = Path(__file__).parent.parent
REPORT = ROOT / "BENCHMARKS.md"
CHART = ROOT / "docs" / "stripe-calls.svg"
ORDER = (
    "ingest", "jetstream_ingest", "jetstream_ingest_batched", "api_calls", "sync_throughput",
    "workers", "scale", "freshness", "webhooks", "billing", "emulator",
)  # fmt: skip


# Each section's heading, to find it in BENCHMARKS.md (``--only``).
HEADINGS = {
    "ingest": "## Ingest", "jetstream_ingest": "## Streaming ingest from NATS JetStream\n",
    "jetstream_ingest_batched": "## Streaming ingest from NATS JetStream, arrays of events",
    "api_calls": "## Stripe API calls per policy", "sync_throughput": "## Sync throughput at",
    "workers": "## Several workers, one Stripe budget", "scale": "## The scheduler at scale",
    "freshness": "## Freshness and on-demand syncs", "webhooks": "## Webhooks",
    "billing": "## The customer's bill", "emulator": "## The Stripe emulator",
}  # fmt: skip


# The command of a result whose name is not its module's.
COMMANDS = {
    "jetstream_ingest_batched": "python -m bench.jetstream_ingest --events-per-message 100",
}


def load() -> dict[str, dict[str, Any]]:
    found = {}
    for name in ORDER:
        path = RESULTS / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


def n(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}".rstrip("0").rstrip(".")


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), {memory:.1f} GiB RAM, "
        f"Python {platform.python_version()}"
    )


def ingest_section(data: dict[str, Any]) -> str:
    def memory(r: dict[str, Any]) -> list[Any]:
        rss = r["server_rss_mib"]
        change = (rss["last_10pct"] / rss["first_10pct"] - 1) * 100
        return [rss["first_10pct"], rss["last_10pct"], f"{change:+.1f} %", rss["peak"]]

    rows = [
        [r["store"], n(r["events"]), n(r["events_per_second"]), r["batch_latency_ms"]["p50"],
         r["batch_latency_ms"]["p99"], *memory(r),
         n(r["baseline_single_event_requests"]["events_per_second"]),
         f"×{r['speedup_vs_single_event_requests']}"]
        for r in data["results"]
    ]  # fmt: skip
    warm = data.get("warmup_events")
    return "## Ingest\n\n" + (
        f"Batches of {n(data['batch_size'])} events over HTTP from {data['connections']} "
        f"connections of a client in its own process, to one `billsync serve` process "
        f"({data['workers']} worker); targets: 40,000 events/s, p99 ≤ 100 ms, server memory "
        "flat (the last tenth of the run within 10 % of the first). "
        + (f"An unmeasured warm-up of {n(warm)} events comes first, in which the server's "
           "bounded caches fill (SQLite's page cache, the line-id cache). " if warm else "")
        + "A client waits for each answer before sending its next batch, so by Little's law "
        "a batch's mean latency is about connections ÷ batches per second: more connections "
        "add waiting, not throughput, once the one writer is busy."
        + machine_speed(data)
        + "\n\n"
    ) + table(
        ["store", "events", "events/s", "batch p50 ms", "p99 ms", "RSS MiB first 10 %",
         "last 10 %", "change", "peak", "baseline: 1 event per request, events/s",
         "speed-up"], rows,
    ) + paced_table(data)  # fmt: skip


def machine_speed(data: dict[str, Any]) -> str:
    """The machine's speed when the result was written (shared VMs differ from day to day)."""
    reference = data.get("machine_reference")
    if not reference:
        return ""
    return (
        f" This machine's speed at the time: {n(reference['events_per_second'])} events/s of "
        "billsync's validation alone (`machine_reference`, what `bench.compare` scales by)."
    )


def paced_table(data: dict[str, Any]) -> str:
    """Latency at a set throughput: the same server, batches sent on a schedule."""
    runs = [r for r in data["results"] if "paced" in r]
    if not runs:
        return ""
    rate = runs[0]["paced"]["offered_events_per_second"]
    rows = [
        [r["store"], n(r["paced"]["events"]), n(r["paced"]["events_per_second"]),
         r["paced"]["batch_latency_ms"]["p50"], r["paced"]["batch_latency_ms"]["p99"],
         r["paced"]["batch_latency_ms"]["max"], r["paced"]["failed_batches"]]
        for r in runs
    ]  # fmt: skip
    return (
        f"\n\nThen latency at a set throughput: batches sent on a schedule at {n(rate)} "
        "events/s (open loop, 16 connections so that none is held back by an answer), each "
        "timed from the moment it was due. A server that cannot keep up shows it here: "
        "its queue, and so the latency, grows through the run.\n\n"
    ) + table(
        ["store", "events", "events/s", "batch p50 ms", "p99 ms", "max ms", "failed batches"],
        rows,
    )


def sweep_reads(run: dict[str, Any]) -> int:
    """The webhook backstop's ``GET /v1/events`` reads: one per sweep interval, whatever the
    number of accounts — not part of syncing, so not held against the lower bound."""
    return int(run["by_endpoint"].get("GET /v1/events", 0))


def sync_calls(run: dict[str, Any]) -> int:
    return int(run["stripe_calls"]["billsync"]) - sweep_reads(run)


def api_calls_section(data: dict[str, Any]) -> str:
    rows = [
        [r["run"], n(r["accepted_increments"]), n(r["stripe_calls"]["naive"]),
         n(r["stripe_calls"]["lower_bound"]), n(sync_calls(r)),
         f"×{sync_calls(r) / r['stripe_calls']['lower_bound']:.3f}",
         n(sweep_reads(r)), n(r["stripe_calls"]["billsync"]), f"{n(r['naive_over_billsync'])}×",
         r["rate_limited"], r["periods_finalized"]]
        for r in data["results"]
    ]  # fmt: skip
    head = (
        f"## Stripe API calls per policy\n\n{data['accounts']} accounts, "
        f"{data['hours']:g} hours of usage, {data['metrics']} metrics; the naive design makes "
        "one Stripe call per usage increment; the lower bound is the fewest calls that could "
        "carry the same changes. billsync's sync calls are held against the lower bound; the "
        "webhook sweep's reads of `GET /v1/events` (one per sweep interval, 5 minutes by "
        "default, however many accounts) are counted apart, and in the total that the naive "
        "design is compared with.\n\n![Stripe calls per policy](docs/stripe-calls.svg)\n\n"
    )
    return head + table(
        ["policy", "increments", "naive", "lower bound", "billsync sync calls",
         "÷ lower bound", "sweep reads", "billsync total", "naive ÷ billsync total", "429s",
         "invoices finalized"], rows,
    )  # fmt: skip


def latency_row(name: str, block: dict[str, Any]) -> list[object]:
    return [name, n(block["requests"]), n(block.get("per_second", 0)), block["p50_ms"],
            block["p99_ms"]]  # fmt: skip


def webhooks_section(data: dict[str, Any]) -> str:
    rows = [
        latency_row("baseline: /healthz", data["baseline_healthz"]),
        latency_row("signed events, acknowledged", data["acknowledge"]),
        latency_row("the same events again (duplicates)", data["duplicates_resent"]),
    ]
    reconcile = data["reconcile"]
    return (
        "## Webhooks\n\n"
        + table(["requests", "count", "per second", "p50 ms", "p99 ms"], rows)
        + f"\n\nStored: {n(data['events_stored'])}, lost: {data['lost']}. Reconciling "
        f"{n(reconcile['accounts'])} accounts took {reconcile['seconds']} s "
        f"({reconcile['drift_found']} drift found)."
    )


def billing_section(data: dict[str, Any]) -> str:
    rows = [
        latency_row("baseline: /healthz", data["baseline_healthz"]),
        latency_row("GET /v1/accounts/{id}/billing", data["billing_reads"]),
        latency_row("POST /v1/accounts/{id}/portal (with a sync)", data["portal_with_sync"]),
    ]
    return (
        f"## The customer's bill\n\n{data['clients']} concurrent customers reading an account "
        f"with {data['account']['lines']} lines and {data['account']['past_invoices']} past "
        f"invoices while usage is written ({data['usage_writes_during_reads']} writes).\n\n"
        + table(["requests", "count", "per second", "p50 ms", "p99 ms"], rows)
    )


def emulator_section(data: dict[str, Any]) -> str:
    rates = data["requests_per_second"]
    rows = [[name, n(rate), data["ratio_to_baseline"][name]] for name, rate in rates.items()]
    return "## The Stripe emulator\n\n" + table(["requests", "per second", "÷ baseline"], rows)


def freshness_section(data: dict[str, Any]) -> str:
    rows = [[r["run"], r["samples"], r["p50_ms"], r["p99_ms"], r["max_ms"]] for r in data["runs"]]
    base = data["runs"][-1].get("baseline_get_account")
    if base:
        rows.append(["baseline: GET /v1/accounts/{id}", base["samples"], base["p50_ms"],
                     base["p99_ms"], base["max_ms"]])  # fmt: skip
    return (
        "## Freshness and on-demand syncs\n\nFrom the ingest's answer to the amount on Stripe's "
        "draft (polled on the emulator). `threshold`: sync on any change; `interval`: every 2 s, "
        "each sample arriving just after the previous sync (the interval's worst case); "
        "`on_demand`: `POST /v1/accounts/{id}/sync`, which returns once Stripe holds the amount."
        "\n\n" + table(["run", "samples", "p50 ms", "p99 ms", "max ms"], rows)
    )


def sync_throughput_section(data: dict[str, Any]) -> str:
    rows = [
        [r["run"], r["key_mode"], n(r["budget_calls_per_second"]), r["workers"],
         n(r["emulator_limit"]) if r["emulator_limit"] else "none", p["phase"],
         n(p["stripe_calls"]), p["seconds"], n(p["mean_calls_per_second"] or 0),
         f"×{p['mean_over_budget']}", p["busiest_second"], p["rate_limited"]]
        for r in data["runs"]
        for p in r["phases"]
    ]  # fmt: skip
    accounts = data["runs"][0]["accounts"] if data["runs"] else 0
    return (
        f"## Sync throughput at the budget\n\nA backlog of {n(accounts)} accounts synced by the "
        "scheduler's workers on the real clock: `first` (customer, draft, `add_lines` for 4 "
        "lines), then `update` (one `update_lines` each). Counted per wall-clock second at the "
        "emulator. `unbounded` is the baseline: no budget and no limit, what one billsync "
        "process and the emulator reach on this machine. The budget is a ceiling: the busiest "
        "second never exceeds it, and with a backlog the mean stays close to it unless the "
        "process itself is the bound (see `unbounded`).\n\n"
        + table(["run", "key", "budget/s", "workers", "emulator limit/s", "phase", "calls",
                 "seconds", "mean calls/s", "÷ budget", "busiest second", "429s"], rows)
    )  # fmt: skip


def workers_section(data: dict[str, Any]) -> str:
    rows = [
        [r["workers"], "shared" if r["budget_scope"] == "database" else "per process (baseline)",
         n(r["budget_calls_per_second"]), n(r["stripe_calls"]), r["seconds"],
         n(r["mean_calls_per_second"] or 0), f"×{r['mean_over_budget']}", r["busiest_second"],
         r["rate_limited"]]
        for r in data["runs"]
    ]  # fmt: skip
    accounts = data["runs"][0]["accounts"] if data["runs"] else 0
    return (
        f"## Several workers, one Stripe budget\n\nA backlog of {n(accounts)} accounts on "
        "PostgreSQL synced by 1, 2 and 3 `billsync worker` processes (2 threads each) sharing "
        "one budget; the emulator limits at Stripe's sandbox "
        f"{n(data['emulator_limit'])}/s and counts per wall-clock second. More workers reach "
        "the budget and stay within it (a thread that wakes late for its slot still calls, so "
        "a second may see up to 1.25 × the budget — under Stripe's limit); the baseline, 3 "
        "workers each with a budget of its own, sends more than the limit and is answered "
        "429.\n\n"
        + table(["workers", "budget", "budget/s", "calls", "seconds", "mean calls/s",
                 "÷ budget", "busiest second", "429s"], rows)
    )  # fmt: skip


def scale_section(data: dict[str, Any]) -> str:
    rows = [
        [n(r["accounts"]), r["limit"], r["due_returned"], r["tick_read"]["mean_ms"],
         r["tick_read"]["p99_ms"], r.get("tick_read_threshold", {}).get("mean_ms", ""),
         r.get("tick_read_threshold", {}).get("p99_ms", ""),
         r["tick_mid_month"]["mean_ms"], r["tick_mid_month"]["p99_ms"],
         r["tick_month_end"]["mean_ms"], r["tick_month_end"]["p99_ms"],
         r["baseline_full_scan"]["mean_ms"], f"×{r['speed_up']}"]
        for r in data["runs"]
    ]  # fmt: skip
    text = (
        "## The scheduler at scale\n\nOn PostgreSQL, N accounts all with usage Stripe does not "
        "hold yet (3 lines each, marked behind as ingest marks them, last synced at spread-out "
        "moments of the last hour): what a scheduler tick reads to find the due accounts "
        "(`Scheduler.due_accounts(limit)`, one range of the due queue's partial index; with the "
        "threshold policy as the platform's default, one grouped read of the accounts behind, "
        "the largest unsynced amounts first) and a "
        "whole tick (lifecycle step, due read, claiming), in mid-month and at the month's end "
        "(every period closing: each tick moves up to 500 on, set-based), against the baseline "
        "in the same run: the full scan of the accounts out of step with their per-account "
        "reads, which a tick ran before. Target: ≤ 100 ms at 100,000.\n\n"
        + table(["accounts behind", "limit", "returned", "due read mean ms", "p99 ms",
                 "threshold default: due read ms", "p99 ms", "tick mid-month ms", "p99 ms",
                 "tick month end ms", "p99 ms",
                 "baseline full scan ms", "speed-up"], rows)
    )  # fmt: skip
    loads = data.get("load", [])
    if loads:
        load_rows = [
            [n(r["accounts"]), r["configured_interval_s"], r["window_at_25_per_s"],
             r["effective_interval_s"], r["freshness"]["p50_s"], r["freshness"]["p99_s"],
             f"×{r['freshness_p99_over_effective']}", r["on_demand"]["p99_s"],
             r["calls_per_account_window"], r["close_seconds"], r["close_lower_bound_s"],
             f"×{r['close_over_bound']}",
             r.get("close_phases", {}).get("draft_whole", {}).get("last_s", ""),
             r.get("close_syncs", {}).get("closing", {}).get("mean_s", ""),
             r.get("cpu_busy", {}).get("close", ""), r.get("budget_slots_given_up_late", ""),
             r["tick"]["mean_ms"], r["rate_limited_429"], r["failed_syncs"]]
            for r in loads
        ]  # fmt: skip
        text += (
            "\n\nUnder load (`bench/scale_load.py`): usage arriving every second for every "
            "account (heavy-tailed) while `billsync serve` (16 sync threads, a live key's "
            "budget) syncs to the emulator with Stripe's live limits (100/s, 25/s per "
            "endpoint) and 200 ms latency; the interval asked for is half of what N accounts "
            "can have at 25 `update_lines`/s, so the budget is saturated. Freshness: usage "
            "accepted → on Stripe's draft. On demand: `POST /v1/accounts/{id}/sync` during "
            "the saturation. Close: the month's end (grace 0, a review window of N/25 s) until "
            "every invoice is finalized, usage still arriving, against the lower bound: N "
            "`update_lines` at 25/s to complete the drafts, then the last one's window (a "
            "month-end sync completes or finalizes the closed period only; the new period's "
            "first draft waits for its interval). "
            "Targets: freshness p99 ≤ 1.2 × effective interval, on-demand p99 < 2 s, close ≤ "
            "1.1 × bound, no 429.\n\n"
            + table(["accounts", "interval asked s", "N/25 s", "effective interval s",
                     "freshness p50 s", "p99 s", "p99 ÷ effective", "on-demand p99 s",
                     "calls per account-window", "close s", "close bound s", "÷ bound",
                     "last draft whole s", "closing sync mean s", "CPU busy during close",
                     "budget slots given up late", "tick mean ms", "429s", "failed syncs"],
                    load_rows)
        )  # fmt: skip
    return text


def jetstream_section(data: dict[str, Any]) -> str:
    rows = []
    for store in data["results"]:
        for r in store["runs"]:
            cpu = r["cpu_seconds_per_1000_events"]
            rows.append([store["store"], r["consumers"], n(r["events"]), r["seconds"],
                         n(r["events_per_second"]), cpu["consumers"], cpu["postgres"],
                         cpu["nats_server"]])  # fmt: skip
        file = store["baseline_ingest_file"]
        rows.append([store["store"], "`billsync ingest FILE` (baseline)", n(file["events"]),
                     file["seconds"], n(file["events_per_second"]), "", "", ""])  # fmt: skip
    heading = "## Streaming ingest from NATS JetStream"
    if data["events_per_message"] > 1:
        heading += ", arrays of events"
    return (
        f"{heading}\n\n{n(data['events'])} events "
        f"({data['events_per_message']} per message) published first, then consumed by "
        "`billsync consume` processes sharing one durable consumer, timed from the first "
        "delivery to the last ack, checked against the ledger. CPU seconds per 1,000 events "
        "show what bounds it on this machine (all processes share its CPUs).\n\n"
        + table(["store", "consumers", "events", "seconds", "events/s", "CPU s/1k consumers",
                 "CPU s/1k database", "CPU s/1k nats"], rows)
    )  # fmt: skip


SECTIONS = {
    "ingest": ingest_section,
    "jetstream_ingest": jetstream_section,
    "jetstream_ingest_batched": jetstream_section,
    "workers": workers_section,
    "scale": scale_section,
    "api_calls": api_calls_section,
    "sync_throughput": sync_throughput_section,
    "freshness": freshness_section,
    "webhooks": webhooks_section,
    "billing": billing_section,
    "emulator": emulator_section,
}


def chart(data: dict[str, Any]) -> str:
    """A log-scale bar chart of Stripe calls per policy: naive, lower bound, billsync."""
    runs = data["results"]
    series = (("naive", "#c0392b"), ("lower_bound", "#7f8c8d"), ("billsync", "#635bff"))
    top = max(max(r["stripe_calls"][s] for s, _ in series) for r in runs)
    height, bar, gap, left = 220, 22, 40, 60
    width = left + len(runs) * (3 * bar + gap) + 20
    scale = (height - 40) / math.log10(max(top, 10))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 60}" '
        'font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="14">Stripe API calls (log scale)</text>',
    ]
    for index, run in enumerate(runs):
        x = left + index * (3 * bar + gap)
        for offset, (name, colour) in enumerate(series):
            value = run["stripe_calls"][name]
            h = scale * math.log10(max(value, 1))
            parts.append(
                f'<rect x="{x + offset * bar}" y="{height - h:.1f}" width="{bar - 2}" '
                f'height="{h:.1f}" fill="{colour}"><title>{name}: {value:,}</title></rect>'
            )
            parts.append(
                f'<text x="{x + offset * bar}" y="{height - h - 3:.1f}" font-size="8">'
                f"{value:,}</text>"
            )
        parts.append(f'<text x="{x}" y="{height + 16}">{run["run"]}</text>')
    for offset, (name, colour) in enumerate(series):
        x = left + offset * 110
        parts.append(f'<rect x="{x}" y="{height + 30}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{x + 14}" y="{height + 39}">{name.replace("_", " ")}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write() -> Path:
    results = load()
    if not results:
        sys.exit("no results in bench/results/: run bench/run first")
    body = [
        "# Benchmarks\n",
        "Generated by `bench/run` (which runs every benchmark, then `python -m bench.report`); "
        "do not edit by hand. Each benchmark measures a baseline in the same run and reports "
        "ratios against it; the raw figures are in `bench/results/*.json`.\n",
        f"Machine: {machine()}.\n",
        "Reproduce: `bench/run` (PostgreSQL at `BILLSYNC_TEST_DATABASE_URL` for the "
        "PostgreSQL ingest figures), or one benchmark: `.venv/bin/python -m bench.ingest`, "
        "`bench.api_calls`, `bench.sync_throughput`, `bench.freshness`, `bench.webhooks`, "
        "`bench.billing`, `bench.emulator`, `bench.workers`, `bench.scale` and "
        "`bench.jetstream_ingest` (PostgreSQL; the latter also NATS).\n",
    ]
    missing = [name for name in ORDER if name not in results]
    for name, data in results.items():
        body.append(SECTIONS[name](data) + "\n")
    if missing:
        body.append("Not measured in this run: " + ", ".join(missing) + ".\n")
    REPORT.write_text("\n".join(body))
    if "api_calls" in results:
        CHART.parent.mkdir(exist_ok=True)
        CHART.write_text(chart(results["api_calls"]))
    return REPORT


def refresh(name: str) -> Path:
    """Rewrite one section of BENCHMARKS.md from its latest result (after running that one
    benchmark alone), leaving the others as the last full run wrote them. The section says
    when it was measured, since the rest of the file may be older."""
    results = load()
    if name not in results:
        sys.exit(f"no bench/results/{name}.json: run that benchmark first")
    text = REPORT.read_text()
    fresh = SECTIONS[name](results[name])
    heading = fresh.split("\n", 1)[0]
    start = text.find(heading)
    if start >= 0:
        end = text.find("\n## ", start + len(heading))
        end = len(text) if end < 0 else end + 1
    else:  # new: placed before the first section that comes after it in ORDER
        later = [text.find(HEADINGS[n]) for n in ORDER[ORDER.index(name) + 1 :]]
        start = end = min((at for at in later if at >= 0), default=len(text))
    measured = (RESULTS / f"{name}.json").stat().st_mtime
    when = datetime.fromtimestamp(measured, UTC).strftime("%Y-%m-%d")
    command = COMMANDS.get(name, f"python -m bench.{name}")
    fresh = fresh.replace(
        heading, f"{heading}\n\n_Measured on its own on {when} (`{command}`)._", 1
    )
    rest = text[end:].lstrip("\n")
    REPORT.write_text(text[:start] + fresh + ("\n\n" + rest if rest else "\n"))
    return REPORT


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--only":
        print(f"wrote {refresh(sys.argv[2])}")
    elif len(sys.argv) == 1:
        print(f"wrote {write()}")
    else:  # --help, or a mistyped option: say how, write nothing
        sys.exit(__doc__)
