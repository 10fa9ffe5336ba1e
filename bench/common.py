"""Helpers shared by the benchmarks: a billsync server in its own process, RSS sampling."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

RESULTS = Path(__file__).parent / "results"
TOKEN = "bench-token-0123456789"  # noqa: S105 - a throwaway token for a local server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A fresh schema for one run; dropped afterwards."""
    schema = f"billsync_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield scoped.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


class RssSampler:
    """Samples the resident memory of a process tree every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        total = 0
        for proc in [self.process, *self.process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self._rss()))
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mib(self) -> float:
        return max(rss for _, rss in self.samples) / 2**20

    def window_mib(self, start: float, end: float) -> float:
        """Mean RSS over a fraction [start, end) of the run (to show whether memory is flat)."""
        count = len(self.samples)
        window = self.samples[int(count * start) : max(int(count * end), int(count * start) + 1)]
        return sum(rss for _, rss in window) / len(window) / 2**20


@contextmanager
def billsync_server(
    env: dict[str, str],
    port: int,
    workers: int = 1,
    command: str = "serve",
    log_path: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``billsync serve`` (or ``api``) in a child process, waited on until it answers
    /healthz. Its log goes to ``log_path`` (kept) or a temporary file."""
    full_env = {**os.environ, **env, "BILLSYNC_API_TOKEN": TOKEN}
    # A file, not a pipe nobody reads: a long run must never block on its log.
    log = open(log_path, "w+b") if log_path else tempfile.TemporaryFile()  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "billsync", command, "--port", str(port), "--workers", str(workers)],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"billsync serve exited: {log.read().decode()}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def api(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    payload = None if body is None else json.dumps(body)
    connection.request(
        method,
        path,
        body=payload,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    response = connection.getresponse()
    data = response.read()
    return response.status, json.loads(data) if data else None


def start_emulator(port: int, rate_limit: float | None = 0) -> subprocess.Popen[bytes]:
    """``billsync emulator`` in a child process, waited on until it answers; ``rate_limit``
    None keeps Stripe's limits (per mode and per endpoint), 0 lifts them both."""
    command = [sys.executable, "-m", "billsync", "emulator", "--port", str(port)]
    if rate_limit is not None:
        command += ["--rate-limit", str(rate_limit)]
    if rate_limit == 0:
        command += ["--endpoint-rate-limit", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while True:
        try:
            probe = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            probe.request("GET", "/_emulator/clock")
            probe.getresponse().read()
            save_portal_settings(port)
            return process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the emulator did not start") from None
            time.sleep(0.1)


def set_endpoint_limit(port: int, rate: float) -> None:
    """The emulator's per-endpoint limit (requests/s; 0: none)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps({"rate_limit_endpoint": rate})
    connection.request("POST", "/_emulator/config", body=body)
    connection.getresponse().read()


def save_portal_settings(port: int) -> None:
    """The Customer Portal's settings saved in test mode (Stripe refuses portal sessions
    without them): the emulator as a Stripe account set up for billsync."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(
        "POST",
        "/v1/billing_portal/configurations",
        body="features[invoice_history][enabled]=true",
        headers={
            "Authorization": "Bearer sk_test_benchPortalSettings01",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"the emulator refused the portal settings: {response.status}")


_REFERENCE: dict[str, Any] = {}


def machine_reference() -> dict[str, Any]:
    """How fast this machine runs billsync's own Python, measured now: batches of 1,000 usage
    events decoded and validated (``core.usage.validate_body``, no store), best of 7 rounds of
    ~0.3 s, in events per second. Every result carries it, so that ``bench.compare`` can tell
    a slower machine (shared VMs differ by more than half from one day to the next) from a
    slower billsync. Measured once per process, after the benchmark's own servers stopped."""
    if not _REFERENCE:
        from datetime import UTC, datetime, timedelta  # noqa: PLC0415 - only here

        from billsync.catalog_file import load_catalog  # noqa: PLC0415
        from billsync.config import EXAMPLE_CATALOG  # noqa: PLC0415
        from billsync.core.usage import UsageRules, validate_body  # noqa: PLC0415

        now = datetime(2026, 11, 20, 12, tzinfo=UTC)
        metrics = ["machine.shared-cpu-1x.seconds", "volume.gb_hours", "ip.ipv4.hours"]
        body = json.dumps({"events": [
            {"id": f"ref-{n}", "account": f"acct-{n % 200:04d}", "metric": metrics[n % 3],
             "quantity": "0.001234" if n % 2 else "10",
             "timestamp": (now - timedelta(seconds=n)).isoformat()}
            for n in range(1000)
        ]}).encode()  # fmt: skip
        rules = UsageRules(load_catalog(EXAMPLE_CATALOG), now, timedelta(days=35))
        best = float("inf")
        for _ in range(7):
            began, batches = time.perf_counter(), 0
            while time.perf_counter() - began < 0.3:
                validate_body(body, rules, 10_000)
                batches += 1
            best = min(best, (time.perf_counter() - began) / batches)
        _REFERENCE["what"] = "core.usage.validate_body, 1,000 events"
        _REFERENCE["events_per_second"] = round(1000 / best)
    return dict(_REFERENCE)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {**payload, "machine_reference": machine_reference()}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
