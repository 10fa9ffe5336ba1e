"""Configuration from ``BILLSYNC_*`` environment variables (README, "Configuration")."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from billsync.core.installation import check_namespace
from billsync.core.periods import validate_anchor_day

# Set by `billsync serve` when its single process should also run the scheduler and workers.
RUN_SCHEDULER = "BILLSYNC_RUN_SCHEDULER"

EXAMPLE_CATALOG = Path(__file__).parent / "catalogs" / "example.toml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BILLSYNC_", extra="ignore")

    data_dir: Path = Field(
        default=Path("var"), description="Where the SQLite ledger and generated secrets live."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default sqlite:///<data_dir>/billsync.db. "
        "PostgreSQL: postgresql+psycopg://user@host/db",
    )
    sqlite_synchronous: str = Field(
        default="FULL",
        description="SQLite 'synchronous' pragma: FULL survives power loss, NORMAL only crashes.",
    )
    sqlite_cache_mib: int = Field(
        default=16,
        ge=2,
        le=4096,
        description="SQLite page cache per connection, in MiB (SQLite's own default is 2): "
        "ingest writes index pages all over the line index, and a cache that holds them is "
        "about a tenth faster at a million events.",
    )
    api_token: str | None = Field(
        default=None,
        description="Bearer token(s) for /v1 (comma-separated to rotate). "
        "If unset, `billsync serve` generates one in <data_dir>/api-token.",
    )
    catalog: Path = Field(default=EXAMPLE_CATALOG, description="The catalog TOML file.")
    billing_anchor_day: int = Field(
        default=1, description="Day of the month (1–28, UTC) on which periods start."
    )
    usage_horizon_days: int = Field(
        default=45, ge=1, le=400, description="Events older than this are refused."
    )
    max_batch_events: int = Field(default=5000, ge=1, description="Events per POST /v1/usage.")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="Request body cap.")
    body_timeout_seconds: float = Field(
        default=30.0, gt=0, description="A request body must arrive within this (slow clients)."
    )
    webhook_max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Body cap of POST /v1/stripe/webhook, which anyone may call: Stripe's events "
        "are a few KB.",
    )
    webhook_max_concurrent: int = Field(
        default=16,
        ge=1,
        description="Webhook deliveries one API process reads and stores at once; more are "
        "answered 503 with Retry-After, and Stripe delivers them again later.",
    )
    stripe_api_key: str | None = Field(
        default=None, description="sk_test_… or sk_live_…; unset: no syncing to Stripe."
    )
    stripe_api_base: str | None = Field(
        default=None, description="Stripe's API address; the emulator's URL in tests and the demo."
    )
    stripe_namespace: str | None = Field(
        default=None,
        description="This installation's name in its Stripe keys and objects' metadata "
        "(several installations on one Stripe account never touch each other's objects); "
        "unset: the one generated when the database was created.",
    )
    stripe_discounts: str = Field(
        default="inherit",
        description="inherit: a customer's coupon in Stripe applies to its usage invoices "
        "(Stripe's default; the bill shows the discount); none: usage invoices never take one.",
    )
    stripe_timeout_seconds: float = Field(default=10.0, gt=0)
    stripe_max_retries: int = Field(default=2, ge=0, le=10)
    stripe_rate: float | None = Field(
        default=None,
        gt=0,
        description="Stripe calls/s (20 test, 80 live): for every process together when "
        "the budget is shared (see stripe_budget_scope), else per process.",
    )
    stripe_endpoint_rate: float = Field(
        default=25.0,
        gt=0,
        description="Stripe calls/s to any one endpoint (Stripe's default limit per endpoint), "
        "paced besides the global rate.",
    )
    stripe_endpoint_rates: dict[str, float] = Field(
        default_factory=dict,
        description="Per-endpoint rates Stripe raised for the account, as JSON: "
        '{"POST /v1/invoices/{id}/update_lines": 50}.',
    )
    sync_policy: str = Field(
        default="interval", description="interval|threshold|on_demand|cycle_end"
    )
    sync_interval_seconds: int = Field(default=900, ge=1)
    sync_threshold: int = Field(default=10_000, ge=1, description="Minor units behind.")
    sync_workers: int = Field(default=2, ge=1, le=64)
    lease_seconds: float = Field(
        default=60.0,
        ge=5,
        description="How long a worker's lease on an account (and the scheduler's singleton "
        "jobs) lasts unless renewed; a dead worker's accounts are picked up after this.",
    )
    stripe_budget_scope: str = Field(
        default="auto",
        description="process: each process keeps its own Stripe budget; database: every process "
        "shares one (PostgreSQL's clock); auto: database on PostgreSQL, process on SQLite.",
    )
    scheduler_tick_seconds: float = Field(default=5.0, gt=0)
    on_demand_wait_seconds: float = Field(default=10.0, ge=0)
    on_demand_min_seconds: float = Field(
        default=10.0,
        ge=0,
        description="An on-demand request for an account synced (or tried) less than this ago "
        "answers its state as it is instead of syncing again (0: always sync).",
    )
    close_grace_seconds: int = Field(default=3600, ge=0)
    review_window_seconds: int = Field(default=3600, ge=0)
    zero_total_periods: str = Field(default="finalize", description="finalize|delete")
    stripe_webhook_secrets: str | None = Field(
        default=None,
        description="whsec_… signing secret(s) of the webhook endpoint, comma-separated to rotate.",
    )
    webhook_tolerance_seconds: int = Field(default=300, ge=1)
    platform_webhook_url: str | None = Field(
        default=None,
        description="Where spend alerts are sent (POST, signed with platform_webhook_secret); "
        "unset: alerts are recorded and listed, not sent.",
    )
    platform_webhook_secret: str | None = Field(
        default=None,
        description="Signs the platform webhooks (Billsync-Signature: t=…,v1=HMAC-SHA256).",
    )
    sweep_interval_seconds: int = Field(
        default=300, ge=1, description="How often GET /v1/events is swept for missed webhooks."
    )
    reconcile_interval_seconds: int = Field(
        default=0, ge=0, description="How often the scheduler reconciles with Stripe (0: never)."
    )
    event_retention_days: int = Field(
        default=0,
        ge=0,
        description="Raw usage events are deleted this many days after their invoice is "
        "finalized (lines are kept); 0: kept forever.",
    )
    customer_requests_per_minute: int = Field(
        default=60,
        ge=1,
        description="Requests one customer token may make to its billing page, bill and "
        "portal per minute, per API process (bursts up to the same number); more get 429.",
    )
    customer_token_secret: str | None = Field(
        default=None,
        description="Signs customer tokens; if unset, `billsync serve` keeps one in <data_dir>.",
    )
    public_url: str | None = Field(
        default=None, description="Where customers reach billsync (portal return links)."
    )
    statement_url: str | None = Field(
        default=None,
        description="The link each Stripe invoice carries to the period's detailed statement "
        "(a custom field; every line, also those the invoice rolls up): a template with "
        "{account} and {period} (the period's first day), e.g. "
        "https://platform.example/billing/{account}?period={period}. Unset: public_url's "
        "billing page; no link when neither is set.",
    )
    trusted_proxies: str = Field(
        default="",
        description="Comma-separated addresses or networks of the proxies in front of billsync "
        "(e.g. 10.0.0.5,10.1.0.0/16): only their X-Forwarded-For/-Proto is believed, so the "
        "console's sign-in throttle counts the real client. Empty: no proxy is trusted.",
    )
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = Field(default=1, ge=1, description="API processes for `billsync serve`.")
    log_level: str = Field(
        default="INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL (logs go to stderr)."
    )
    log_format: str = Field(
        default="auto",
        description="json: one JSON object per line; text: for people; auto: text when stderr "
        "is a terminal, json otherwise.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve Prometheus metrics on this port (on BILLSYNC_HOST) from processes "
        "without the API, such as `billsync worker`; the API serves them at /metrics.",
    )
    clock_file: str | None = Field(
        default=None,
        description="Tests and chaos runs only: read the time from this file (ISO 8601) "
        "instead of the system clock, so several processes share one simulated clock.",
    )

    @field_validator("billing_anchor_day")
    @classmethod
    def _anchor(cls, value: int) -> int:
        return validate_anchor_day(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: str) -> str:
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (e.g. 10.0.0.5 or 10.1.0.0/16)"
                ) from None
        return ",".join(entries)

    @field_validator("stripe_namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        return None if value is None else check_namespace(value)

    @field_validator("stripe_discounts")
    @classmethod
    def _discounts(cls, value: str) -> str:
        if value not in {"inherit", "none"}:
            raise ValueError("must be inherit or none")
        return value

    @field_validator("sqlite_synchronous")
    @classmethod
    def _synchronous(cls, value: str) -> str:
        normalized = value.upper()
        if normalized not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError("must be OFF, NORMAL, FULL or EXTRA")
        return normalized

    @field_validator("stripe_endpoint_rates")
    @classmethod
    def _endpoint_rates(cls, value: dict[str, float]) -> dict[str, float]:
        for endpoint, rate in value.items():
            method, _, path = endpoint.partition(" ")
            if method not in {"GET", "POST", "DELETE"} or not path.startswith("/v1/"):
                raise ValueError(
                    f"{endpoint!r}: name an endpoint as Stripe counts it, a method and a path "
                    'template: "POST /v1/invoices/{id}/update_lines"'
                )
            if not rate > 0:
                raise ValueError(f"{endpoint!r}: a rate is a positive number of calls/s")
        return value

    @field_validator("sync_policy")
    @classmethod
    def _policy(cls, value: str) -> str:
        if value not in {"interval", "threshold", "on_demand", "cycle_end"}:
            raise ValueError("must be interval, threshold, on_demand or cycle_end")
        return value

    @field_validator("stripe_budget_scope")
    @classmethod
    def _budget_scope(cls, value: str) -> str:
        if value not in {"auto", "process", "database"}:
            raise ValueError("must be auto, process or database")
        return value

    def shared_budget(self) -> bool:
        """Whether every process draws from one Stripe budget kept in the database."""
        if self.stripe_budget_scope == "auto":
            return self.resolved_database_url().startswith("postgresql")
        return self.stripe_budget_scope == "database"

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        normalized = value.upper()
        if normalized not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return normalized

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        normalized = value.lower()
        if normalized not in {"auto", "json", "text"}:
            raise ValueError("must be auto, json or text")
        return normalized

    @field_validator("zero_total_periods")
    @classmethod
    def _zero(cls, value: str) -> str:
        if value not in {"finalize", "delete"}:
            raise ValueError("must be finalize or delete")
        return value

    def stripe_calls_per_second(self) -> float:
        """The budget: configured, or safely under Stripe's limit for the key's mode."""
        if self.stripe_rate is not None:
            return self.stripe_rate
        live = (self.stripe_api_key or "").startswith(("sk_live_", "rk_live_"))
        return 80.0 if live else 20.0

    def stripe_endpoint_rate_of(self, endpoint: str) -> float:
        """Calls/s allowed to one Stripe endpoint: its override, else the default."""
        return self.stripe_endpoint_rates.get(endpoint, self.stripe_endpoint_rate)

    def webhook_secrets(self) -> list[str]:
        if not self.stripe_webhook_secrets:
            return []
        return [s.strip() for s in self.stripe_webhook_secrets.split(",") if s.strip()]

    def statement_template(self) -> str | None:
        """The statement link's template (``statement_url``, else public_url's page)."""
        if self.statement_url:
            return self.statement_url
        if self.public_url:
            return self.public_url.rstrip("/") + "/billing/{account}?period={period}"
        return None

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'billsync.db').resolve()}"

    def api_tokens(self) -> list[str]:
        if not self.api_token:
            return []
        return [token.strip() for token in self.api_token.split(",") if token.strip()]
