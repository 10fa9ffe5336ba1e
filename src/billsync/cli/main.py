"""The ``billsync`` command line."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import threading
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import uvicorn
from alembic.util.exc import CommandError
from pydantic import ValidationError
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from typer.core import TyperArgument, TyperOption

from billsync.api.web_security import proxy_options
from billsync.catalog_file import load_catalog
from billsync.cli import (
    consume_command,
    doctor_command,
    reconcile_command,
    retention_command,
    simulate_command,
    support_commands,
    sync_commands,
    verify_command,
)
from billsync.cli.accounts_commands import accounts_app
from billsync.cli.common import (
    DATABASE_WAIT_SECONDS,
    BillsyncGroup,
    console,
    describe_pricing_plan,
    errors,
    fail,
    load_settings,
    open_billsync,
    open_database,
    require_free_port,
)
from billsync.cli.ingest_file import ingest_file
from billsync.cli.users_commands import users_app
from billsync.config import RUN_SCHEDULER, Settings
from billsync.core import customer_tokens
from billsync.core.catalog import CatalogError
from billsync.db import migrate
from billsync.errors import BillsyncError
from billsync.observability.logs import configure_logging, resolve_format, uvicorn_log_config
from billsync.observability.metrics import MULTIPROCESS_DIR
from billsync.private_files import write_private
from billsync.services.catalog_prices import CatalogChangeRefused, CatalogPrices, refusal_message

if TYPE_CHECKING:
    from billsync.demo import DemoSummary


def _no_type_placeholders() -> None:
    """Typer's help prints a value type beside every option and argument: ``<bool>`` beside a
    flag (``--json <bool>``), though a flag takes no value, and ``<str>`` beside an argument
    already named (``ID <str>``). Those are left out; an option's name for its value (``--account
    ID``) stays."""
    option_type = TyperOption.display_type_rich
    argument_type = TyperArgument.display_type_rich

    def for_option(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else option_type(self, ctx)

    def for_argument(self: TyperArgument, ctx: Any) -> str | None:
        return None if self.metavar else argument_type(self, ctx)

    TyperOption.display_type_rich = for_option  # type: ignore[method-assign]
    TyperArgument.display_type_rich = for_argument  # type: ignore[method-assign,assignment]


_no_type_placeholders()
# Help texts are Markdown: a paragraph's lines join as one (a command's summary in the list is
# its first paragraph, unbroken).
app = typer.Typer(
    cls=BillsyncGroup,
    help="billsync: usage ledger and Stripe invoice sync.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
catalog_app = typer.Typer(help="Inspect the catalog.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(accounts_app, name="accounts")
app.add_typer(catalog_app, name="catalog")


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[
        str, typer.Option(metavar="REVISION", help="The schema revision to reach.")
    ] = "head",
) -> None:
    """Apply the migrations up to --revision (default: the newest), and list those applied."""
    database = open_database(load_settings())
    try:
        before = migrate.current_revision(database)
        migrate.upgrade(database, revision)
        after = migrate.current_revision(database)
        applied = migrate.revisions_between(database, before, after)
    except CommandError as error:
        raise fail(f"--revision {revision}: {error}", code=2) from None
    finally:
        database.dispose()
    for line in applied:
        console.print(f"applied {escape(line)}", highlight=False)
    console.print(f"schema at {after}" + ("" if applied else " (nothing to apply)"))


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision of the database and the newest one available."""
    database = open_database(load_settings())
    try:
        current, head = migrate.current_revision(database), migrate.head_revision(database)
    finally:
        database.dispose()
    console.print(f"current: {current or 'none (run billsync db upgrade)'}  head: {head}")


@catalog_app.command("check")
def catalog_check(
    path: Annotated[
        Path | None,
        typer.Argument(metavar="FILE", help="The catalog file.", show_default="BILLSYNC_CATALOG"),
    ] = None,
) -> None:
    """Validate a catalog file (every error, each with its path in the file) and list its
    metrics."""
    path = path or load_settings().catalog
    try:
        catalog = load_catalog(path)
    except CatalogError as error:
        for problem in error.problems:
            errors.print(f"[bold red]error:[/] {escape(problem)}", highlight=False)
        raise fail(f"{len(error.problems)} error(s) in {path}") from None
    console.print(
        escape(f"{path}: {len(catalog.metrics)} metrics in {', '.join(catalog.currencies)}")
    )
    for metric in catalog.metrics.values():
        console.print(escape(f"  {metric.id}  per {metric.unit}"), highlight=False)


@catalog_app.command("apply")
def catalog_apply(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what applying would do; change nothing.")
    ] = False,
) -> None:
    """Apply the configured catalog's prices (BILLSYNC_CATALOG) to the ledger: record them,
    and re-rate the open periods they price differently from the catalog applied before. Refused
    (nothing changed) if they re-price a period that is closing, in review, held or finalized."""
    billsync = open_billsync(catalog_check=False)
    try:
        prices = CatalogPrices(billsync.database, billsync.catalog, billsync.clock)
        plan = prices.plan()
        describe_pricing_plan(plan, billsync.catalog.source)
        if plan.refused:  # a dry run says so too
            raise fail(refusal_message(plan))
        if dry_run or plan.kind == "unchanged":
            return

        def progress(lines: int, accounts: int) -> None:
            console.print(f"  re-rated {lines} line(s) of {accounts} account(s)…", highlight=False)

        try:
            result = prices.apply(actor="cli", progress=progress)
        except CatalogChangeRefused as refused:
            raise fail(refused.message) from None
    finally:
        billsync.close()
    console.print(
        f"applied (pricing {result.pricing_id}): {result.lines_re_rated} line(s) of "
        f"{result.accounts_re_rated} account(s) re-rated; the sync puts them on the drafts",
        highlight=False,
    )


@app.command("ingest")
def ingest(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="FILE.jsonl",
            help="One event per line.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    batch_size: Annotated[
        int, typer.Option(metavar="N", min=1, max=5000, help="Events committed together.")
    ] = 1000,
    rejects: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Write rejected lines with their errors here (JSONL)."),
    ] = None,
) -> None:
    """Load usage events from a JSON Lines file, with the API's validation. Exit 1 if any
    event was rejected."""
    billsync = open_billsync()
    try:
        summary = ingest_file(
            billsync, path, batch_size=batch_size, rejects=rejects, console=console
        )
    finally:
        billsync.close()
    table = Table(title=f"ingested {path}")
    for column in ("lines", "accepted", "duplicates", "rejected"):
        table.add_column(column, justify="right")
    table.add_row(
        *(str(n) for n in (summary.lines, summary.accepted, summary.duplicates, summary.rejected))
    )
    console.print(table)
    for line_number, code, message in summary.first_rejections:
        errors.print(escape(f"line {line_number}: {code}: {message}"), highlight=False)
    if summary.rejected:
        raise typer.Exit(1)


def api_token(settings: Settings) -> str:
    """The configured token, or one generated once and kept in the data directory."""
    tokens = settings.api_tokens()
    if tokens:
        return tokens[0]
    path = settings.data_dir / "api-token"
    if path.exists():
        return path.read_text().strip()
    token = "bsk_" + secrets.token_urlsafe(24)
    write_private(path, token + "\n")
    return token


Host = Annotated[
    str | None,
    typer.Option(
        metavar="ADDRESS",
        help="The interface to listen on.",
        show_default=f"BILLSYNC_HOST, else {Settings.model_fields['host'].default}",
    ),
]
Port = Annotated[
    int | None,
    typer.Option(
        metavar="PORT",
        min=0,
        max=65535,
        help="The port to listen on.",
        show_default=f"BILLSYNC_PORT, else {Settings.model_fields['port'].default}",
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        min=1,
        help="API processes.",
        show_default=f"BILLSYNC_WORKERS, else {Settings.model_fields['workers'].default}",
    ),
]
AccessLog = Annotated[bool, typer.Option("--access-log", help="Log every request.")]


@app.command("serve")
def serve(
    host: Host = None, port: Port = None, workers: Workers = None, access_log: AccessLog = False
) -> None:
    """Run the API (on SQLite by default: nothing else to install); with one API process it
    also runs the scheduler and its sync workers."""
    _serve(host, port, workers, access_log=access_log, scheduler=True)


@app.command("api")
def api(
    host: Host = None, port: Port = None, workers: Workers = None, access_log: AccessLog = False
) -> None:
    """Run the API only: syncing, webhook processing and the lifecycle are left to
    `billsync worker` processes."""
    _serve(host, port, workers, access_log=access_log, scheduler=False)


def announce_token(settings: Settings, token: str, url: str) -> None:
    """Say which API token the server takes: billsync's own (generated into the data
    directory) is printed; the operator's (BILLSYNC_API_TOKEN) never is — they have it, and
    a terminal's scrollback or a service manager's log should not."""
    if settings.api_tokens():
        console.print("API token: the one in BILLSYNC_API_TOKEN")
        return
    console.print(f"API token: [bold]{token}[/]  (kept in {settings.data_dir / 'api-token'})")
    console.print(
        f"try: curl -H 'Authorization: Bearer {token}' {url}/v1/catalog",
        highlight=False,
        soft_wrap=True,
    )


def _serve(
    host: str | None, port: int | None, workers: int | None, *, access_log: bool, scheduler: bool
) -> None:
    settings = load_settings()
    host = host or settings.host
    port = settings.port if port is None else port
    require_free_port(host, port, "--port (or BILLSYNC_PORT)")
    billsync = open_billsync(settings, wait=DATABASE_WAIT_SECONDS, apply_catalog=True)
    billsync.close()
    token = api_token(settings)
    os.environ["BILLSYNC_API_TOKEN"] = ",".join([token, *settings.api_tokens()[1:]])
    processes = workers or settings.workers
    if processes == 1 and scheduler:
        os.environ[RUN_SCHEDULER] = "1"  # one process: it also runs the scheduler and workers
    else:
        os.environ.pop(RUN_SCHEDULER, None)
        if settings.stripe_api_key:
            console.print("run the scheduler and syncs separately with `billsync worker`")
    url = f"http://{host}:{port}"
    console.print(f"[bold]billsync[/] on {url}  (store: {billsync.database.dialect})")
    announce_token(settings, token, url)
    metrics_dir = None
    if processes > 1 and not os.environ.get(MULTIPROCESS_DIR):
        # Each API process counts in a file here; a scrape answered by any one sums them.
        metrics_dir = tempfile.mkdtemp(prefix="billsync-metrics-")
        os.environ[MULTIPROCESS_DIR] = metrics_dir
    try:
        _run_uvicorn(settings, host, port, processes, access_log=access_log)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run_uvicorn(
    settings: Settings, host: str, port: int, processes: int, *, access_log: bool
) -> None:
    uvicorn.run(
        "billsync.api.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=processes,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="httptools",
        access_log=access_log,
        **proxy_options(settings),
        log_level=settings.log_level.lower(),
        # Each API process (uvicorn starts them afresh) logs as this one does, uvicorn included.
        log_config=uvicorn_log_config(settings.log_level, resolve_format(settings.log_format)),
    )


app.add_typer(users_app, name="users")
app.add_typer(support_commands.support_app, name="support")
tokens_app = typer.Typer(help="Tokens for customers.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


def parse_ttl(text: str) -> timedelta:
    """``900``, ``900s``, ``15m``, ``1h``."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    if not number.isdigit():
        raise fail(f"--ttl must look like 900s, 15m or 1h, not {text!r}", code=2)
    return timedelta(seconds=int(number) * units[unit])


@tokens_app.command("customer")
def tokens_customer(
    account_id: Annotated[str, typer.Argument(metavar="ID", help="The account.")],
    ttl: Annotated[
        str, typer.Option(metavar="DURATION", help="Lifetime: 900s, 15m, 1h (at most 1 day).")
    ] = "15m",
) -> None:
    """Print a short-lived token that opens this account's billing page and portal only."""
    lifetime = parse_ttl(ttl)
    billsync = open_billsync()
    try:
        with billsync.database.read() as connection:
            billsync.accounts.get(connection, account_id)
        token = customer_tokens.issue(
            billsync.customer_token_secret, account_id, billsync.clock.now(), lifetime
        )
    except (BillsyncError, ValueError) as error:
        raise fail(getattr(error, "message", str(error))) from None
    finally:
        billsync.close()
    console.print(token, highlight=False, soft_wrap=True)
    base = (
        billsync.settings.public_url or f"http://{billsync.settings.host}:{billsync.settings.port}"
    )
    console.print(
        f"billing page: {base.rstrip('/')}/billing/{escape(account_id)}?token={token}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("emulator")
def emulator(
    host: Annotated[
        str, typer.Option(metavar="ADDRESS", help="The interface to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(metavar="PORT", min=0, max=65535, help="The port to listen on.")
    ] = 12111,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY",
            help="Accept only this key (repeat for more).",
            show_default="any well-formed sk_test_/sk_live_ key",
        ),
    ] = None,
    rate_limit: Annotated[
        float | None,
        typer.Option(
            metavar="PER_SECOND", help="Requests/s per mode.", show_default="25 test, 100 live"
        ),
    ] = None,
    endpoint_rate_limit: Annotated[
        float | None,
        typer.Option(
            metavar="PER_SECOND",
            help="Requests/s per endpoint and mode (0: no limit).",
            show_default="25, as Stripe",
        ),
    ] = None,
) -> None:
    """Run the Stripe emulator: the test peer and the demo's backend — never production."""
    # Imported here, as the demo's are: a worker or an API process (which restart after a
    # crash or a deploy) does not load the emulator, the demo or the web app to start.
    from billsync.emulator.app import create_app as create_emulator  # noqa: PLC0415
    from billsync.emulator.state import API_VERSION, EmulatorConfig  # noqa: PLC0415

    require_free_port(host, port, "--port")
    config = EmulatorConfig(public_url=f"http://{host}:{port}")
    if rate_limit is not None:
        config.rate_limit_test = config.rate_limit_live = rate_limit
    if endpoint_rate_limit is not None:
        config.rate_limit_endpoint = endpoint_rate_limit
    server = create_emulator(config, set(api_key) if api_key else None)
    console.print(f"[bold]Stripe emulator[/] on http://{host}:{port}  (API version {API_VERSION})")
    # A stop waits for requests in flight (an injected latency included) at most 5 s: a peer
    # that keeps connections open must not keep the emulator from stopping.
    uvicorn.run(
        server, host=host, port=port, log_level="warning", loop="uvloop", http="httptools",
        timeout_graceful_shutdown=5,
    )  # fmt: skip


@app.command("demo")
def demo(
    *,
    port: Annotated[
        int, typer.Option(metavar="PORT", min=1, max=65535, help="billsync's port.")
    ] = 8080,
    emulator_port: Annotated[
        int, typer.Option(metavar="PORT", min=1, max=65535, help="The Stripe emulator's port.")
    ] = 12111,
    accounts: Annotated[
        int, typer.Option(metavar="N", min=1, max=200, help="Simulated customers.")
    ] = 12,
    seed: Annotated[int, typer.Option(metavar="N", help="The simulated platform's seed.")] = 1,
    speed: Annotated[
        float,
        typer.Option(metavar="HOURS", min=0.5, help="Simulated hours per real second (at most)."),
    ] = 8.0,
    exit_when_done: Annotated[
        bool, typer.Option("--exit", help="Stop once the month is invoiced (for scripts).")
    ] = False,
) -> None:
    """A billing month on an accelerated clock: SQLite, the Stripe emulator, a simulated
    platform, the customer pages and the console."""
    from billsync.demo import Demo, DemoOptions  # noqa: PLC0415 - see emulator()

    settings = load_settings()
    require_free_port("127.0.0.1", port, "--port")
    require_free_port("127.0.0.1", emulator_port, "--emulator-port")
    if "BILLSYNC_LOG_LEVEL" not in os.environ:
        # The demo shows its own progress; a line per sync would bury it (set the variable to
        # see them).
        configure_logging("WARNING", resolve_format(settings.log_format))
    options = DemoOptions(
        data_dir=settings.data_dir / "demo", port=port, emulator_port=emulator_port,
        accounts=accounts, seed=seed, hours_per_second=speed,
    )  # fmt: skip
    run = Demo(options)
    try:
        run.start()
    except (RuntimeError, OSError) as error:
        raise fail(str(error)) from None
    console.print(f"[bold]billsync demo[/]: {accounts} customers, one month at {speed:g} h/s")
    console.print(f"  Stripe emulator   {run.emulator_url}")
    console.print(
        f"  billsync API      {run.url}   token: {run.api_token}", highlight=False, soft_wrap=True
    )
    console.print(
        f"  support console   {run.url}/console   sign in as [bold]support[/] / "
        f"[bold]{run.password}[/]",
        highlight=False,
        soft_wrap=True,
    )
    try:
        with Live(demo_table(run.summary), console=console, refresh_per_second=4) as live:
            summary = run.run(lambda s: live.update(demo_table(s)))
        console.print()
        first = run.customer_link(f"cust-{0:04d}")
        declined = run.customer_link(run.declined_account)
        console.print(f"  a customer's bill {first}", highlight=False, soft_wrap=True)
        console.print(f"  the declined card {declined}", highlight=False, soft_wrap=True)
        for rejection in summary.rejections:
            console.print(f"[red]rejected[/] {escape(rejection)}")
        if summary.mismatches or summary.rejected:
            for mismatch in summary.mismatches:
                console.print(f"[red]mismatch[/] {mismatch}")
            raise typer.Exit(1)
        console.print(
            "[green]every invoice finalized; each customer's ledger total equals Stripe's "
            "invoice, to the cent[/]"
        )
        if not exit_when_done:
            console.print("still serving: open the links above; Ctrl-C to stop")
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        run.stop()


def demo_table(summary: DemoSummary) -> Table:
    table = Table(show_header=False, box=None)
    table.add_row("simulated time", summary.simulated_now.strftime("%Y-%m-%d %H:%M UTC"))
    table.add_row("phase", summary.phase)
    table.add_row(
        "usage events",
        f"{summary.events_accepted:,} ingested, {summary.duplicates:,} duplicates ignored, "
        f"{summary.rejected:,} rejected",
    )
    ratio = summary.naive_calls / summary.stripe_calls if summary.stripe_calls else 0
    table.add_row(
        "Stripe API calls",
        f"{summary.stripe_calls:,} (one per usage report would be {summary.naive_calls:,}: "
        f"{ratio:,.0f}× more)",
    )
    table.add_row(
        "invoices",
        f"{summary.periods_finalized}/{summary.periods_total} finalized, "
        f"{summary.invoices_paid} paid, {summary.payment_failed} payment failed",
    )
    if summary.late_lines:
        table.add_row("late usage", f"{summary.late_lines} line(s) carried to the next invoice")
    for index, item in enumerate(summary.pricing):
        table.add_row("pricing" if index == 0 else "", item)
    if summary.pricing:
        table.add_row("alerts", f"{summary.alerts_received} signed webhook(s) the platform took")
    return table


app.command("simulate")(simulate_command.simulate_command)
app.command("sync")(sync_commands.sync_command)
app.command("worker")(sync_commands.worker_command)
app.command("status")(sync_commands.status_command)
app.command("capacity")(sync_commands.capacity_command)
app.command("reconcile")(reconcile_command.reconcile_command)
app.command("verify")(verify_command.verify_command)
app.command("doctor")(doctor_command.doctor_command)
app.command("retention")(retention_command.retention_command)
app.command("consume")(consume_command.consume_command)
periods_app = typer.Typer(help="Billing period lifecycle.", no_args_is_help=True)
periods_app.command("advance")(sync_commands.advance_command)
app.add_typer(periods_app, name="periods")


# The commands that keep running, whose log is their record: they log at INFO by default. A
# one-shot command speaks through its own output; its log says only warnings and errors unless
# BILLSYNC_LOG_LEVEL asks for more.
LONG_RUNNING = frozenset({"serve", "api", "worker", "consume", "emulator"})


def main() -> None:
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    setup_logging(long_running=command in LONG_RUNNING)
    app()


def setup_logging(*, long_running: bool = True) -> None:
    """Logs as BILLSYNC_LOG_LEVEL and BILLSYNC_LOG_FORMAT say, for every command (a one-shot
    command at WARNING unless the level is set). Invalid settings are left to the command to
    report: the defaults hold meanwhile."""
    default = "INFO" if long_running or "BILLSYNC_LOG_LEVEL" in os.environ else "WARNING"
    try:
        settings = Settings()
    except ValidationError:
        configure_logging(default, resolve_format("auto"))
        return
    level = settings.log_level if "BILLSYNC_LOG_LEVEL" in os.environ else default
    configure_logging(level, resolve_format(settings.log_format))
