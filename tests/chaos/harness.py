"""A month of simulated usage through billsync while everything around it fails.

Processes, each real: the Stripe emulator (``billsync emulator``), the API (``billsync api``)
and a sync worker (``billsync worker``), sharing one simulated clock through
``BILLSYNC_CLOCK_FILE``; this process drives the platform (the seeded simulator posting usage
over HTTP, retrying what was not answered, as a real platform does) and the chaos:

- the emulator fails ``fault_rate`` of Stripe requests, mixed: 429s, lock timeouts, 500s,
  503s, hangs past billsync's timeout (the write happens later), responses lost after commit;
  and each kind also once on the next write at a chosen step, so every kind is met;
- webhooks are duplicated, reordered and dropped (the sweep of ``GET /v1/events`` recovers the
  dropped ones);
- the worker is killed with SIGKILL at chosen steps of the simulated month (spread over the
  month and the close after it, each while the worker runs) and restarted: the number of kills
  is the schedule's, whatever the machine's speed;
- on PostgreSQL, every connection goes through a TCP proxy that, at chosen steps, cuts all
  connections and refuses new ones for a moment, then lets them through again.

Then the chaos stops, the month is closed, reviewed and finalized, and ``billsync verify
--require-synced`` must pass; this harness also checks that every distinct event the platform
sent is stored exactly once, with the quantities the platform produced.

Used by ``tests/chaos`` (short form) and ``bench/chaos.py`` (long form).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url

from billsync.clock import FileClock
from billsync.db.tables import billing_periods, sync_intents, usage_events, webhook_events
from billsync.repositories import sync as sync_repository
from billsync.simulator import Simulation
from tests.ports import free_port

KEY = "sk_test_billsyncChaosKey0001"
TOKEN = "chaos-token-0123456789abcdef"
MONTH_START = datetime(2026, 11, 1, tzinfo=UTC)
MONTH_END = datetime(2026, 12, 1, tzinfo=UTC)
FAULT_KINDS = ("429", "lock_timeout", "500", "503", "hang", "drop_after_commit")


@dataclass
class ChaosConfig:
    database_url: str  # sqlite:///… or postgresql+psycopg://… (then cut through a proxy)
    workdir: Path
    accounts: int = 6
    step: timedelta = timedelta(hours=6)  # simulated time per driver step
    step_pause: float = 0.25  # real seconds per step: how long the worker gets between steps
    fault_rate: float = 0.2
    kills: int = 30  # SIGKILLs of the worker, at steps chosen from the seed
    # Real seconds a worker runs (from when it says it runs) before a kill may land on it.
    worker_life: tuple[float, float] = (0.3, 1.2)
    db_cuts: int = 4  # PostgreSQL only, at steps chosen from the seed
    db_cut_seconds: tuple[float, float] = (0.5, 2.0)
    seed: int = 7
    report_every: timedelta = timedelta(hours=1)
    # After the month, the clock moves on in half-hour steps under the same chaos (and kills):
    # the grace window ends, the month is closed, reviewed and finalized while faults go on.
    chaos_after_month: timedelta = timedelta(hours=4)

    def driver_steps(self) -> list[datetime]:
        """The simulated moments the driver sets, one per step: the month, then the close."""
        moments, moment = [], MONTH_START
        while moment < MONTH_END + self.chaos_after_month:
            moment += self.step if moment < MONTH_END else timedelta(minutes=30)
            moments.append(moment)
        return moments

    def schedule(self, count: int, salt: int, within: int | None = None) -> list[int]:
        """``count`` distinct step indexes spread over the whole run, or its first ``within``
        steps (one in each of ``count`` equal stretches, at a seeded place inside it): the
        chaos lands everywhere, the month's first days as well as its close, and exactly
        ``count`` times."""
        steps = len(self.driver_steps()) if within is None else within
        if count > steps:
            raise ValueError(f"{count} events do not fit in {steps} steps: use a finer step")
        rng = random.Random(self.seed * 1000 + salt)
        return [int((i + rng.random()) * steps / count) for i in range(count)]


@dataclass
class ChaosResult:
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds: start, chaos, settle
    waited_for_worker: float = 0.0  # of which the kills waited for a restarted worker to run
    events_sent: int = 0
    distinct_events: int = 0
    accepted: int = 0
    duplicates_answered: int = 0
    usage_retries: int = 0  # batches the platform had to send again (no answer, or a 503)
    kills: int = 0
    worker_exits: int = 0  # workers that stopped by themselves (none expected)
    db_cuts: int = 0
    stripe_requests: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    rate_limited: int = 0
    webhooks: dict[str, Any] = field(default_factory=dict)
    periods_finalized: int = 0
    periods: int = 0
    verify: dict[str, Any] = field(default_factory=dict)
    verify_exit_code: int | None = None
    stored_events: int = 0
    missing_events: int = 0
    quantity_mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.verify_exit_code == 0
            and self.missing_events == 0
            and self.stored_events == self.distinct_events
            and not self.quantity_mismatches
            and self.periods_finalized >= self.periods > 0
        )

    def to_dict(self) -> dict[str, Any]:
        data = {key: value for key, value in self.__dict__.items() if key != "verify"}
        data["ok"] = self.ok
        data["verify"] = {
            key: self.verify.get(key) for key in ("ok", "checked", "pending_lines",
                                                  "violations_by_kind", "errors")
        }  # fmt: skip
        return data


class TcpProxy:
    """Forwards connections to ``target``; :meth:`cut` closes them all and refuses new ones
    until :meth:`restore` — a database outage as the client sees it."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._down = threading.Event()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._down.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def cut(self) -> None:
        self._down.set()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            self._close(sock)

    def restore(self) -> None:
        self._down.clear()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()


class ChaosRun:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.result = ChaosResult()
        self.rng = random.Random(config.seed)
        config.workdir.mkdir(parents=True, exist_ok=True)
        self.clock_file = str(config.workdir / "clock")
        FileClock.write(self.clock_file, MONTH_START)
        self.emulator_port = free_port()
        self.api_port = free_port()
        self.emulator_url = f"http://127.0.0.1:{self.emulator_port}"
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.proxy: TcpProxy | None = None
        url = make_url(config.database_url)
        self.direct_url = config.database_url
        self.service_url = config.database_url
        if url.get_backend_name() == "postgresql":
            self.proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
            self.service_url = url.set(host="127.0.0.1", port=self.proxy.port).render_as_string(
                hide_password=False
            )
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.worker_lock = threading.Lock()
        self.sent: dict[str, dict[str, Any]] = {}  # event id → the event (first version)
        self.logs = config.workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self._starts_at_spawn = 0  # worker start lines logged before the current worker began
        self._ready_at: float | None = None  # when the current worker was first seen running
        self._restores: list[threading.Timer] = []

    # --- processes ------------------------------------------------------------------------

    def env(self, secret: str) -> dict[str, str]:
        return {
            **os.environ,
            "BILLSYNC_DATA_DIR": str(self.config.workdir / "var"),
            "BILLSYNC_DATABASE_URL": self.service_url,
            "BILLSYNC_API_TOKEN": TOKEN,
            "BILLSYNC_STRIPE_API_KEY": KEY,
            "BILLSYNC_STRIPE_API_BASE": self.emulator_url,
            "BILLSYNC_STRIPE_TIMEOUT_SECONDS": "1.5",
            "BILLSYNC_STRIPE_MAX_RETRIES": "2",
            "BILLSYNC_STRIPE_WEBHOOK_SECRETS": secret,
            "BILLSYNC_WEBHOOK_TOLERANCE_SECONDS": str(7 * 86400),  # the clock jumps by hours
            "BILLSYNC_CLOCK_FILE": self.clock_file,
            "BILLSYNC_SCHEDULER_TICK_SECONDS": "0.2",
            "BILLSYNC_SWEEP_INTERVAL_SECONDS": "3600",
            "BILLSYNC_SQLITE_SYNCHRONOUS": "NORMAL",
            "BILLSYNC_PORT": str(self.api_port),
        }

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "billsync", *args], env=env, stdout=log, stderr=log
        )
        self.processes[name] = process
        return process

    def _wait_http(self, url: str, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            process = self.processes[name]
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: see {self.logs}")
            try:
                if httpx.get(url, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer at {url}")
            time.sleep(0.05)

    def stripe(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.emulator_url}{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()

    def start(self) -> None:
        self._spawn("emulator", ["emulator", "--port", str(self.emulator_port)], dict(os.environ))
        self._wait_http(f"{self.emulator_url}/_emulator/clock", "emulator")
        self._emulator_clock(MONTH_START)
        self.stripe("POST", "/_emulator/config", json={"hang_seconds": 3})
        endpoint = self.stripe(
            "POST", "/v1/webhook_endpoints",
            data={"url": f"{self.api_url}/v1/stripe/webhook", "enabled_events[0]": "*"},
            headers={"Authorization": f"Bearer {KEY}"},
        )  # fmt: skip
        self.secret = str(endpoint["secret"])
        subprocess.run(
            [sys.executable, "-m", "billsync", "db", "upgrade"],
            env={**self.env(self.secret), "BILLSYNC_DATABASE_URL": self.direct_url},
            check=True,
            capture_output=True,
        )
        self._spawn("api", ["api"], self.env(self.secret))
        self._wait_http(f"{self.api_url}/healthz", "api")
        self._start_worker()

    def _start_worker(self) -> None:
        with self.worker_lock:
            self._spawn("worker", ["worker"], self.env(self.secret))

    def _kill_worker(self) -> None:
        with self.worker_lock:
            worker = self.processes["worker"]
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        self.result.kills += 1

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.proxy is not None:
            self.proxy.close()

    # --- chaos ----------------------------------------------------------------------------

    def _faults_on(self) -> None:
        self.stripe("POST", "/_emulator/webhooks/chaos", json={
            "duplicate_rate": 0.2, "reorder_window": 4, "drop_rate": 0.1,
            "drop_next": 2, "duplicate_next": 2,  # met whatever the rates draw
            "seed": self.config.seed,
        })  # fmt: skip
        # The forced drops and duplicates take the next events: make sure there are enough of
        # them, whatever billsync manages to write while its worker is being killed (on a
        # slow machine, as few as one event came out during the chaos). Customers of no
        # billsync account: their events are received, stored and ignored.
        for n in range(6):
            self.stripe(
                "POST", "/v1/customers", data={"name": f"chaos bystander {n}"},
                headers={"Authorization": f"Bearer {KEY}"},
            )  # fmt: skip
        self.stripe("POST", "/_emulator/faults", json={"seed": self.config.seed})
        share = self.config.fault_rate / len(FAULT_KINDS)
        for kind in FAULT_KINDS:
            rule: dict[str, Any] = {"endpoint": "POST *", "kind": kind, "rate": share}
            if kind != "hang":  # reads fail too, except hangs (reads have nothing to write)
                rule["endpoint"] = "*"
            self.stripe("POST", "/_emulator/faults", json=rule)

    def _faults_off(self) -> None:
        self.stripe("DELETE", "/_emulator/faults")
        self.stripe("POST", "/_emulator/webhooks/chaos", json={"flush": True})
        self.stripe("POST", "/_emulator/webhooks/chaos", json={})

    def _worker_ready(self, starts_before: int) -> None:
        """Wait until the worker just started says it runs (its scheduler and threads are up),
        so that each kill lands in the middle of real work. A worker that gives up by itself is
        counted and replaced; one that never comes up fails the run."""
        deadline = time.monotonic() + 120  # liveness only: a start takes about a second
        while self._worker_starts() <= starts_before:
            with self.worker_lock:
                if self.processes["worker"].poll() is not None:  # it gave up: start another
                    self.result.worker_exits += 1
                    self._spawn("worker", ["worker"], self.env(self.secret))
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not start within two minutes")
            time.sleep(0.05)

    def _worker_starts(self) -> int:
        path = self.logs / "worker.log"
        return path.read_bytes().count(b"billsync worker:") if path.exists() else 0

    def _kill_and_restart(self) -> None:
        """Kill the worker in the middle of its work, and start the next one. The kill waits
        until the worker started last says it runs (its scheduler and threads are up) and has
        worked a seeded while since (so that it syncs, and dies in the middle of it), then the
        next worker starts while the month goes on."""
        low, high = self.config.worker_life
        life = self.rng.uniform(low, high)
        began = time.monotonic()
        self._worker_ready(self._starts_at_spawn)
        if self._ready_at is None:
            self._ready_at = time.monotonic()
        time.sleep(max(0.0, self._ready_at + life - time.monotonic()))
        self.result.waited_for_worker = round(
            self.result.waited_for_worker + time.monotonic() - began, 1
        )
        self._kill_worker()
        self._starts_at_spawn = self._worker_starts()
        self._ready_at = None
        self._start_worker()

    def _note_ready(self) -> None:
        """When the current worker was first seen running (checked at every step)."""
        if self._ready_at is None and self._worker_starts() > self._starts_at_spawn:
            self._ready_at = time.monotonic()

    def _cut_database(self) -> None:
        """Cut every connection and refuse new ones for a moment (restored by a timer, so the
        outage lasts while the platform keeps sending and retrying)."""
        assert self.proxy is not None
        self.proxy.cut()
        self.result.db_cuts += 1
        restore = threading.Timer(self.rng.uniform(*self.config.db_cut_seconds), self.proxy.restore)
        restore.daemon = True
        restore.start()
        self._restores.append(restore)

    # --- the platform ---------------------------------------------------------------------

    def _set_time(self, moment: datetime) -> None:
        FileClock.write(self.clock_file, moment)
        self._emulator_clock(moment)

    def _emulator_clock(self, moment: datetime) -> None:
        self.stripe("POST", "/_emulator/clock", json={"set": moment.timestamp(), "freeze": True})

    def _api(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """The platform's client: retries until billsync answers (a 503 while the database is
        away, a refused connection) — what a real platform's delivery pipeline does."""
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for attempt in range(600):
            try:
                response = httpx.request(
                    method, f"{self.api_url}{path}", json=body, headers=headers, timeout=30
                )
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code < 500:
                return response
            if response is not None and response.status_code != 503:
                raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
            if attempt:
                self.result.usage_retries += 1
            time.sleep(0.2)
        raise RuntimeError(f"{method} {path}: billsync did not answer for two minutes")

    def _send(self, events: list[dict[str, Any]]) -> None:
        for offset in range(0, len(events), 2000):
            chunk = events[offset : offset + 2000]
            response = self._api("POST", "/v1/usage", {"events": chunk})
            if response.status_code != 200:
                raise RuntimeError(f"usage refused: {response.status_code} {response.text}")
            for sent, answer in zip(chunk, response.json()["results"], strict=True):
                self.result.events_sent += 1
                self.sent.setdefault(sent["id"], sent)
                if answer["status"] == "accepted":
                    self.result.accepted += 1
                elif answer["status"] == "duplicate":
                    self.result.duplicates_answered += 1
                else:
                    raise RuntimeError(f"event {sent['id']} rejected: {answer}")

    def run(self) -> ChaosResult:
        started = self._started = time.monotonic()
        try:
            self.start()
            self._phase("start", started)
            self._run()
        except Exception as error:
            self.stop()
            raise RuntimeError(f"{error}\n{self._log_tails()}") from error
        finally:
            self.stop()
            self.result.seconds = round(time.monotonic() - started, 1)
        return self.result

    def _phase(self, name: str, began: float) -> None:
        self.result.phases[name] = round(time.monotonic() - began, 1)

    def _log_tails(self, lines: int = 25) -> str:
        """The end of each process's log: what a failed run needs to be understood."""
        parts = []
        for path in sorted(self.logs.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(parts)

    def _run(self) -> None:
        simulation = Simulation(
            seed=self.config.seed, accounts=self.config.accounts, start=MONTH_START,
            report_every=self.config.report_every, duplicate_rate=0.02, late_rate=0.002,
            late_delay=timedelta(hours=8), prefix="chaos", currencies=(("usd", 3), ("eur", 1)),
        )  # fmt: skip
        for account in simulation.accounts:
            response = self._api("POST", "/v1/accounts", account.as_json())
            if response.status_code != 201:
                raise RuntimeError(f"account: {response.status_code} {response.text}")
        self._faults_on()
        kills = set(self.config.schedule(self.config.kills, salt=1))
        cuts = set(self.config.schedule(self.config.db_cuts, salt=2)) if self.proxy else set()
        # Each kind of fault also fires once at a chosen step of the month's first half, so
        # that every kind is met however few requests the machine's speed let the run make.
        half = len(self.config.driver_steps()) // 2
        forced = dict(
            zip(self.config.schedule(len(FAULT_KINDS), 3, half), FAULT_KINDS, strict=True)
        )
        moment = MONTH_START
        for index, moment in enumerate(self.config.driver_steps()):
            began = time.monotonic()
            self._set_time(moment)  # the platform reports what happened up to now
            if moment <= MONTH_END:
                self._send([e for d in simulation.deliveries(moment) for e in d.events])
                if moment == MONTH_END and (last := simulation.flush_late()) is not None:
                    self._send(last.events)
            if index in cuts:
                self._cut_database()
            self._note_ready()
            if index in kills:
                self._kill_and_restart()
            if index in forced:  # this kind of fault on the next write, whatever the rates did
                rule = {"endpoint": "POST *", "kind": forced[index], "count": 1}
                self.stripe("POST", "/_emulator/faults", json=rule)
            time.sleep(max(0.0, self.config.step_pause - (time.monotonic() - began)))
        for restore in self._restores:
            restore.cancel()
        if self.proxy is not None:
            self.proxy.restore()
        self._faults_off()
        self._phase("chaos", sum(self.result.phases.values()) + self._started)
        self._settle(moment)
        self._phase("settle", sum(self.result.phases.values()) + self._started)

    def _settle(self, moment: datetime) -> None:
        """Chaos over: one clean worker finishes the month; then the checks."""
        with self.worker_lock:
            if self.processes["worker"].poll() is not None:
                self._spawn("worker", ["worker"], self.env(self.secret))
        engine = create_engine(self.direct_url)
        try:
            deadline = time.monotonic() + 240
            while True:
                moment += timedelta(minutes=30)
                self._set_time(moment)
                time.sleep(0.5)
                with engine.connect() as connection:
                    statuses = Counter(
                        status for (status,) in connection.execute(
                            select(billing_periods.c.status).where(
                                billing_periods.c.start == MONTH_START.date()
                            )
                        )
                    )  # fmt: skip
                done = statuses.get("finalized", 0)
                left = self._behind(engine)
                if statuses and done == sum(statuses.values()) and not left:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the month did not settle: {dict(statuses)}; {left}")
            self.result.periods = sum(statuses.values())
            self.result.periods_finalized = done
            self._check_events(engine)
        finally:
            engine.dispose()
        stats = self.stripe("GET", "/_emulator/stats")
        self.result.stripe_requests = stats["total"]
        self.result.faults = dict(stats["faults"])
        self.result.rate_limited = stats["rate_limited"]
        self.result.webhooks = stats["webhooks"]
        verify = subprocess.run(
            [sys.executable, "-m", "billsync", "verify", "--json", "--require-synced"],
            env={**self.env(self.secret), "BILLSYNC_DATABASE_URL": self.direct_url},
            capture_output=True,
            check=False,
        )
        self.result.verify_exit_code = verify.returncode
        try:
            self.result.verify = json.loads(verify.stdout)
        except json.JSONDecodeError:
            self.result.verify = {"ok": False, "errors": [verify.stderr.decode()[-2000:]]}

    @staticmethod
    def _behind(engine: Any) -> str:
        """What is left to do ("" when nothing): accounts behind Stripe, Stripe calls of unknown
        outcome, webhooks waiting in the inbox."""
        with engine.connect() as connection:
            behind = sync_repository.accounts_needing_sync(connection)
            intents = connection.execute(
                select(sync_intents.c.account_id, sync_intents.c.operation).where(
                    sync_intents.c.status == "pending"
                )
            ).all()
            inbox = connection.execute(
                select(
                    webhook_events.c.type, webhook_events.c.attempts, webhook_events.c.last_error
                ).where(webhook_events.c.handled_at.is_(None))
            ).all()
        parts = []
        if behind:
            parts.append(f"accounts behind: {behind}")
        if intents:
            parts.append(f"pending intents: {[tuple(row) for row in intents]}")
        if inbox:
            parts.append(f"webhooks unhandled: {[tuple(row) for row in inbox][:10]}")
        return "; ".join(parts)

    def _check_events(self, engine: Any) -> None:
        """No usage lost or counted twice: the ledger holds each distinct event once, with the
        quantity the platform produced."""
        self.result.distinct_events = len(self.sent)
        expected: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for event in self.sent.values():
            expected[event["account"], event["metric"]] += Decimal(str(event["quantity"]))
        stored: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        ids: set[str] = set()
        with engine.connect() as connection:
            rows = connection.execute(
                select(
                    usage_events.c.id, usage_events.c.account_id, usage_events.c.metric,
                    usage_events.c.quantity,
                )
            )  # fmt: skip
            for event_id, account, metric, quantity in rows:
                ids.add(event_id)
                stored[account, metric] += Decimal(quantity)
            self.result.stored_events = connection.execute(
                select(func.count()).select_from(usage_events)
            ).scalar_one()
        self.result.missing_events = len(set(self.sent) - ids)
        for key in sorted(set(expected) | set(stored)):
            if expected[key] != stored[key]:
                self.result.quantity_mismatches.append(
                    f"{key[0]} {key[1]}: sent {expected[key]}, stored {stored[key]}"
                )
