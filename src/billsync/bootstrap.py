"""Wires billsync together from Settings: the one place that builds the object graph."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from billsync.catalog_file import load_catalog
from billsync.clock import Clock, FileClock, SystemClock
from billsync.config import Settings
from billsync.core.catalog import Catalog
from billsync.core.installation import key_mode
from billsync.core.policy import Policy, SyncPolicy
from billsync.db.database import Database
from billsync.private_files import write_private
from billsync.services.accounts import AccountService
from billsync.services.adjustments import Adjustments
from billsync.services.alerts import AlertService
from billsync.services.billing_view import BillCache, BillingView
from billsync.services.changes import Changes
from billsync.services.console_auth import ConsoleAuth
from billsync.services.credits import CreditGrants
from billsync.services.event_retention import EventRetention
from billsync.services.group_commit import GroupCommitter
from billsync.services.ingest import IngestService
from billsync.services.lifecycle import LifecycleService, LifecycleSettings
from billsync.services.lines import LineService
from billsync.services.rates import RateService
from billsync.services.reconcile import Reconciler
from billsync.services.support import SupportActions
from billsync.services.sync import SyncService
from billsync.services.webhooks import Sweep, WebhookInbox, WebhookProcessor
from billsync.stripe_gateway import StripeGateway
from billsync.sync.budget import CircuitBreaker, EndpointPacer, Lane, RateBudget
from billsync.sync.guard import StripeGuard, guarded
from billsync.sync.leases import Leases
from billsync.sync.port import StripePort
from billsync.sync.shared_budget import SharedBudget, SharedEndpoints
from billsync.workers.scheduler import Scheduler


@dataclass
class Billsync:
    settings: Settings
    database: Database
    catalog: Catalog
    clock: Clock
    accounts: AccountService
    ingest: IngestService
    lines: LineService
    rates: RateService
    credits: CreditGrants
    alerts: AlertService
    ingest_writer: GroupCommitter
    console: ConsoleAuth
    adjustments: Adjustments
    billing: BillingView
    bill_cache: BillCache
    customer_token_secret: str
    webhooks: WebhookInbox
    processor: WebhookProcessor
    support: SupportActions
    sync: Syncing | None = None

    def close(self) -> None:
        if self.sync is not None:
            self.sync.scheduler.stop()
        self.ingest_writer.close()
        self.database.dispose()


@dataclass
class Syncing:
    """Everything that talks to Stripe; absent when no Stripe key is configured."""

    gateway: StripePort
    guard: StripeGuard
    service: SyncService
    lifecycle: LifecycleService
    scheduler: Scheduler
    sweep: Sweep
    reconciler: Reconciler | None = None

    def on_lane(self, lane: Lane) -> StripePort:
        """The gateway, spending the process's budget on ``lane`` (for calls outside syncs)."""
        return guarded(self.gateway, self.guard, lane)


def build_syncing(
    settings: Settings,
    database: Database,
    catalog: Catalog,
    clock: Clock,
    gateway: StripePort | None = None,
    *,
    changes: Changes | None = None,
) -> Syncing | None:
    if gateway is None:
        if not settings.stripe_api_key:
            return None
        gateway = StripeGateway(
            settings.stripe_api_key,
            api_base=settings.stripe_api_base,
            timeout=settings.stripe_timeout_seconds,
            max_network_retries=settings.stripe_max_retries,
        )
    rate = settings.stripe_calls_per_second()
    shared = SharedBudget(database, rate) if settings.shared_budget() else None
    pacer = EndpointPacer(settings.stripe_endpoint_rate, settings.stripe_endpoint_rates)
    guard = StripeGuard(
        RateBudget(rate), CircuitBreaker(), shared, endpoints=pacer,
        shared_endpoint=SharedEndpoints(database, pacer) if shared is not None else None,
    )  # fmt: skip
    leases = Leases(database, ttl=settings.lease_seconds)
    service = SyncService(
        database, gateway, catalog, clock, guard=guard,
        delete_zero_total=settings.zero_total_periods == "delete",
        changes=changes, leases=leases, lease_wait=settings.on_demand_wait_seconds,
        namespace=settings.stripe_namespace, stripe_mode=key_mode(settings.stripe_api_key or ""),
        inherit_discounts=settings.stripe_discounts == "inherit",
        statement_url=settings.statement_template(),
    )  # fmt: skip
    lifecycle = LifecycleService(
        database,
        clock,
        service,
        LifecycleSettings(
            grace=timedelta(seconds=settings.close_grace_seconds),
            review_window=timedelta(seconds=settings.review_window_seconds),
        ),
    )
    policy = SyncPolicy(
        Policy(settings.sync_policy),
        timedelta(seconds=settings.sync_interval_seconds),
        settings.sync_threshold,
    )
    scheduler = Scheduler(
        database, service, lifecycle, clock, policy, leases=leases, calls_per_second=rate,
        on_demand_spacing=timedelta(seconds=settings.on_demand_min_seconds),
    )  # fmt: skip
    # Webhook processing's re-reads and the sweep spend the same budget as syncs do.
    background = guarded(gateway, guard, Lane.INTERVAL)
    processor = WebhookProcessor(database, clock, background, changes)
    sweep = Sweep(database, clock, background)
    scheduler.every(timedelta(seconds=1), "webhooks.process", processor.process)
    scheduler.every(timedelta(seconds=settings.sweep_interval_seconds), "webhooks.sweep", sweep.run)
    # Partitions for the coming months, then the raw events retention allows to go.
    retention = EventRetention.from_settings(settings, database, clock)
    scheduler.every(timedelta(hours=1), "events.retention", retention.run)
    reconciler = Reconciler(database, gateway, service, clock)
    if settings.reconcile_interval_seconds:
        # Detect and record only: repairs sync, and the tick must not race the sync workers.
        scheduler.every(
            timedelta(seconds=settings.reconcile_interval_seconds),
            "reconcile",
            partial(reconciler.reconcile, repair=False),
        )
    return Syncing(gateway, guard, service, lifecycle, scheduler, sweep, reconciler)


def customer_secret(settings: Settings) -> str:
    """The key that signs customer tokens: configured, or generated once in the data dir."""
    if settings.customer_token_secret:
        return settings.customer_token_secret
    path = settings.data_dir / "customer-token-secret"
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(32)
    write_private(path, secret + "\n")
    return secret


def build(
    settings: Settings,
    *,
    clock: Clock | None = None,
    database: Database | None = None,
    catalog: Catalog | None = None,
    gateway: StripePort | None = None,
) -> Billsync:
    clock = clock or (FileClock(settings.clock_file) if settings.clock_file else SystemClock())
    catalog = catalog or load_catalog(settings.catalog)
    database = database or Database(
        settings.resolved_database_url(),
        sqlite_synchronous=settings.sqlite_synchronous,
        sqlite_cache_mib=settings.sqlite_cache_mib,
    )
    changes = Changes()
    bill_cache = BillCache()
    changes.subscribe(bill_cache.forget)
    syncing = build_syncing(settings, database, catalog, clock, gateway, changes=changes)
    lines = LineService(catalog, clock, settings.billing_anchor_day)
    ingest = IngestService(
        database,
        catalog,
        clock,
        horizon=timedelta(days=settings.usage_horizon_days),
        default_anchor_day=settings.billing_anchor_day,
        changes=changes,
    )
    adjustments = Adjustments(database, clock, settings.billing_anchor_day)
    support = SupportActions(
        database, clock, adjustments,
        sync=syncing.service if syncing else None,
        lifecycle=syncing.lifecycle if syncing else None,
        reconciler=syncing.reconciler if syncing else None,
    )  # fmt: skip
    alerts = AlertService(
        database, clock, settings.billing_anchor_day,
        url=settings.platform_webhook_url, secret=settings.platform_webhook_secret,
    )  # fmt: skip
    if syncing is not None:  # the scheduler weighs the alerts and sends their webhooks
        syncing.scheduler.every(timedelta(seconds=5), "alerts.evaluate", alerts.evaluate)
        syncing.scheduler.every(timedelta(seconds=2), "alerts.deliver", alerts.deliver)
    return Billsync(
        settings=settings,
        database=database,
        catalog=catalog,
        clock=clock,
        accounts=AccountService(catalog, clock),
        ingest=ingest,
        lines=lines,
        rates=RateService(catalog, clock, settings.billing_anchor_day),
        credits=CreditGrants(clock),
        alerts=alerts,
        ingest_writer=GroupCommitter(ingest.record),
        console=ConsoleAuth(database, clock),
        adjustments=adjustments,
        billing=BillingView(lines, clock),
        bill_cache=bill_cache,
        customer_token_secret=customer_secret(settings),
        webhooks=WebhookInbox(
            database, clock, settings.webhook_secrets(), settings.webhook_tolerance_seconds
        ),
        processor=WebhookProcessor(database, clock, syncing.gateway if syncing else None, changes),
        support=support,
        sync=syncing,
    )
