"""A simulated cloud platform: the usage a real one would send billsync, reproducible from a seed.

Accounts differ in size by orders of magnitude (a heavy-tailed draw: most run a machine or two,
a few run dozens). Machines start and stop and report their running seconds every
``report_every``; volumes report GB-hours and dedicated IPv4 addresses report hours once an
hour; egress is reported per region with occasional bursts. Like a real pipeline, the platform
delivers some events late (after ``late_delay``) and some twice (the same id and content again
in the next delivery) — billsync must count each exactly once either way.

Everything is a pure function of the seed and the parameters: the same seed gives the same
accounts, events, ids and delivery order, so a run can be replayed exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

MACHINE_SIZES = (
    ("shared-cpu-1x", 50),
    ("shared-cpu-2x", 25),
    ("performance-1x", 15),
    ("performance-2x", 7),
    ("performance-4x", 3),
)
REGIONS = {
    "bandwidth.egress.na-eu.gb": ("iad", "ord", "sjc", "fra", "lhr", "ams"),
    "bandwidth.egress.apac-sa.gb": ("nrt", "sin", "syd", "gru"),
    "bandwidth.egress.africa-india.gb": ("jnb", "bom"),
}
CURRENCIES = (("usd", 80), ("eur", 17), ("jpy", 3))
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class SimAccount:
    id: str
    name: str
    email: str
    currency: str

    def as_json(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "email": self.email, "currency": self.currency}


@dataclass
class _Machine:
    id: str
    size: str
    running: bool
    toggle_at: datetime
    mean_run: float  # seconds
    mean_stop: float


@dataclass
class _Tenant:
    account: SimAccount
    machines: list[_Machine]
    volume_gb: int
    ipv4: int
    regions: list[tuple[str, str]]  # (metric, region)
    egress_gb_per_hour: float
    burst_until: datetime | None = None


@dataclass(frozen=True)
class Delivery:
    """What the platform sends at one moment: fresh events, late ones now due, and duplicates."""

    at: datetime
    events: list[dict[str, Any]]


@dataclass
class SimulationStats:
    events: int = 0  # distinct events produced
    deliveries: int = 0  # events sent, duplicates included
    duplicates: int = 0
    late: int = 0
    by_metric: dict[str, Decimal] = field(default_factory=dict)


def _weighted(rng: random.Random, choices: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def _fmt(quantity: Decimal) -> str:
    return format(quantity.normalize(), "f")


class Simulation:
    def __init__(
        self,
        *,
        seed: int,
        accounts: int,
        start: datetime,
        report_every: timedelta = timedelta(seconds=5),
        duplicate_rate: float = 0.01,
        late_rate: float = 0.002,
        late_delay: timedelta = timedelta(hours=3),
        prefix: str = "sim",
        currencies: tuple[tuple[str, int], ...] = CURRENCIES,
    ) -> None:
        if start.tzinfo is None:
            raise ValueError("the simulation needs an aware start time")
        if report_every <= timedelta(0) or HOUR % report_every:
            raise ValueError("report_every must divide an hour evenly (e.g. 5s, 1m, 15m, 1h)")
        if accounts < 1:
            raise ValueError("the simulation needs at least one account")
        self.rng = random.Random(seed)
        self.seed = seed
        self.now = start
        self.report_every = report_every
        self.duplicate_rate = duplicate_rate
        self.late_rate = late_rate
        self.late_delay = late_delay
        self.stats = SimulationStats()
        self.tenants = [self._tenant(f"{prefix}-{n:04d}", n, currencies) for n in range(accounts)]
        self._late: list[tuple[datetime, dict[str, Any]]] = []
        self._previous: list[dict[str, Any]] = []

    @property
    def accounts(self) -> list[SimAccount]:
        return [tenant.account for tenant in self.tenants]

    def _tenant(self, account_id: str, n: int, currencies: tuple[tuple[str, int], ...]) -> _Tenant:
        rng = self.rng
        size = min(int(rng.paretovariate(1.2)), 60)  # 1 machine usually, dozens rarely
        account = SimAccount(
            account_id,
            f"Customer {n:04d}",
            f"billing+{account_id}@example.com",
            _weighted(rng, currencies),
        )
        machines = []
        for m in range(size):
            running = rng.random() < 0.7
            mean_run = rng.choice((600.0, 3600.0, 6 * 3600.0, 7 * 86400.0))
            mean_stop = rng.choice((300.0, 1800.0, 4 * 3600.0))
            machines.append(
                _Machine(
                    f"m{m}", _weighted(rng, MACHINE_SIZES), running,
                    self.now + timedelta(seconds=rng.expovariate(1 / mean_run)),
                    mean_run, mean_stop,
                )
            )  # fmt: skip
        region_pool = [(metric, region) for metric, names in REGIONS.items() for region in names]
        regions = rng.sample(region_pool, k=min(len(region_pool), 1 + size // 4))
        return _Tenant(
            account, machines,
            volume_gb=rng.choice((0, 1, 3, 10, 40)) * max(1, size // 3),
            ipv4=rng.choice((0, 0, 1, 2)),
            regions=regions,
            egress_gb_per_hour=rng.lognormvariate(-2.0, 1.5) * size,
        )  # fmt: skip

    def _event(
        self, tenant: _Tenant, source: str, metric: str, quantity: Decimal, *, at: datetime,
        dimensions: dict[str, str] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        self.stats.events += 1
        self.stats.by_metric[metric] = self.stats.by_metric.get(metric, Decimal(0)) + quantity
        event: dict[str, Any] = {
            # The seed is part of the id: two seeds are two platforms, whose events over the
            # same span never share an id (the accounts are shared: their usage adds up).
            "id": f"{tenant.account.id}:s{self.seed}:{source}:{int(at.timestamp())}",
            "account": tenant.account.id,
            "metric": metric,
            "quantity": _fmt(quantity),
            "timestamp": at.isoformat().replace("+00:00", "Z"),
        }
        if dimensions:
            event["dimensions"] = dimensions
        return event

    def _step(self, window_start: datetime) -> list[dict[str, Any]]:
        """The events about [window_start, window_start + report_every)."""
        rng = self.rng
        window_end = window_start + self.report_every
        step = self.report_every.total_seconds()
        events: list[dict[str, Any]] = []
        hourly = window_end.timestamp() % 3600 < step  # an hour ended inside this window
        for tenant in self.tenants:
            for machine in tenant.machines:
                seconds = 0.0
                cursor = window_start
                while True:
                    boundary = min(machine.toggle_at, window_end)
                    if machine.running and boundary > cursor:
                        seconds += (boundary - cursor).total_seconds()
                    if machine.toggle_at >= window_end:
                        break
                    cursor = machine.toggle_at
                    machine.running = not machine.running
                    mean = machine.mean_run if machine.running else machine.mean_stop
                    machine.toggle_at = cursor + timedelta(
                        seconds=max(1.0, rng.expovariate(1 / mean))
                    )
                if seconds >= 1:
                    events.append(
                        self._event(
                            tenant, machine.id, f"machine.{machine.size}.seconds",
                            Decimal(int(seconds)), at=window_end,
                        )
                    )  # fmt: skip
            if tenant.burst_until is None and rng.random() < 0.0005 * step / 5:
                tenant.burst_until = window_start + timedelta(minutes=rng.choice((5, 20, 60)))
            burst = 40.0 if tenant.burst_until and window_start < tenant.burst_until else 1.0
            if tenant.burst_until and window_start >= tenant.burst_until:
                tenant.burst_until = None
            for metric, region in tenant.regions:
                gb = tenant.egress_gb_per_hour * burst * step / 3600 / len(tenant.regions)
                gb *= rng.uniform(0.2, 1.8)
                quantity = Decimal(repr(round(gb, 6)))
                if quantity > 0:
                    events.append(
                        self._event(
                            tenant, f"egress-{region}", metric, quantity, at=window_end,
                            dimensions={"region": region},
                        )
                    )  # fmt: skip
            if hourly:
                hours = Decimal(1)
                if tenant.volume_gb:
                    events.append(
                        self._event(
                            tenant, "volume", "volume.gb_hours",
                            Decimal(tenant.volume_gb) * hours, at=window_end,
                        )
                    )  # fmt: skip
                if tenant.ipv4:
                    ipv4 = Decimal(tenant.ipv4) * hours
                    events.append(self._event(tenant, "ipv4", "ip.ipv4.hours", ipv4, at=window_end))
        return events

    def deliveries(self, until: datetime) -> Iterator[Delivery]:
        """Run the platform from its current time to ``until``, one delivery per report."""
        while self.now < until:
            window_start = self.now
            self.now = window_start + self.report_every
            fresh = self._step(window_start)
            sent: list[dict[str, Any]] = []
            for event in fresh:
                if self.late_rate and self.rng.random() < self.late_rate:
                    self._late.append((self.now + self.late_delay, event))
                    self.stats.late += 1
                else:
                    sent.append(event)
            due = [event for at, event in self._late if at <= self.now]
            self._late = [(at, event) for at, event in self._late if at > self.now]
            sent.extend(due)
            again = [e for e in self._previous if self.rng.random() < self.duplicate_rate]
            self.stats.duplicates += len(again)
            self._previous = sent
            batch = sent + again
            self.stats.deliveries += len(batch)
            if batch:
                yield Delivery(self.now, batch)

    def flush_late(self) -> Delivery | None:
        """Deliver whatever is still held back (the platform catching up at the end of a run)."""
        if not self._late:
            return None
        events = [event for _, event in self._late]
        self._late = []
        self.stats.deliveries += len(events)
        return Delivery(self.now, events)
