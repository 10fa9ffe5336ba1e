"""The demo: a whole billing month on an accelerated clock, on SQLite, against the emulator.

Everything runs in this process: the Stripe emulator, billsync's API and sync workers, and the
simulated platform sending usage over HTTP. One clock (a ManualClock) drives billsync and the
emulator's clock is kept in step with it, so the month's syncs, the period close, the review
window, finalization, payment (one customer's card is declined) and a late event all play out
in a few minutes of real time.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sqlalchemy import Connection

from billsync.api.app import create_app
from billsync.bootstrap import Billsync, build
from billsync.clock import ManualClock
from billsync.config import Settings
from billsync.core import customer_tokens
from billsync.core.alerts import SIGNATURE_HEADER, verify_signature
from billsync.core.periods import PeriodStatus
from billsync.db import migrate
from billsync.db.database import Database
from billsync.emulator.app import create_app as create_emulator
from billsync.emulator.state import EmulatorConfig
from billsync.repositories import accounts as account_repository
from billsync.repositories import sync as sync_repository
from billsync.repositories import webhooks as webhook_repository
from billsync.simulator import Simulation

DEMO_KEY = "sk_test_billsyncDemoKey0123"
DECLINED_CARD = "pm_card_chargeDeclined"
GOOD_CARD = "pm_card_visa"


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        pass


def _serve(app: Any, host: str, port: int) -> _Server:
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True, name=f"serve-{port}").start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not serve on {host}:{port} (is the port in use?)")
        time.sleep(0.02)
    return server


class _Platform:
    """The demo platform's webhook endpoint: counts the spend alerts whose signature holds."""

    def __init__(self, host: str, secret: str) -> None:
        self.verified = 0
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                signature = self.headers.get(SIGNATURE_HEADER, "")
                good = verify_signature(secret, signature, body, int(time.time()))
                platform.verified += good
                self.send_response(200 if good else 400)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/billing-alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class DemoOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    emulator_port: int = 12111
    accounts: int = 12
    seed: int = 1
    hours_per_second: float = 8.0  # simulated hours per real second
    start: date | None = None  # the first day of the simulated month (default: this month's)


@dataclass
class DemoSummary:
    simulated_now: datetime
    events_accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejections: list[str] = field(default_factory=list)
    stripe_calls: int = 0
    naive_calls: int = 0
    periods_finalized: int = 0
    periods_total: int = 0
    invoices_paid: int = 0
    payment_failed: int = 0
    late_lines: int = 0
    # The pricing the demo's platform sets up: what it is, and the alert webhooks the platform
    # received with a valid signature.
    pricing: list[str] = field(default_factory=list)
    alerts_received: int = 0
    mismatches: list[str] = field(default_factory=list)
    phase: str = "starting"


class Demo:
    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        today = options.start or datetime.now(UTC).date().replace(day=1)
        self.month_start = datetime(today.year, today.month, 1, tzinfo=UTC)
        following = (self.month_start + timedelta(days=32)).replace(day=1)
        self.month_end = following
        self.clock = ManualClock(self.month_start)
        self._stopping = threading.Event()
        self.summary = DemoSummary(self.month_start)
        self.emulator_url = f"http://{options.host}:{options.emulator_port}"
        self.url = f"http://{options.host}:{options.port}"
        self.api_token = secrets.token_urlsafe(24)
        self.password = secrets.token_urlsafe(9)
        self.platform_secret = secrets.token_urlsafe(24)
        self._platform: _Platform | None = None
        self._snapshot_reports = 0
        self.declined_account = ""
        self._cards_set: set[str] = set()
        self._servers: list[_Server] = []
        self.billsync: Billsync | None = None
        self.stripe = httpx.Client(
            base_url=self.emulator_url, headers={"Authorization": f"Bearer {DEMO_KEY}"}, timeout=30
        )

    # --- setting up -------------------------------------------------------------------------

    def start(self) -> None:
        options = self.options
        if options.data_dir.exists():
            shutil.rmtree(options.data_dir)  # every demo starts from nothing
        options.data_dir.mkdir(parents=True)
        # The platform's webhook endpoint, and the secret the spend alerts are signed with.
        self._platform = platform = _Platform(options.host, self.platform_secret)
        config = EmulatorConfig(public_url=self.emulator_url)
        config.rate_limit_test = 100
        emulator = create_emulator(config, {DEMO_KEY})
        self._servers.append(_serve(emulator, options.host, options.emulator_port))
        self._emulator_clock()
        settings = Settings(
            data_dir=options.data_dir,
            api_token=self.api_token,
            stripe_api_key=DEMO_KEY,
            stripe_api_base=self.emulator_url,
            stripe_rate=80,
            sync_interval_seconds=6 * 3600,  # simulated: four syncs a day per account
            close_grace_seconds=3600,
            review_window_seconds=6 * 3600,
            webhook_tolerance_seconds=7 * 86400,  # the clocks jump by hours between deliveries
            sweep_interval_seconds=6 * 3600,
            reconcile_interval_seconds=24 * 3600,
            platform_webhook_url=platform.url,
            platform_webhook_secret=self.platform_secret,
        )
        database = Database(settings.resolved_database_url())
        migrate.upgrade(database)
        billsync = build(settings, clock=self.clock, database=database)
        self.billsync = billsync
        billsync.console.add_user("support", self.password, "admin")
        server = _serve(create_app(billsync), options.host, options.port)
        self._servers.append(server)
        # The Customer Portal's settings, saved (Stripe refuses portal sessions without them).
        self.stripe.post(
            "/v1/billing_portal/configurations",
            data={"features[invoice_history][enabled]": "true"},
        ).raise_for_status()
        endpoint = self.stripe.post(
            "/v1/webhook_endpoints",
            data={"url": f"{self.url}/v1/stripe/webhook", "enabled_events[0]": "*"},
        )
        endpoint.raise_for_status()
        billsync.webhooks.secrets.append(endpoint.json()["secret"])
        assert billsync.sync is not None
        self.scheduler = billsync.sync.scheduler

    def _emulator_clock(self) -> None:
        self.stripe.post(
            "/_emulator/clock",
            json={"set": self.clock.now().timestamp(), "freeze": True},
        ).raise_for_status()

    def customer_link(self, account_id: str) -> str:
        assert self.billsync is not None
        token = customer_tokens.issue(
            self.billsync.customer_token_secret, account_id, self.clock.now(), timedelta(days=1)
        )
        return f"{self.url}/billing/{account_id}?token={token}"

    # --- running the month ------------------------------------------------------------------

    def run(self, on_progress: Callable[[DemoSummary], None] | None = None) -> DemoSummary:
        assert self.billsync is not None
        simulation = Simulation(
            seed=self.options.seed, accounts=self.options.accounts, start=self.month_start,
            report_every=timedelta(minutes=5), duplicate_rate=0.01, late_rate=0.0005,
            late_delay=timedelta(hours=2), prefix="cust", currencies=(("usd", 3), ("eur", 1)),
        )  # fmt: skip
        self.declined_account = simulation.accounts[-1].id
        http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.api_token}"}, timeout=60
        )
        for account in simulation.accounts:
            http.post("/v1/accounts", json=account.as_json()).raise_for_status()
        self._pricing(http, simulation)
        step = timedelta(hours=1)
        pause = 1 / self.options.hours_per_second
        late_sent = False
        self.summary.phase = "the month"
        deadline = self.month_end + timedelta(days=3)
        while self.clock.now() < deadline:
            began = time.monotonic()
            target = self.clock.now() + step
            self.clock.set(target)  # the platform reports what happened up to now
            self._emulator_clock()
            if target <= self.month_end:
                hour = [e for d in simulation.deliveries(target) for e in d.events]
                hour += self._snapshots(simulation, target)
                self._send(http, hour)  # the hour's reports in one request
                if target == self.month_end:
                    last = simulation.flush_late()
                    if last is not None:
                        self._send(http, last.events)
            if target > self.month_end + timedelta(hours=2) and not late_sent:
                late_sent = True  # one more event about the old month, after it closed
                self._send(http, [self._late_event(simulation)])
            self.scheduler.tick()  # the month's clock drives billsync's jobs, hour by hour
            self.scheduler.drain()
            self._give_cards()
            self._observe(simulation)
            if on_progress:
                on_progress(self.summary)
            if self.clock.now() > self.month_end and self._month_done():
                break
            time.sleep(max(0.0, pause - (time.monotonic() - began)))
        self._wait_for_webhooks()
        self.scheduler.tick()
        self._observe(simulation)
        self.summary.alerts_received = self._platform.verified if self._platform else 0
        self._check()
        self.summary.phase = "done" if not self.summary.mismatches else "done, with mismatches"
        if on_progress:
            on_progress(self.summary)
        http.close()
        self._follow_real_time()
        self.scheduler.start(workers=2, tick_seconds=1.0)  # from here on, as in production
        return self.summary

    def _follow_real_time(self) -> None:
        """The month is over: from here both clocks run at real speed from where the month
        left them, so billsync's periodic jobs (the webhook inbox, the sweep) keep running and
        the invoice mirror — the customers' past invoices, the failed payment — stays current
        while the demo serves."""
        self.stripe.post("/_emulator/clock", json={"freeze": False}).raise_for_status()

        def advance() -> None:
            last = time.monotonic()
            while not self._stopping.wait(0.2):
                now = time.monotonic()
                self.clock.advance(timedelta(seconds=now - last))
                last = now

        threading.Thread(target=advance, name="billsync-demo-clock", daemon=True).start()

    def _send(self, http: httpx.Client, events: list[dict[str, Any]]) -> None:
        for offset in range(0, len(events), 2000):
            chunk = events[offset : offset + 2000]
            response = http.post("/v1/usage", json={"events": chunk})
            response.raise_for_status()
            for result in response.json()["results"]:
                if result["status"] == "accepted":
                    self.summary.events_accepted += 1
                elif result["status"] == "duplicate":
                    self.summary.duplicates += 1
                else:
                    self.summary.rejected += 1
                    if len(self.summary.rejections) < 5:
                        self.summary.rejections.append(str(result.get("error")))

    def _late_event(self, simulation: Simulation) -> dict[str, Any]:
        account = simulation.accounts[0].id
        moment = self.month_end - timedelta(minutes=30)
        return {
            "id": f"{account}:late-ipv4:{int(moment.timestamp())}",
            "account": account,
            "metric": "ip.ipv4.hours",
            "quantity": "1",
            "timestamp": moment.isoformat().replace("+00:00", "Z"),
        }

    def _pricing(self, http: httpx.Client, simulation: Simulation) -> None:
        """What a platform sells beyond list prices: an enterprise account with negotiated
        rates, a minimum commitment and a budget; a prepaid credit; a spend alert."""
        accounts = simulation.accounts
        enterprise, prepaid, watched = accounts[0], accounts[1 % len(accounts)], accounts[-1]
        rate = {"usd": "0.035", "eur": "0.032"}.get(enterprise.currency, "5")
        http.put(
            f"/v1/accounts/{enterprise.id}/prices",
            json={"prices": {"volume.snapshots.peak_gb": rate}, "reason": "enterprise deal"},
        ).raise_for_status()
        http.patch(
            f"/v1/accounts/{enterprise.id}", json={"minimum_amount": "500.00"}
        ).raise_for_status()
        http.post(
            f"/v1/accounts/{enterprise.id}/alerts",
            json={"name": "monthly budget", "budget": "500", "percents": [50, 80, 100]},
        ).raise_for_status()
        expires = (self.month_end + timedelta(days=60)).isoformat().replace("+00:00", "Z")
        http.post(
            f"/v1/accounts/{prepaid.id}/credit-grants",
            json={"amount": "10.00", "currency": prepaid.currency, "expires_at": expires,
                  "reason": "welcome credit"},
        ).raise_for_status()  # fmt: skip
        http.post(
            f"/v1/accounts/{watched.id}/alerts", json={"name": "first dollar", "amount": "1.00"}
        ).raise_for_status()
        self.summary.pricing = [
            f"{enterprise.id}: negotiated rate, 500.00 {enterprise.currency.upper()} minimum, "
            "budget alerts",
            f"{prepaid.id}: 10.00 {prepaid.currency.upper()} prepaid credit",
            f"{watched.id}: alert at 1.00 {watched.currency.upper()}",
        ]

    def _snapshots(self, simulation: Simulation, at: datetime) -> list[dict[str, Any]]:
        """Hourly snapshot sizes of the first accounts' volumes: growing, pruned each week
        (volume.snapshots.peak_gb is billed on the period's peak)."""
        hours = int((at - self.month_start).total_seconds() // 3600)
        stamp = at.isoformat().replace("+00:00", "Z")
        self._snapshot_reports += min(4, len(simulation.accounts))
        return [
            {
                "id": f"{account.id}:snapshots:{int(at.timestamp())}",
                "account": account.id,
                "metric": "volume.snapshots.peak_gb",
                "quantity": f"{(index + 1) * 5 + (hours % 168) * 0.25:.2f}",
                "timestamp": stamp,
            }
            for index, account in enumerate(simulation.accounts[:4])
        ]

    def _give_cards(self) -> None:
        """The platform collects a card from each customer once Stripe knows them."""
        assert self.billsync is not None
        with self.billsync.database.read() as connection:
            ids = self._account_ids(connection)
            accounts = [sync_repository.get_account(connection, a) for a in ids]
        for account in accounts:
            if account is None or not account.stripe_customer_id:
                continue
            if account.id in self._cards_set:
                continue
            card = DECLINED_CARD if account.id == self.declined_account else GOOD_CARD
            self.stripe.post(
                f"/v1/customers/{account.stripe_customer_id}",
                data={"invoice_settings[default_payment_method]": card},
            ).raise_for_status()
            self._cards_set.add(account.id)

    @staticmethod
    def _account_ids(connection: Connection) -> list[str]:
        return account_repository.account_ids(connection)

    def _stats(self) -> dict[str, Any]:
        response = self.stripe.get("/_emulator/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def _observe(self, simulation: Simulation) -> None:
        assert self.billsync is not None
        stats = self._stats()
        self.summary.simulated_now = self.clock.now()
        self.summary.stripe_calls = int(stats["total"])
        # One Stripe call per usage report: the simulated platform's and the snapshot sizes.
        self.summary.naive_calls = simulation.stats.events + self._snapshot_reports
        with self.billsync.database.read() as connection:
            periods = sync_repository.periods_with_status(connection, list(PeriodStatus))
        month = [p for p in periods if p.start == self.month_start.date()]
        self.summary.periods_total = len(month)
        self.summary.periods_finalized = sum(p.status is PeriodStatus.FINALIZED for p in month)
        if self.clock.now() <= self.month_end:
            return  # nothing is invoiced before the month ends
        self.summary.phase = "closing the month"
        invoices = self._invoices()
        self.summary.invoices_paid = sum(i["status"] == "paid" for i in invoices)
        self.summary.payment_failed = sum(
            i["status"] == "open" and i["attempt_count"] > 0 for i in invoices
        )

    def _invoices(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 100}
        while True:
            response = self.stripe.get("/v1/invoices", params=params)
            response.raise_for_status()
            page = response.json()
            found.extend(page["data"])
            if not page["has_more"]:
                return found
            params["starting_after"] = page["data"][-1]["id"]

    def _month_done(self) -> bool:
        summary = self.summary
        settled = summary.invoices_paid + summary.payment_failed
        return (
            summary.periods_total > 0
            and summary.periods_finalized == summary.periods_total
            and settled >= summary.periods_total
        )

    def _wait_for_webhooks(self) -> None:
        assert self.billsync is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with self.billsync.database.read() as connection:
                pending = webhook_repository.counts(connection)["pending"]
            if not pending:
                return
            # The inbox is processed by a periodic job of the scheduler, due once a second of
            # billsync's clock: let a simulated second pass for each look.
            self.clock.advance(timedelta(seconds=1))
            self.scheduler.tick()
            time.sleep(0.1)

    def _check(self) -> None:
        """What each customer's ledger says they owe for the month equals Stripe's invoice."""
        assert self.billsync is not None
        by_id = {i["id"]: i for i in self._invoices()}
        with self.billsync.database.read() as connection:
            for account_id in self._account_ids(connection):
                account = self.billsync.accounts.get(connection, account_id)
                lines = self.billsync.lines.period_lines(
                    connection, account, self.month_start.date()
                )
                period = sync_repository.get_period(connection, account_id, self.month_start.date())
                self.summary.late_lines += sum(
                    line.late_from is not None
                    for line in self.billsync.lines.period_lines(
                        connection, account, self.month_end.date()
                    ).lines
                )
                if period is None or period.stripe_invoice_id is None:
                    if lines.total:
                        self.summary.mismatches.append(f"{account_id}: no invoice")
                    continue
                invoice = by_id.get(period.stripe_invoice_id)
                if invoice is None or invoice["total"] != lines.total:
                    stripe_total = None if invoice is None else invoice["total"]
                    self.summary.mismatches.append(
                        f"{account_id}: ledger {lines.total} vs Stripe {stripe_total}"
                    )

    def stop(self) -> None:
        self._stopping.set()
        if self.billsync is not None and self.billsync.sync is not None:
            self.billsync.sync.scheduler.stop()
        for server in reversed(self._servers):
            server.should_exit = True
        if self.billsync is not None:
            self.billsync.close()
        if self._platform is not None:
            self._platform.close()
        self.stripe.close()
