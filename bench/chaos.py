"""The chaos suite, long form: more accounts, a finer clock, more kills and cuts.

    .venv/bin/python -m bench.chaos [--accounts 20] [--kills 120] [--stores sqlite,postgresql]

The same run as ``tests/chaos`` (see ``tests/chaos/harness.py``): a simulated month through
``billsync api`` and a ``billsync worker`` that is killed with SIGKILL at steps of the month
chosen from the seed and restarted, the emulator failing 20 % of Stripe requests (429, lock
timeouts, 500, 503, hangs, responses lost after commit), webhooks duplicated, reordered and
dropped, and on PostgreSQL the connection cut through a proxy. Afterwards ``billsync verify
--require-synced`` must pass and every distinct event must be stored once with the quantity
sent. Prints the faults injected by kind, the crashes, the events and the verify result; writes
bench/results/chaos.json.
PostgreSQL needs BILLSYNC_TEST_DATABASE_URL.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.chaos.harness import ChaosConfig, ChaosRun

from bench.common import postgres_schema, write_results


def run(store: str, args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    def config(url: str) -> ChaosConfig:
        return ChaosConfig(
            database_url=url, workdir=directory / store, accounts=args.accounts,
            step=timedelta(hours=2), step_pause=args.step_pause, kills=args.kills,
            db_cuts=args.cuts, seed=args.seed, report_every=timedelta(minutes=15),
            chaos_after_month=timedelta(hours=12),
        )  # fmt: skip

    if store == "sqlite":
        result = ChaosRun(config(f"sqlite:///{directory}/chaos.db")).run()
    else:
        url = os.environ.get("BILLSYNC_TEST_DATABASE_URL")
        if not url:
            return {"store": store, "skipped": "set BILLSYNC_TEST_DATABASE_URL"}
        with postgres_schema(url) as scoped:
            result = ChaosRun(config(scoped)).run()
    return {"store": store, **result.to_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--kills", type=int, default=120)
    parser.add_argument("--cuts", type=int, default=10)
    parser.add_argument("--step-pause", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--stores", default="sqlite,postgresql")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as directory:
        for store in args.stores.split(","):
            row = run(store, args, Path(directory))
            runs.append(row)
            if "skipped" in row:
                print(f"{store}: skipped ({row['skipped']})")
                continue
            print(
                f"{store}: {'PASSED' if row['ok'] else 'FAILED'} in {row['seconds']} s "
                f"({row['phases']}, waiting for restarted workers {row['waited_for_worker']} s) — "
                f"{row['distinct_events']:,} events ({row['events_sent']:,} sent), "
                f"{row['kills']} worker kills, {row['db_cuts']} database cuts, "
                f"{row['stripe_requests']:,} Stripe requests, faults {row['faults']}, "
                f"429s {row['rate_limited']}, webhooks {row['webhooks'].get('chaos')}, "
                f"verify exit {row['verify_exit_code']} {json.dumps(row['verify'])}",
                flush=True,
            )
    print(f"wrote {write_results('chaos', {'benchmark': 'chaos', 'runs': runs})}")


if __name__ == "__main__":
    main()
