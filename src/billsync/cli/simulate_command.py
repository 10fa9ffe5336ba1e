"""``billsync simulate``: a simulated platform's usage, written as JSONL or sent to billsync."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import typer
from rich.console import Console

from billsync.cli.common import fail, open_billsync
from billsync.repositories import accounts as account_repository
from billsync.services.accounts import NewAccount
from billsync.simulator import Delivery, Simulation

console = Console(stderr=True)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, option: str) -> timedelta:
    """``30``, ``30s``, ``5m``, ``2h``, ``30d``."""
    number, unit = (text[:-1], text[-1]) if text and text[-1] in UNITS else (text, "s")
    if not number.isdigit() or int(number) == 0:
        raise fail(f"{option} must look like 30s, 5m, 2h or 30d, not {text!r}", code=2)
    return timedelta(seconds=int(number) * UNITS[unit])


def parse_start(text: str | None, step: timedelta, back: timedelta) -> datetime:
    """The given start, or ``back`` before now (aligned to the step)."""
    if text is None:
        now = datetime.now(UTC) - back
        step_s = int(step.total_seconds())
        return datetime.fromtimestamp(int(now.timestamp()) // step_s * step_s, UTC)
    try:
        start = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise fail(f"--start must be an ISO 8601 time, not {text!r}", code=2) from None
    if start.tzinfo is None:
        raise fail("--start needs a UTC offset, e.g. 2026-11-01T00:00:00Z", code=2)
    return start.astimezone(UTC)


class _Sender:
    """Posts deliveries to billsync in batches and tallies the per-event outcomes."""

    def __init__(self, url: str, token: str, batch: int) -> None:
        self.client = httpx.Client(
            base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        self.batch = batch
        self.outcomes: dict[str, int] = {}

    def create_accounts(self, accounts: list[dict[str, str]]) -> int:
        created = 0
        for account in accounts:
            response = self.client.post("/v1/accounts", json=account)
            if response.status_code == 201:
                created += 1
            elif response.status_code != 409:
                raise fail(f"creating {account['id']}: {response.status_code} {response.text}")
        return created

    def send(self, events: list[dict[str, Any]]) -> None:
        for offset in range(0, len(events), self.batch):
            chunk = events[offset : offset + self.batch]
            for attempt in range(5):
                try:
                    response = self.client.post("/v1/usage", json={"events": chunk})
                except httpx.TransportError as error:
                    if attempt == 4:
                        raise fail(f"billsync unreachable: {error}") from None
                    time.sleep(0.5 * 2**attempt)
                    continue
                if response.status_code in (429, 503) and attempt < 4:
                    time.sleep(0.5 * 2**attempt)
                    continue
                if response.status_code != 200:
                    raise fail(f"POST /v1/usage: {response.status_code} {response.text[:500]}")
                for result in response.json()["results"]:
                    status = str(result["status"])
                    self.outcomes[status] = self.outcomes.get(status, 0) + 1
                break


def simulate_command(
    *,
    seed: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="The same seed replays the same platform; its events' ids carry it (seeds never "
            "share an event id).",
        ),
    ] = 1,
    accounts: Annotated[int, typer.Option(metavar="N", min=1, help="How many accounts.")] = 20,
    start: Annotated[
        str | None,
        typer.Option(
            metavar="TIME",
            help="Simulated start, ISO 8601 with an offset.",
            show_default="--duration before now; now with --speed",
        ),
    ] = None,
    duration: Annotated[
        str, typer.Option(metavar="DURATION", help="How much platform time: 10m, 6h, 30d.")
    ] = "10m",
    report_every: Annotated[
        str,
        typer.Option(
            metavar="DURATION", help="How often machines report usage (must divide an hour)."
        ),
    ] = "5s",
    duplicate_rate: Annotated[
        float,
        typer.Option(metavar="SHARE", min=0, max=1, help="Share of events sent twice."),
    ] = 0.01,
    late_rate: Annotated[
        float,
        typer.Option(metavar="SHARE", min=0, max=1, help="Share of events that arrive late."),
    ] = 0.002,
    late_delay: Annotated[
        str, typer.Option(metavar="DURATION", help="How late a late event arrives.")
    ] = "3h",
    out: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Write JSONL here ('-' for stdout) instead of sending."),
    ] = None,
    url: Annotated[
        str, typer.Option(metavar="URL", envvar="BILLSYNC_URL", help="billsync to send to.")
    ] = "http://127.0.0.1:8080",
    token: Annotated[
        str | None,
        typer.Option(metavar="TOKEN", envvar="BILLSYNC_API_TOKEN", help="billsync's API token."),
    ] = None,
    batch: Annotated[
        int, typer.Option(metavar="N", min=1, help="Events per POST /v1/usage.")
    ] = 2000,
    create_accounts: Annotated[
        bool,
        typer.Option(
            help="With --out: also create the accounts in billsync's store, ready to ingest."
        ),
    ] = True,
    speed: Annotated[
        float,
        typer.Option(
            metavar="RATIO",
            min=0,
            help="Platform seconds per real second when sending (0: no pause).",
        ),
    ] = 0,
) -> None:
    """Simulate a cloud platform's usage (machines, volumes, egress, late and duplicate events)."""
    step = parse_duration(report_every, "--report-every")
    length = parse_duration(duration, "--duration")
    # Paced live runs start now; otherwise the simulated span ends now (no future timestamps).
    back = timedelta(0) if out is None and speed else length
    try:
        simulation = Simulation(
            seed=seed, accounts=accounts, start=parse_start(start, step, back), report_every=step,
            duplicate_rate=duplicate_rate, late_rate=late_rate,
            late_delay=parse_duration(late_delay, "--late-delay"),
        )  # fmt: skip
    except ValueError as error:
        raise fail(str(error), code=2) from None
    until = simulation.now + length
    if out is not None:
        if create_accounts:
            created = create_local_accounts(simulation)
            console.print(f"{created} accounts created in billsync's store ({accounts} in all)")
        stream = typer.get_binary_stream("stdout") if str(out) == "-" else out.open("wb")
        with stream:
            for delivery in _all(simulation, until):
                stream.write(b"".join(orjson.dumps(e) + b"\n" for e in delivery.events))
    else:
        if not token:
            raise fail("set BILLSYNC_API_TOKEN or --token to send to billsync", code=2)
        sender = _Sender(url, token, batch)
        created = sender.create_accounts([a.as_json() for a in simulation.accounts])
        console.print(f"{created} accounts created, {accounts - created} already there")
        began = time.monotonic()
        origin = simulation.now
        for delivery in _all(simulation, until):
            if speed:
                ahead = (delivery.at - origin).total_seconds() / speed - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
            sender.send(delivery.events)
        outcome = ", ".join(f"{n} {status}" for status, n in sorted(sender.outcomes.items()))
        console.print(f"billsync answered: {outcome}")
    stats = simulation.stats
    console.print(
        f"{stats.events} events ({stats.deliveries} sent: {stats.duplicates} duplicates, "
        f"{stats.late} late) for {accounts} accounts, seed {seed}"
    )


def _all(simulation: Simulation, until: datetime) -> Iterator[Delivery]:
    yield from simulation.deliveries(until)
    last = simulation.flush_late()
    if last is not None:
        yield last


def create_local_accounts(simulation: Simulation) -> int:
    """Create the simulated accounts in the configured store (as ``billsync accounts create``)."""
    billsync = open_billsync()
    created = 0
    try:
        with billsync.database.transaction() as connection:
            for account in simulation.accounts:
                if account_repository.get_account(connection, account.id) is None:
                    billsync.accounts.create(
                        connection,
                        NewAccount(account.id, account.currency, account.name, account.email),
                    )
                    created += 1
    finally:
        billsync.close()
    return created
