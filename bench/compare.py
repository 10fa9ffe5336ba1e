"""Regressions caught when they happen: each benchmark's headline figures, compared with the
results committed last (``git show HEAD:bench/results/<name>.json``).

    .venv/bin/python -m bench.compare            after a benchmark (``bench/run`` calls it)
    .venv/bin/python -m bench.compare --against REV

A figure that got worse by more than ``THRESHOLD`` (15 %) is printed as a WARNING line, with
both values — worse once the machine's own change of speed is taken out: each result carries a
``machine_reference`` (billsync's validation of a batch, timed when the result was written),
and a figure that fell as much as the machine did is said so, not flagged. The exit status
stays 0 (a benchmark on a shared machine varies by ~10 % run to
run: a warning asks for a second run and a look, it does not fail a build). Figures that are
new, or whose previous result is missing, are listed as such.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import RESULTS

THRESHOLD = 0.15


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    higher_is_better: bool


Headlines = Callable[[dict[str, Any]], Iterator[Figure]]


def _ingest(data: dict[str, Any]) -> Iterator[Figure]:
    for r in data.get("results", []):
        store = r["store"]
        yield Figure(f"ingest {store} events/s", r["events_per_second"], True)
        yield Figure(f"ingest {store} batch p99 ms", r["batch_latency_ms"]["p99"], False)
        if "paced" in r:
            rate = r["paced"]["offered_events_per_second"]
            name = f"ingest {store} paced at {rate:,.0f}/s batch p99 ms"
            yield Figure(name, r["paced"]["batch_latency_ms"]["p99"], False)


def _jetstream(data: dict[str, Any]) -> Iterator[Figure]:
    per_message = data.get("events_per_message", 1)
    shape = "" if per_message == 1 else f" ({per_message} per message)"
    for store in data.get("results", []):
        for r in store.get("runs", []):
            name = f"jetstream{shape} {store['store']} {r['consumers']} consumer(s) events/s"
            yield Figure(name, r["events_per_second"], True)


def _latency(name: str, block: dict[str, Any] | None) -> Iterator[Figure]:
    if block:
        yield Figure(f"{name} p99 ms", block["p99_ms"], False)


def _webhooks(data: dict[str, Any]) -> Iterator[Figure]:
    yield from _latency("webhooks acknowledge", data.get("acknowledge"))


def _billing(data: dict[str, Any]) -> Iterator[Figure]:
    yield from _latency("billing reads", data.get("billing_reads"))
    yield from _latency("portal with a sync", data.get("portal_with_sync"))


def _freshness(data: dict[str, Any]) -> Iterator[Figure]:
    for r in data.get("runs", []):
        yield Figure(f"freshness {r['run']} p99 ms", r["p99_ms"], False)


def _emulator(data: dict[str, Any]) -> Iterator[Figure]:
    for name, rate in data.get("requests_per_second", {}).items():
        yield Figure(f"emulator {name} requests/s", rate, True)


HEADLINES: dict[str, Headlines] = {
    "ingest": _ingest,
    "jetstream_ingest": _jetstream,
    "jetstream_ingest_batched": _jetstream,
    "webhooks": _webhooks,
    "billing": _billing,
    "freshness": _freshness,
    "emulator": _emulator,
}


@dataclass(frozen=True)
class Change:
    name: str
    before: float | None
    after: float
    higher_is_better: bool
    # This machine's speed now ÷ when ``before`` was measured (``machine_reference`` in both
    # results), or None when either result lacks it.
    machine: float | None = None

    @property
    def worse_by(self) -> float:
        """How much worse the figure got, as a fraction of the previous one (negative: better)."""
        if not self.before:
            return 0.0
        ratio = (self.after - self.before) / self.before
        return -ratio if self.higher_is_better else ratio

    @property
    def worse_by_on_the_same_machine(self) -> float:
        """:attr:`worse_by` once the machine's own change of speed is taken out: a figure that
        fell exactly as much as the machine did is not billsync's regression."""
        if not self.before or not self.machine:
            return self.worse_by
        speed = self.machine
        expected = self.before * speed if self.higher_is_better else self.before / speed
        ratio = (self.after - expected) / expected
        return -ratio if self.higher_is_better else ratio

    @property
    def regressed(self) -> bool:
        return self.before is not None and self.worse_by_on_the_same_machine > THRESHOLD

    def line(self) -> str:
        if self.before is None:
            return f"  new      {self.name}: {self.after:g}"
        word = "WARNING" if self.regressed else "ok"
        text = (
            f"  {word:<8} {self.name}: {self.before:g} → {self.after:g} "
            f"({'worse' if self.worse_by > 0 else 'better'} by {abs(self.worse_by):.0%})"
        )
        if self.machine is not None and abs(self.machine - 1) > 0.05:
            same = self.worse_by_on_the_same_machine
            text += (
                f"; the machine runs ×{self.machine:.2f} as fast as then: "
                f"{'worse' if same > 0 else 'better'} by {abs(same):.0%} on the same machine"
            )
        return text


def machine_ratio(before: dict[str, Any] | None, after: dict[str, Any]) -> float | None:
    """How fast this machine is now against when ``before`` was measured (their
    ``machine_reference``; None if either lacks it)."""
    try:
        then = float((before or {})["machine_reference"]["events_per_second"])
        now = float(after["machine_reference"]["events_per_second"])
    except (KeyError, TypeError, ValueError):
        return None
    return now / then if then > 0 else None


def compare(benchmark: str, before: dict[str, Any] | None, after: dict[str, Any]) -> list[Change]:
    """The benchmark's headline figures, now against before (None: no previous result)."""
    headlines = HEADLINES.get(benchmark)
    if headlines is None:
        return []
    previous = {} if before is None else {f.name: f.value for f in headlines(before)}
    machine = machine_ratio(before, after)
    return [
        Change(
            figure.name, previous.get(figure.name), figure.value, figure.higher_is_better, machine
        )
        for figure in headlines(after)
    ]


def committed(name: str, revision: str) -> dict[str, Any] | None:
    """``bench/results/<name>.json`` as committed at ``revision`` (None if it was not)."""
    path = f"bench/results/{name}.json"
    shown = subprocess.run(
        ["git", "show", f"{revision}:{path}"],
        capture_output=True, text=True, check=False, cwd=RESULTS.parent.parent,
    )  # fmt: skip
    if shown.returncode != 0:
        return None
    loaded: dict[str, Any] = json.loads(shown.stdout)
    return loaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="HEAD", help="the git revision to compare with")
    args = parser.parse_args(argv)
    warnings = 0
    for name in HEADLINES:
        path: Path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        changes = compare(name, committed(name, args.against), json.loads(path.read_text()))
        if not changes:
            continue
        print(f"{name} (against {args.against}):")
        for change in changes:
            print(change.line())
            warnings += change.regressed
    if warnings:
        print(
            f"WARNING: {warnings} figure(s) worse by more than {THRESHOLD:.0%} than the committed "
            "results: run the benchmark again, and if it holds, find the commit that did it "
            "(a hot-path commit states its figure in its message).",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
